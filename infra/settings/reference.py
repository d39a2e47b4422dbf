"""The settings reference, generated: `docs/settings.md` and the one-line descriptions in `Pulumi.yaml`.

A key's description is written once, in the model (infra/settings/model.py); its default comes from
the `config:` section of `Pulumi.yaml`, else from the model. `make docs` runs this module, which
rewrites both files; tests/test_settings_reference.py fails when either is stale.

    python -m infra.settings.reference          # write docs/settings.md and the Pulumi.yaml descriptions
    python -m infra.settings.reference --check  # exit 1 if either differs from what it would write
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infra.settings.errors import union_members
from infra.settings.loading import PROJECT, PROJECT_FILE, REPO_ROOT, project_defaults
from infra.settings.model import Settings, SettingsModel

DOCS_FILE = REPO_ROOT / "docs" / "settings.md"
_NOT_KEYS = {"stack"}  # set by Pulumi from the stack name


@dataclass(frozen=True)
class Row:
    key: str  # the camelCase path a stack file uses; `<name>` and `[]` for entries of maps and lists
    type: str
    default: str
    description: str


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) != len(get_args(annotation))
    return annotation, False


def type_name(annotation: Any) -> str:
    """How the reference names a key's type."""
    inner, nullable = _optional(annotation)
    origin = get_origin(inner)
    if origin is Literal:
        name = " or ".join(f"`{v}`" for v in get_args(inner))
    elif origin is tuple:
        name = f"list of {type_name(get_args(inner)[0])}"
    elif origin is dict:
        name = f"map of name to {type_name(get_args(inner)[1])}"
    elif (isinstance(inner, type) and issubclass(inner, BaseModel)) or origin in (Union, types.UnionType):
        name = "object"
    else:
        names = {bool: "boolean", int: "integer", str: "string", datetime.date: "date (YYYY-MM-DD)"}
        name = names.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or `null`" if nullable else name


def _shown(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, mode="json")
    elif isinstance(value, tuple):
        value = list(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def _default(field: FieldInfo, project: Any) -> str:
    """The default a stack gets: Pulumi.yaml's, else the model's; "required" if there is none."""
    if project is not _ABSENT and not isinstance(project, Mapping):
        return _shown(project)
    if project is not _ABSENT:
        return "keys below"
    if field.default_factory is not None:
        return _shown(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return "unset" if field.default is None else _shown(field.default)


_ABSENT: Any = object()


def _child_model(annotation: Any) -> tuple[type[SettingsModel], str] | None:
    """A model this reference documents key by key, and the path step to reach its keys."""
    inner, _ = _optional(annotation)
    origin = get_origin(inner)
    if origin is tuple:
        inner, step = _unwrap(get_args(inner)[0]), "[]."
    elif origin is dict:
        inner, step = _unwrap(get_args(inner)[1]), ".<name>."
    else:
        step = "."
    if isinstance(inner, type) and issubclass(inner, SettingsModel):
        return inner, step
    return None  # a plain value, or the token service's own model (auth/): one row


def model_rows(model: type[BaseModel], prefix: str = "", project: Any = _ABSENT, note: str = "") -> Iterator[Row]:
    """One row per key of `model`, depth first; `project` holds Pulumi.yaml's defaults at this level."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        if model is Settings and key in _NOT_KEYS:
            continue
        here = project.get(key, _ABSENT) if isinstance(project, Mapping) else _ABSENT
        description = f"{note}{field.description or ''}"
        yield Row(f"{prefix}{key}", type_name(field.annotation), _default(field, here), description)
        members = union_members(field)
        if members:
            yield from _union_rows(field, f"{prefix}{key}", members, here)
            continue
        child = _child_model(field.annotation)
        if child is not None:
            child_model, step = child
            yield from model_rows(child_model, f"{prefix}{key}{step}", here if step == "." else _ABSENT)


def _union_rows(field: FieldInfo, path: str, members: dict[str, type[BaseModel]], project: Any) -> Iterator[Row]:
    """A tagged union: its tag, then each mode's own keys (Pulumi.yaml's defaults are its mode's)."""
    tag = str(field.discriminator)
    project_tag = project.get(tag, _ABSENT) if isinstance(project, Mapping) else _ABSENT
    meanings = " ".join(f"`{t}`: {m.model_fields[tag].description}" for t, m in members.items())
    default = _shown(project_tag) if project_tag is not _ABSENT else "required"
    yield Row(f"{path}.{tag}", " or ".join(f"`{t}`" for t in members), default, meanings)
    for value, member in members.items():
        defaults = project if project_tag == value else _ABSENT
        for row in model_rows(member, f"{path}.", defaults, note=f"{value.capitalize()} mode only. "):
            if row.key != f"{path}.{tag}":
                yield row


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference(project_file: Path = PROJECT_FILE) -> str:
    """The text of docs/settings.md."""
    from infra.secrets import LDAP_PASSWORD_KEY, USER_HASHES_KEY

    stack = Settings.model_fields["stack"].description
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by `make docs` (infra/settings/reference.py) from the settings model",
        "     (infra/settings/model.py) and the Pulumi.yaml defaults. Do not edit: change the model. -->",
        "",
        "Every key a stack can set, camelCase as written in YAML. Org-wide defaults live once in `Pulumi.yaml`",
        f"(`config:`); a stack file, `stacks/Pulumi.<stack>.yaml`, sets only what differs, as `{PROJECT}:<key>`.",
        "Objects merge key by key with the defaults, at any depth; anything else (lists too) replaces the",
        "default. A stack that picks another `access.mode` than the default's gets none of the default",
        "`access` keys: they belong to the default's mode.",
        "",
        f"`stack`: {stack}",
        "",
        "Every problem is reported at once as `key.path: value: what is allowed`. Rules that relate several",
        "keys (in `infra/settings/checks.py`) run once every key has a valid shape. `<name>` stands for an",
        "entry of a map, `[]` for an item of a list.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for row in model_rows(Settings, project=project_defaults(project_file)):
        cells = (f"`{row.key}`", row.type, row.default, row.description)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "## Secret inputs",
        "",
        "Two Pulumi secrets complete the access settings; they are never settings. `pulumi preview`/`up`",
        "checks them before registering anything, naming the key and never the value (infra/secrets.py):",
        "",
        f"- `{PROJECT}:{USER_HASHES_KEY}`: a JSON object of user name to bcrypt hash (cost at least 10),",
        "  one for each entry of `access.users`.",
        f"- `{PROJECT}:{LDAP_PASSWORD_KEY}`: the directory service account's password, when `access.ldap` is set.",
        "",
    ]
    return "\n".join(lines)


def project_descriptions() -> dict[str, str]:
    """The one-line description of each top-level key, as Pulumi.yaml declares it."""
    fields = {(f.alias or n): f for n, f in Settings.model_fields.items()}
    return {key: f"{fields[key].description} Reference: docs/settings.md." for key in fields}


_KEY_LINE = re.compile(r"^  ([A-Za-z]+):\s*$")
_DESCRIPTION_LINE = re.compile(r"^    description:")


def render_project_file(text: str) -> str:
    """Pulumi.yaml with each project key's `description:` (one line) taken from the model."""
    descriptions = project_descriptions()
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = _KEY_LINE.match(line)
        if match and match.group(1) in descriptions and i < len(lines) and _DESCRIPTION_LINE.match(lines[i]):
            out.append(f"    description: {json.dumps(descriptions[match.group(1)])}")
            i += 1
            while i < len(lines) and lines[i].startswith("      "):  # a folded description's other lines
                i += 1
    return "\n".join(out) + "\n"


def stale(project_file: Path = PROJECT_FILE, docs_file: Path = DOCS_FILE) -> list[Path]:
    """The generated files that differ from what `make docs` would write."""
    out = []
    if not docs_file.exists() or docs_file.read_text() != render_reference(project_file):
        out.append(docs_file)
    text = project_file.read_text()
    if render_project_file(text) != text:
        out.append(project_file)
    return out


def undescribed() -> list[str]:
    """Keys of the model without a description (every key has one)."""
    models = SettingsModel.__subclasses__()
    return [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description]


def write(project_file: Path = PROJECT_FILE, docs_file: Path = DOCS_FILE) -> None:
    docs_file.parent.mkdir(exist_ok=True)
    docs_file.write_text(render_reference(project_file))
    project_file.write_text(render_project_file(project_file.read_text()))


def main(argv: Sequence[str]) -> int:
    if list(argv) == ["--check"]:
        paths = stale()
        for path in paths:
            print(f"{path.relative_to(REPO_ROOT)} is stale: run `make docs`", file=sys.stderr)
        return 1 if paths else 0
    if argv:
        print("usage: python -m infra.settings.reference [--check]", file=sys.stderr)
        return 2
    missing = undescribed()
    if missing:
        print(f"keys without a description in infra/settings/model.py: {', '.join(missing)}", file=sys.stderr)
        return 1
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
