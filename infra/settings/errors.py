"""Settings errors: every problem at once, each as ``key.path: value: what is allowed``.

:class:`SettingsError` carries a list of :class:`Problem`; :func:`problems_from` turns pydantic's
validation errors into problems that name the camelCase key path a stack file uses (the tag of the
`access` union is not part of it) and, for an unknown key, the keys allowed there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from infra.settings.model import Settings

MISSING: Any = object()  # the value of a key that is not set
_VERBS = {"is", "equals", "exceeds", "must"}
_REQUIRED = "required; set it in the stack file or as a default in Pulumi.yaml"


@dataclass(frozen=True)
class Problem:
    path: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = json.dumps(self.value) if self.value is not MISSING else "(missing)"
        # "fleet.minSize: 1 is below 2: ..." reads as a sentence; other messages follow a colon.
        sep = " " if self.message.split(" ", 1)[0] in _VERBS else ": "
        return f"{self.path}: {shown}{sep}{self.message}"


class SettingsError(Exception):
    """Invalid settings: every problem, each naming key path, value and what is allowed."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the stack settings:\n{lines}")


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        in_mapping = isinstance(data, Mapping) and part in data
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if in_mapping or in_list:
            data = data[part]
        else:
            return MISSING
    return data


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key a stack file uses (camelCase)."""
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def union_members(field: FieldInfo) -> dict[str, type[BaseModel]]:
    """A tagged union's models by tag (`access`: token, htpasswd); empty for any other field."""
    if field.discriminator is None:
        return {}
    members: dict[str, type[BaseModel]] = {}
    for model in getattr(field.annotation, "__args__", ()):
        tag_field = model.model_fields[str(field.discriminator)]
        for tag in getattr(tag_field.annotation, "__args__", ()):
            members[tag] = model
    return members


@dataclass(frozen=True)
class _Place:
    """Where an error's location points: the key path without union tags, and the models around it."""

    path: tuple[Any, ...]
    parent: type[BaseModel] | None  # the model holding the last key, if the path runs through models
    others: dict[str, type[BaseModel]]  # with a union parent: the other modes' models by tag


def _place(loc: tuple[Any, ...]) -> _Place:
    model: type[BaseModel] | None = Settings
    path: list[Any] = []
    others: dict[str, type[BaseModel]] = {}
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        path.append(part)
        if not parts:
            break
        field = _fields(model).get(part) if model is not None else None
        members = union_members(field) if field is not None else {}
        if members and parts[0] in members:
            tag = parts.pop(0)  # pydantic names the union member; a stack file does not
            model = members[tag]
            others = {t: m for t, m in members.items() if m is not model}
        elif field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model, others = field.annotation, {}
        else:
            model, others = None, {}
    return _Place(tuple(path), model, others)


def _key(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def problems_from(err: ValidationError, data: Mapping[str, Any]) -> list[Problem]:
    """The problems of a failed `Settings` validation of `data`, in pydantic's order."""
    problems = []
    for e in err.errors():
        place = _place(tuple(e["loc"]))
        path, key = place.path, _key(place.path)
        value = _lookup(data, path)
        if e["type"] == "missing":
            problems.append(Problem(key, MISSING, _REQUIRED if place.parent else "required"))
        elif e["type"] == "union_tag_not_found":  # e.g. access without mode
            problems.append(Problem(f"{key}.{_tag(e)}", MISSING, _REQUIRED))
        elif e["type"] == "union_tag_invalid":  # e.g. access.mode: basic
            allowed = " or ".join(e["ctx"]["expected_tags"].split(", "))
            problems.append(Problem(f"{key}.{_tag(e)}", _lookup(value, (_tag(e),)), f"Input should be {allowed}"))
        elif e["type"] == "extra_forbidden":
            problems.append(Problem(key, value, _unknown_key(place)))
        else:
            problems.append(Problem(key, value, e["msg"]))
    return problems


def _tag(e: Any) -> str:
    """The name of a union's tag key (`mode`), from a union error."""
    return str(e["ctx"]["discriminator"]).strip("'")


def _unknown_key(place: _Place) -> str:
    name = place.path[-1]
    for tag, model in place.others.items():
        if name in _fields(model):
            return f"applies to mode {tag} only; remove it or use mode {tag}"
    allowed = ", ".join(sorted(_fields(place.parent))) if place.parent else "none"
    return f"unknown key; allowed here: {allowed}"
