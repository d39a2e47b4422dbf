"""Local accounts: users with bcrypt password hashes, and robots (CI) with token hashes.

A robot's token is generated (at least 128 bits: `new_robot_token`, components/access.py) and
stored as `sha256:<hex>` (`robot_token_hash`), compared in constant time: a slow hash protects
secrets people choose, a token with 128 random bits needs none (large platforms store access tokens
so). A robot still stored as a bcrypt hash keeps working until its token is rotated.

Every call for a user or an unknown account runs exactly one bcrypt check: an unknown account, an
over-long password or an expired robot cost the same as a wrong password, so response times do not
tell which users exist. A robot with a SHA-256 hash answers faster: robot names are not secrets
(they are the CI's user names and in the stack's settings). An expired robot fails like a wrong
password; the log says it expired.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping

import bcrypt

from auth.access import SHA256_PREFIX, Robot, bcrypt_cost, is_sha256_token_hash
from auth.identity import Identity, account_key

log = logging.getLogger("registry_fleet.auth.local")

BCRYPT_MAX_BYTES = 72  # bcrypt >= 5 refuses longer passwords instead of truncating them
DEFAULT_COST = 12
ROBOT_TOKEN_BYTES = 32  # 256 bits; at least 128 are required of any generated robot token
MIN_ROBOT_TOKEN_CHARS = 22  # 128 bits in base62; a shorter secret never matches a SHA-256 robot


def credential_digest(stored_hash: str) -> str:
    """What a refresh token remembers of an account's stored hash: a new password or robot token
    changes it. A digest of a salted bcrypt hash tells nothing about the secret."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:32]


def hash_secret(secret: str, cost: int = DEFAULT_COST) -> str:
    """A bcrypt hash for a user password or a robot token (for config files and tests)."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=cost)).decode()


def new_robot_token() -> str:
    """A robot token: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(ROBOT_TOKEN_BYTES)


def robot_token_hash(token: str) -> str:
    """The stored form of a robot token: `sha256:<hex>` (the token must be generated, >= 128 bits)."""
    return SHA256_PREFIX + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _sha256_matches(secret: bytes, stored: str) -> bool:
    if len(secret) < MIN_ROBOT_TOKEN_CHARS:
        return False
    return hmac.compare_digest(hashlib.sha256(secret).hexdigest(), stored.removeprefix(SHA256_PREFIX))


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
        self._robot_keys = frozenset(account_key(name) for name in robots)
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
        if robot is not None and is_sha256_token_hash(robot.token_hash):
            if not _sha256_matches(secret, robot.token_hash):
                return None
            return self._robot_identity(username, robot)
        stored = self._users.get(username) or (robot.token_hash.encode() if robot else None)
        if stored is None or len(secret) > BCRYPT_MAX_BYTES:
            bcrypt.checkpw(b"x", self._dummy)
            return None
        if not bcrypt.checkpw(secret, stored):
            return None
        if robot is not None:
            return self._robot_identity(username, robot)
        return Identity(name=username, kind="user", credential=credential_digest(stored.decode()))

    def is_robot_name(self, name: str) -> bool:
        """True when `name`, under any spelling with the same account key, is one of the robots."""
        return account_key(name) in self._robot_keys

    def _robot_identity(self, username: str, robot: Robot) -> Identity | None:
        if self._expired(robot):
            log.warning("robot %r refused: expired at %s", username, robot.expires.isoformat())
            return None
        return Identity(name=username, kind="robot", credential=credential_digest(robot.token_hash))

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
