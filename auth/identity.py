"""Who asked: the identity every backend (local users, robots, LDAP/AD) hands to the authorizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["user", "robot", "directory"]


@dataclass(frozen=True)
class Identity:
    name: str  # the account as the registry will see it (token `sub`)
    kind: Kind
    groups: frozenset[str] = field(default_factory=frozenset)  # directory groups (CNs), for role mapping


class Authenticator(Protocol):
    """A source of identities. `authenticate` returns None for an unknown account or a wrong secret;
    it raises BackendUnavailable when it cannot tell (e.g. the directory is down), never guesses."""

    def authenticate(self, username: str, password: str) -> Identity | None: ...


class BackendUnavailable(Exception):  # noqa: N818 (reads as a sentence)
    """The identity backend could not answer (network, TLS, service account refused)."""
