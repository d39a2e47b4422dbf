"""Scopes of the distribution token protocol: `repository:team-a/app:pull,push`.

Grammar (distribution `docs/spec/auth/scope.md`), as the token service accepts it:

    scope          := resourcetype ":" resourcename ":" action ["," action]*
    resourcetype   := "repository" | "repository(" class ")" | "registry"
    resourcename   := a repository name (below) for `repository`; `catalog` for `registry`
    action         := [a-z]+ | "*"

A `scope` query parameter may hold several scopes separated by spaces. Repository names follow
distribution's path grammar, lower case only, 255 characters at most:

    name       := component ["/" component]*
    component  := [a-z0-9]+ ([._]|__|[-]*) [a-z0-9]+ ...

A host name with a port (`host:5000/app`) or upper case is not a repository the registry serves
behind our token service: such scopes are refused (ScopeError), not guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_MAX = 255
SCOPE_MAX = 512  # longest scope string accepted (a 255-character name plus type and actions)

COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
COMPONENT_RE = re.compile(COMPONENT)
_TYPE_RE = re.compile(r"(?P<type>[a-z0-9]+)(?:\((?P<cls>[a-z0-9]+)\))?")
_ACTION_RE = re.compile(r"[a-z]+|\*")

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"


class ScopeError(ValueError):
    """A scope that does not parse; the message names it (safe to return to the client)."""


def valid_repository_name(name: str) -> bool:
    return len(name) <= NAME_MAX and NAME_RE.fullmatch(name) is not None


def valid_component(text: str) -> bool:
    return COMPONENT_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class Scope:
    type: str  # "repository" or "registry"
    name: str
    actions: tuple[str, ...]  # as asked, duplicates removed, order kept
    resource_class: str | None = None  # "plugin" in `repository(plugin):...`

    @property
    def resource(self) -> tuple[str, str | None, str]:
        return (self.type, self.resource_class, self.name)

    def with_actions(self, actions: tuple[str, ...]) -> Scope:
        return Scope(self.type, self.name, actions, self.resource_class)

    def __str__(self) -> str:
        kind = f"{self.type}({self.resource_class})" if self.resource_class else self.type
        return f"{kind}:{self.name}:{','.join(self.actions)}"


def _show(text: str) -> str:
    """The scope as quoted in an error: repr (so control characters show), cut to a sane length."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


def parse_scope(text: str) -> Scope:
    """One scope. Raises ScopeError naming the scope and what is wrong with it."""
    if len(text) > SCOPE_MAX:
        raise ScopeError(f"scope {_show(text)} is longer than {SCOPE_MAX} characters")
    head, sep, actions_text = text.rpartition(":")
    kind, sep2, name = head.partition(":")
    if not sep or not sep2:
        raise ScopeError(f"scope {_show(text)} is not of the form type:name:actions")
    m = _TYPE_RE.fullmatch(kind)
    if m is None:
        raise ScopeError(f"scope {_show(text)}: resource type {kind!r} is not [a-z0-9]+ or type(class)")
    rtype, rclass = m.group("type"), m.group("cls")
    actions: list[str] = []
    for action in actions_text.split(","):
        if _ACTION_RE.fullmatch(action) is None:
            raise ScopeError(f"scope {_show(text)}: action {action!r} is not [a-z]+ or *")
        if action not in actions:
            actions.append(action)
    if rtype == REPOSITORY:
        if not valid_repository_name(name):
            raise ScopeError(
                f"scope {_show(text)}: {name!r} is not a repository name "
                "(lower-case path components of [a-z0-9] joined by '.', '_', '__' or '-', at most 255 characters)"
            )
    elif rtype == REGISTRY:
        if rclass is not None or name != CATALOG:
            raise ScopeError(f"scope {_show(text)}: the only registry resource is 'registry:catalog'")
    else:
        raise ScopeError(f"scope {_show(text)}: unknown resource type {rtype!r} (repository or registry)")
    return Scope(rtype, name, tuple(actions), rclass)


def parse_scopes(values: list[str]) -> list[Scope]:
    """Every `scope` query parameter (each may hold several, space-separated), in order.

    Scopes on the same resource are merged (their actions united), as the registry would read them.
    """
    merged: dict[tuple[str, str | None, str], Scope] = {}
    for value in values:
        for text in value.split(" "):
            if not text:
                continue
            scope = parse_scope(text)
            previous = merged.get(scope.resource)
            if previous is not None:
                extra = tuple(a for a in scope.actions if a not in previous.actions)
                scope = previous.with_actions(previous.actions + extra)
            merged[scope.resource] = scope
    return list(merged.values())
