"""Verified credentials: after a successful check, account + secret -> identity, for a few minutes.

A repeated login (CI asks for a token per pull and push, often several per image) then costs an
HMAC instead of a bcrypt check or two directory binds. What is kept, and for how long:

- the key is HMAC-SHA256 under a random key made when the process starts (never written anywhere)
  of the account key (auth/identity.py), the login as typed and the secret: memory holds no password and nothing an
  offline guess could test without the process's key;
- only successes are stored: a wrong secret is a miss (its HMAC differs) and goes to the backends
  and the lockout as before; it also forgets every entry of that account (any failure does);
- an entry lives `ttl` seconds (local users and bcrypt robots), `directory_ttl` seconds for
  directory accounts: their groups are re-read at least that often, so a user removed from a
  group loses what the group granted within `directory_ttl` (60 s by default, docs/token-service.md);
- a success with another secret forgets the account's other entries: once a user logs in with a
  new password, the old one is no longer served from memory;
- a burst of the same login (50 CI jobs starting at once) checks it once: the others wait for that
  check (`single_flight`) and are served from the cache, or check again themselves if it failed;
- at most `max_entries` entries (least recently used out first); memory only: a restart, a reload
  (gunicorn starts new workers on SIGHUP, each builds a new cache) and a config change forget all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from auth.identity import Identity


@dataclass(frozen=True)
class _Entry:
    account: str
    identity: Identity
    expires: float


class CredentialCache:
    def __init__(
        self,
        ttl: float = 300.0,
        directory_ttl: float = 60.0,
        max_entries: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or directory_ttl < 0 or max_entries < 0:
            raise ValueError("credential cache: ttl, directory_ttl and max_entries must not be negative")
        self.ttl = ttl
        self.directory_ttl = min(directory_ttl, ttl)
        self.max_entries = max_entries
        self._now = now
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_account: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()
        self._flights: dict[bytes, tuple[threading.Lock, list[int]]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def _digest(self, account: str, login: str, secret: str) -> bytes:
        parts = (account, login, secret)
        message = b"\0".join(p.encode("utf-8", "surrogateescape") for p in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, account: str, login: str, secret: str) -> Identity | None:
        """The identity a success with exactly this login and secret gave, if still fresh."""
        if not self.enabled:
            return None
        digest = self._digest(account, login, secret)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or entry.account != account:
                self.misses += 1
                return None
            if entry.expires <= self._now():
                self._drop(digest)
                self.misses += 1
                return None
            self._entries.move_to_end(digest)
            self.hits += 1
            return entry.identity

    def put(self, account: str, login: str, secret: str, identity: Identity) -> None:
        """Remember a verified success; the account's entries for other secrets are forgotten."""
        if not self.enabled:
            return
        ttl = self.directory_ttl if identity.kind == "directory" else self.ttl
        if ttl <= 0:
            return
        digest = self._digest(account, login, secret)
        with self._lock:
            for other in self._by_account.get(account, set()) - {digest}:
                self._drop(other)
            self._entries[digest] = _Entry(account, identity, self._now() + ttl)
            self._entries.move_to_end(digest)
            self._by_account.setdefault(account, set()).add(digest)
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    @contextmanager
    def single_flight(self, account: str, login: str, secret: str) -> Iterator[None]:
        """Held while one request checks this login and secret: the same ones wait, then find the cache."""
        digest = self._digest(account, login, secret)
        with self._lock:
            flight = self._flights.get(digest)
            if flight is None:
                flight = self._flights[digest] = (threading.Lock(), [0])
            flight[1][0] += 1
        try:
            with flight[0]:
                yield
        finally:
            with self._lock:
                flight[1][0] -= 1
                if not flight[1][0]:
                    self._flights.pop(digest, None)

    def forget(self, account: str) -> None:
        """Any failure for the account: none of its secrets is served from memory any more."""
        with self._lock:
            for digest in list(self._by_account.get(account, ())):
                self._drop(digest)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_account.clear()

    def _drop(self, digest: bytes) -> None:
        """Called with the lock held."""
        entry = self._entries.pop(digest, None)
        if entry is None:
            return
        keys = self._by_account.get(entry.account)
        if keys is not None:
            keys.discard(digest)
            if not keys:
                del self._by_account[entry.account]

    def __len__(self) -> int:
        return len(self._entries)
