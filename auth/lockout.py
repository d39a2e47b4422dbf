"""Failed logins per (account, client address), with exponential back-off; one step per attempt.

The account is counted under its key (`auth.identity.account_key`): every spelling the directory
would take for the same account shares one counter. After `threshold` failures within `window`
seconds the pair is refused for 2**n seconds, n being the failures counted so far: 32 s after the
5th, then each further failure (one is allowed when a lock ends) doubles it: 64, 128, 256, 512, then
`max_lock` (15 min). The count is forgotten once the pair has been quiet for a whole `window` after
its last lock ended, or by a success. While refused, the credentials are not checked at all (no
bcrypt work, no oracle) and the attempt does not count.

Check, credential work and count are one step: `attempt()` reserves one of the failures the pair
has left before a lock, and the reservation is settled by `failure()`, `success()` or released
unsettled (the backend could not answer). Attempts beyond what is left wait (at most `max_wait`
seconds) for those in flight to settle, then see the new state: 24 parallel wrong guesses get at
most `threshold` answers before the lock, while parallel logins with the right secret all go
through. A wrong secret already counted for the pair (the same typo sent again, or a client's
retry of one login, as containerd's POST-then-GET fallback does) is not counted twice: guessing
gains nothing from repeats. Secrets are remembered only as HMACs under a per-process random key.

Memory is bounded: at most `max_entries` pairs are remembered; the least recently failed pair is
forgotten first (a flood of distinct pairs can therefore push a locked pair out: the cap protects
the process, the back-off protects accounts under normal load). State lives in one process: with
several worker processes each keeps its own, and a restart or reload forgets it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from auth.identity import MAX_KEY_CHARS

REMEMBERED_SECRETS = 4  # wrong secrets per pair not counted again
_MAX_EXPONENT = 40  # 2**40 s is far beyond any max_lock; keeps the arithmetic small

Key = tuple[str, str]


class Locked(Exception):  # noqa: N818 (reads as a sentence: raise Locked)
    """The pair may not try now; `retry_after` is in whole seconds (at least 1)."""

    def __init__(self, retry_after: int, busy: bool = False) -> None:
        super().__init__(f"retry in {retry_after}s")
        self.retry_after = retry_after
        self.busy = busy  # True: not locked, but the attempts in flight use up what is left


@dataclass
class _Entry:
    failures: list[float] = field(default_factory=list)  # before the first lock: times within the window
    count: int = 0
    locked_until: float = 0.0
    seen: list[bytes] = field(default_factory=list)  # HMACs of the wrong secrets counted lately


class Attempt:
    """One reserved try; settle it with `failure` or `success` (unsettled, it is released uncounted)."""

    def __init__(self, lockout: Lockout, key: Key) -> None:
        self._lockout = lockout
        self._key = key
        self.settled = False

    def failure(self, secret: str) -> int:
        """Count a wrong secret; returns the lock it starts in seconds (0: not locked)."""
        self.settled = True
        return self._lockout._failure(self._key, secret)

    def success(self) -> None:
        self.settled = True
        self._lockout._success(self._key)


class Lockout:
    def __init__(
        self,
        threshold: int = 5,
        window: float = 300.0,
        max_lock: float = 900.0,
        max_entries: int = 10_000,
        now: Callable[[], float] = time.time,
        max_wait: float = 15.0,
    ) -> None:
        if threshold < 1 or window <= 0 or max_lock <= 0 or max_entries < 1 or max_wait < 0:
            raise ValueError("lockout: threshold, window, max_lock and max_entries must be positive")
        self.threshold = threshold
        self.window = window
        self.max_lock = max_lock
        self.max_entries = max_entries
        self.max_wait = max_wait
        self._now = now
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._in_flight: dict[Key, int] = {}
        self._changed = threading.Condition()
        self._hmac_key = secrets.token_bytes(32)

    @staticmethod
    def _key(account: str, client: str) -> Key:
        return (account[:MAX_KEY_CHARS], client)

    def _state(self, entry: _Entry | None, now: float) -> tuple[float, int]:
        """(seconds the pair is still locked, failures it has left before the next lock)."""
        if entry is None:
            return 0.0, self.threshold
        if entry.locked_until > now:
            return entry.locked_until - now, 0
        if entry.locked_until:
            # A lock has ended: one try while the back-off runs, a fresh start after a quiet window.
            return (0.0, 1) if now - entry.locked_until < self.window else (0.0, self.threshold)
        recent = sum(1 for t in entry.failures if t > now - self.window)
        return 0.0, max(self.threshold - recent, 0)

    def retry_after(self, account: str, client: str) -> int:
        """Seconds the pair must still wait (0: it may try now)."""
        with self._changed:
            locked, _ = self._state(self._entries.get(self._key(account, client)), self._now())
        return max(1, math.ceil(locked)) if locked else 0

    @contextmanager
    def attempt(self, account: str, client: str) -> Iterator[Attempt]:
        """Reserve a try for the pair, or raise Locked. Leaving the block settles or releases it."""
        key = self._key(account, client)
        deadline = time.monotonic() + self.max_wait
        with self._changed:
            while True:
                locked, left = self._state(self._entries.get(key), self._now())
                if locked:
                    raise Locked(max(1, math.ceil(locked)))
                if self._in_flight.get(key, 0) < left:
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Locked(1, busy=True)
                self._changed.wait(remaining)
        attempt = Attempt(self, key)
        try:
            yield attempt
        finally:
            with self._changed:
                self._settle(key)

    def _settle(self, key: Key) -> None:
        """Called with the condition held: one reservation of `key` is over."""
        n = self._in_flight.get(key, 0) - 1
        if n > 0:
            self._in_flight[key] = n
        else:
            self._in_flight.pop(key, None)
        self._changed.notify_all()

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._hmac_key, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def _failure(self, key: Key, secret: str) -> int:
        now = self._now()
        digest = self._digest(secret)
        with self._changed:
            entry = self._entries.pop(key, None) or _Entry()
            if any(hmac.compare_digest(digest, d) for d in entry.seen):
                self._entries[key] = entry  # a repeat of a counted wrong secret: no new count
                return 0
            entry.seen = [*entry.seen[-(REMEMBERED_SECRETS - 1) :], digest]
            if entry.locked_until and now - entry.locked_until < self.window:
                entry.count += 1  # back-off already running: every failure doubles it
            else:
                recent = [t for t in entry.failures if t > now - self.window]
                entry.failures = [*recent[-(self.threshold - 1) :], now] if self.threshold > 1 else [now]
                entry.count = len(entry.failures)
                entry.locked_until = 0.0
            self._entries[key] = entry  # most recent last
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            if entry.count < self.threshold:
                return 0
            lock = min(float(2 ** min(entry.count, _MAX_EXPONENT)), self.max_lock)
            entry.locked_until = now + lock
            return math.ceil(lock)

    def _success(self, key: Key) -> None:
        with self._changed:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
