"""Loading settings: the `Pulumi.yaml` defaults, a stack file's keys over them, validation.

Org-wide defaults live once in the project file (`Pulumi.yaml`, `config:` section); a stack file
(`stacks/Pulumi.<stack>.yaml`) holds only what differs. :func:`merge_over_defaults` merges the two
(objects deep-merged, lists replaced; a stack that picks another `access.mode` gets none of the
default mode's `access` keys), :func:`settings_from_config` validates, and either returns a frozen
Settings or raises SettingsError listing every problem.

The same loader serves `pulumi up` (:func:`load_from_pulumi`: config from the engine),
`python -m fleet validate` and the tests (:func:`load_stack_settings`: config read from the YAML
files), so there is one source of truth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infra.settings.checks import cross_field_problems
from infra.settings.errors import Problem, SettingsError, problems_from, union_members
from infra.settings.model import Settings

PROJECT = "registry-fleet"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT_FILE = REPO_ROOT / "Pulumi.yaml"
STACKS_DIR = REPO_ROOT / "stacks"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merge key by key; any other value (lists included) replaces the base."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_over_defaults(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A stack's keys over the project defaults (:func:`deep_merge`), except that a stack choosing
    another variant of a tagged union (`access.mode: htpasswd` over the default `token`) replaces
    that object: the default's other keys belong to the default's mode."""
    base = dict(defaults)
    for name, field in Settings.model_fields.items():
        key = field.alias or name
        tag = str(field.discriminator) if union_members(field) else None
        default, override = base.get(key), overrides.get(key)
        if not (tag and isinstance(default, Mapping) and isinstance(override, Mapping)):
            continue
        if tag in override and override[tag] != default.get(tag):
            del base[key]
    return deep_merge(base, overrides)


def settings_from_config(stack: str, config: Mapping[str, Any], source: str = "") -> Settings:
    """Validate a merged config mapping (keys without the project namespace)."""
    source = source or f"stack {stack}"
    if "stack" in config:
        raise SettingsError(source, [Problem("stack", config["stack"], "set by Pulumi from the stack name; remove it")])
    data = {**config, "stack": stack}
    try:
        settings = Settings.model_validate(data)
    except ValidationError as err:
        raise SettingsError(source, problems_from(err, data)) from None
    problems = cross_field_problems(settings)
    if problems:
        raise SettingsError(source, problems)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SettingsError(str(path), [Problem("(file)", str(path), "no such file")]) from None
    except yaml.YAMLError as err:
        raise SettingsError(str(path), [Problem("(file)", str(path), f"not valid YAML: {err}")]) from None
    if not isinstance(data, dict):
        raise SettingsError(str(path), [Problem("(file)", str(path), "must be a YAML mapping")])
    return data


def project_config(project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """The `config:` declarations of Pulumi.yaml for this project's own keys (provider keys left out)."""
    config = _read_yaml(project_file).get("config") or {}
    return {key: decl for key, decl in config.items() if ":" not in key}  # aws:region... are not settings


def project_defaults(project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """The `config:` defaults of Pulumi.yaml for this project's own keys."""
    out: dict[str, Any] = {}
    for key, decl in project_config(project_file).items():
        if isinstance(decl, dict) and ("default" in decl or "value" in decl):
            out[key] = decl.get("value", decl.get("default"))
        elif not isinstance(decl, dict):
            out[key] = decl
    return out


def stack_file(stack: str, stacks_dir: Path = STACKS_DIR) -> Path:
    return stacks_dir / f"Pulumi.{stack}.yaml"


def stack_overrides(path: Path) -> dict[str, Any]:
    """This project's keys from a stack file (`registry-fleet:fleet` -> `fleet`)."""
    out: dict[str, Any] = {}
    for key, value in (_read_yaml(path).get("config") or {}).items():
        namespace, _, name = str(key).partition(":")
        if namespace == PROJECT and name:
            out[name] = value
    return out


def available_stacks(stacks_dir: Path = STACKS_DIR) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def merged_stack_config(stack: str, stacks_dir: Path = STACKS_DIR, project_file: Path = PROJECT_FILE) -> dict[str, Any]:
    """A stack file's keys over the Pulumi.yaml defaults, before validation."""
    return merge_over_defaults(project_defaults(project_file), stack_overrides(stack_file(stack, stacks_dir)))


def load_stack_settings(stack: str, stacks_dir: Path = STACKS_DIR, project_file: Path = PROJECT_FILE) -> Settings:
    """Settings for a stack read from the files, without the Pulumi engine."""
    path = stack_file(stack, stacks_dir)
    if not path.exists():
        known = ", ".join(available_stacks(stacks_dir)) or "none"
        raise SettingsError(f"stack {stack}", [Problem("(stack)", stack, f"no file {path}; known stacks: {known}")])
    merged = merged_stack_config(stack, stacks_dir, project_file)
    return settings_from_config(stack, merged, source=str(path.relative_to(path.parent.parent)))


def load_from_pulumi() -> Settings:
    """Settings inside a Pulumi run: the engine's config over the Pulumi.yaml defaults."""
    import pulumi

    cfg = pulumi.Config()
    engine: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        key = field.alias or name
        raw = cfg.get(key)
        if raw is None:
            continue
        try:
            engine[key] = json.loads(raw) if raw[:1] in "{[" else raw
        except json.JSONDecodeError:
            engine[key] = raw
    return settings_from_config(pulumi.get_stack(), merge_over_defaults(project_defaults(), engine))
