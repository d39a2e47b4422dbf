"""Who asked: the identity every backend (local users, robots, LDAP/AD) hands to the authorizer, and
the one form of an account name under which all its spellings count as one (`account_key`)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["user", "robot", "directory"]
MAX_KEY_CHARS = 256

# RFC 4518 (LDAP string preparation, used by caseIgnoreMatch) maps these to nothing.
_MAPPED_TO_NOTHING = frozenset({0x00AD, 0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0xFFFC, *range(0xFE00, 0xFE10)})


def account_key(name: str) -> str:
    """The account a login name means, as the directory compares names: case folded (NFKC casefold,
    so compatibility forms such as full-width letters fold too), invisible format characters and
    the characters RFC 4518 maps to nothing removed, runs of spaces collapsed and the ends trimmed.
    `Alice`, ` alice `, full-width `alice` and `al<U+00AD>ice` all give `alice`. The lockout counts failures
    under this key, so no spelling opens a fresh counter; backends refuse a spelling whose key is not
    the key of the account they found."""
    kept = []
    for ch in name:
        if ch.isspace():
            kept.append(" ")
        elif ord(ch) not in _MAPPED_TO_NOTHING and unicodedata.category(ch) not in ("Cc", "Cf"):
            kept.append(ch)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", "".join(kept)).casefold())
    return " ".join(folded.split())[:MAX_KEY_CHARS]


@dataclass(frozen=True)
class Identity:
    name: str  # the account's canonical name (token `sub`): the local or robot name, the directory's stored value
    kind: Kind
    groups: frozenset[str] = field(default_factory=frozenset)  # directory groups (CNs), for role mapping
    # A digest of the stored credential (local users and robots): a refresh token carries it, so
    # changing the password or rotating the robot's token ends the refresh tokens issued before.
    credential: str = field(default="", compare=False, repr=False)


class Authenticator(Protocol):
    """A source of identities. `authenticate` returns None for an unknown account or a wrong secret;
    `lookup` returns the account as it is now (groups included) without checking a secret, None if
    it is gone, disabled or expired (a refresh token's check). Both raise BackendUnavailable when
    they cannot tell (e.g. the directory is down), never guess."""

    def authenticate(self, username: str, password: str) -> Identity | None: ...

    def lookup(self, name: str) -> Identity | None: ...


class BackendUnavailable(Exception):  # noqa: N818 (reads as a sentence)
    """The identity backend could not answer (network, TLS, service account refused)."""
