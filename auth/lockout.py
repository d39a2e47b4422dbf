"""Failed logins per (account, client address), with exponential back-off.

After `threshold` failures within `window` seconds the pair is refused for 2**n seconds, n being
the failures counted so far: 32 s after the 5th, then each further failure (one is allowed when a
lock ends) doubles it: 64, 128, 256, 512, then `max_lock` (15 min). The count is forgotten once the
pair has been quiet for a whole `window` after its last lock ended, or by a success. While refused,
the credentials are not checked at all (no bcrypt work, no oracle) and the attempt does not count.

Memory is bounded: at most `max_entries` pairs are remembered; the least recently failed pair is
forgotten first (a flood of distinct pairs can therefore push a locked pair out: the cap protects
the process, the back-off protects accounts under normal load). Account names are counted under
their first 256 characters. State lives in one process: with several worker processes each keeps
its own, and a restart or reload forgets it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_KEY_CHARS = 256
_MAX_EXPONENT = 40  # 2**40 s is far beyond any max_lock; keeps the arithmetic small


@dataclass
class _Entry:
    failures: list[float] = field(default_factory=list)  # before the first lock: times within the window
    count: int = 0
    locked_until: float = 0.0


class Lockout:
    def __init__(
        self,
        threshold: int = 5,
        window: float = 300.0,
        max_lock: float = 900.0,
        max_entries: int = 10_000,
        now: Callable[[], float] = time.time,
    ) -> None:
        if threshold < 1 or window <= 0 or max_lock <= 0 or max_entries < 1:
            raise ValueError("lockout: threshold, window, max_lock and max_entries must be positive")
        self.threshold = threshold
        self.window = window
        self.max_lock = max_lock
        self.max_entries = max_entries
        self._now = now
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(account: str, client: str) -> tuple[str, str]:
        return (account[:MAX_KEY_CHARS], client)

    def retry_after(self, account: str, client: str) -> int:
        """Seconds the pair must still wait (0: it may try now)."""
        now = self._now()
        with self._lock:
            entry = self._entries.get(self._key(account, client))
            if entry is None or entry.locked_until <= now:
                return 0
            return max(1, math.ceil(entry.locked_until - now))

    def failure(self, account: str, client: str) -> int:
        """Count a failure; returns the lock it starts in seconds (0: not locked yet)."""
        now = self._now()
        key = self._key(account, client)
        with self._lock:
            entry = self._entries.pop(key, None) or _Entry()
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

    def success(self, account: str, client: str) -> None:
        with self._lock:
            self._entries.pop(self._key(account, client), None)

    def __len__(self) -> int:
        return len(self._entries)
