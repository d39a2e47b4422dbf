"""Local accounts: users with bcrypt password hashes, and robots (CI) with bcrypt token hashes.

Every call runs exactly one bcrypt check, whatever the account: an unknown account, an over-long
password or an expired robot cost the same as a wrong password, so response times do not tell
which accounts exist. An expired robot fails like a wrong password; the log says it expired.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping

import bcrypt

from auth.access import Robot, bcrypt_cost
from auth.identity import Identity

log = logging.getLogger("registry_fleet.auth.local")

BCRYPT_MAX_BYTES = 72  # bcrypt >= 5 refuses longer passwords instead of truncating them
DEFAULT_COST = 12


def credential_digest(stored_hash: str) -> str:
    """What a refresh token remembers of an account's stored hash: a new password or robot token
    changes it. A digest of a salted bcrypt hash tells nothing about the secret."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:32]


def hash_secret(secret: str, cost: int = DEFAULT_COST) -> str:
    """A bcrypt hash for a user password or a robot token (for config files and tests)."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=cost)).decode()


class LocalAuthenticator:
    """Authenticator over local users ({name: bcrypt hash}) and robots ({name: Robot})."""

    def __init__(
        self,
        users: Mapping[str, str],
        robots: Mapping[str, Robot],
        now: Callable[[], float] = time.time,
    ) -> None:
        overlap = set(users) & set(robots)
        if overlap:
            raise ValueError(f"accounts both user and robot: {', '.join(sorted(overlap))}")
        self._users = {name: h.encode() for name, h in users.items()}
        self._robots = dict(robots)
        self._now = now
        # The dummy hash has the cost most configured hashes have, so an unknown account takes
        # as long as a known one.
        costs = [bcrypt_cost(h) for h in [*users.values(), *(r.token_hash for r in robots.values())]]
        known = [c for c in costs if c is not None]
        cost = collections.Counter(known).most_common(1)[0][0] if known else DEFAULT_COST
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))

    def authenticate(self, username: str, password: str) -> Identity | None:
        secret = password.encode("utf-8", "surrogateescape")
        robot = self._robots.get(username)
        stored = self._users.get(username) or (robot.token_hash.encode() if robot else None)
        if stored is None or len(secret) > BCRYPT_MAX_BYTES:
            bcrypt.checkpw(b"x", self._dummy)
            return None
        if not bcrypt.checkpw(secret, stored):
            return None
        if robot is not None:
            if self._expired(robot):
                log.warning("robot %r refused: expired at %s", username, robot.expires.isoformat())
                return None
            return Identity(name=username, kind="robot", credential=credential_digest(robot.token_hash))
        return Identity(name=username, kind="user", credential=credential_digest(stored.decode()))

    def lookup(self, name: str) -> Identity | None:
        """The account as configured now (None: gone, or an expired robot); no secret is checked."""
        if name in self._users:
            return Identity(name=name, kind="user", credential=credential_digest(self._users[name].decode()))
        robot = self._robots.get(name)
        if robot is None or self._expired(robot):
            return None
        return Identity(name=name, kind="robot", credential=credential_digest(robot.token_hash))

    def _expired(self, robot: Robot) -> bool:
        return datetime.datetime.fromtimestamp(self._now(), datetime.UTC) >= robot.expires
