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

One address failing against many accounts (password spraying: one guess per account stays under
every pair's threshold) is limited too: once an address has failed against `max_accounts` distinct
accounts within `window`, the address is refused for 32 s, and each further account it fails
against (one try is allowed when its lock ends) doubles that, up to `max_lock`; the accounts are
forgotten like a pair's failures (a quiet window after the lock). A repeated failure against an
account already counted does not add to the address (the pair's own back-off handles it).

Memory is bounded: at most `max_entries` pairs (and as many addresses) are remembered; the least
recently failed is forgotten first (a flood of distinct pairs can therefore push a locked pair
out: the cap protects the process, the back-off protects accounts under normal load). This class
keeps its state in one process; auth/shared_lockout.py keeps the same state in DynamoDB for the
whole fleet, and this process's copy as the fallback when DynamoDB cannot be reached.
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
from dataclasses import dataclass, replace
from typing import Any

from auth.identity import MAX_KEY_CHARS

REMEMBERED_SECRETS = 4  # wrong secrets per pair not counted again
_MAX_EXPONENT = 40  # 2**40 s is far beyond any max_lock; keeps the arithmetic small
CLIENT_FIRST_LOCK_EXPONENT = 5  # an address over its account limit waits 32 s first, then doubles

Key = tuple[str, str]


class Locked(Exception):  # noqa: N818 (reads as a sentence: raise Locked)
    """The pair may not try now; `retry_after` is in whole seconds (at least 1)."""

    def __init__(self, retry_after: int, busy: bool = False, client: bool = False) -> None:
        super().__init__(f"retry in {retry_after}s")
        self.retry_after = retry_after
        self.busy = busy  # True: not locked, but the attempts in flight use up what is left
        self.client = client  # True: the address failed against too many accounts


@dataclass(frozen=True)
class Rules:
    """The lockout's numbers; the state functions below apply them to a pair or an address."""

    threshold: int = 5
    window: float = 300.0
    max_lock: float = 900.0
    max_accounts: int = 100

    def lock_for(self, exponent: int) -> float:
        return min(float(2 ** min(exponent, _MAX_EXPONENT)), self.max_lock)


@dataclass(frozen=True)
class PairState:
    failures: tuple[float, ...] = ()  # before the first lock: times within the window
    count: int = 0
    locked_until: float = 0.0
    seen: tuple[bytes, ...] = ()  # HMACs of the wrong secrets counted lately

    def check(self, rules: Rules, now: float) -> tuple[float, int]:
        """(seconds the pair is still locked, failures it has left before the next lock)."""
        if self.locked_until > now:
            return self.locked_until - now, 0
        if self.locked_until:
            # A lock has ended: one try while the back-off runs, a fresh start after a quiet window.
            return (0.0, 1) if now - self.locked_until < rules.window else (0.0, rules.threshold)
        recent = sum(1 for t in self.failures if t > now - rules.window)
        return 0.0, max(rules.threshold - recent, 0)

    def failed(self, rules: Rules, digest: bytes, now: float) -> tuple[PairState, int, bool]:
        """(the new state, the lock it starts in whole seconds (0: none), whether it counted)."""
        if any(hmac.compare_digest(digest, d) for d in self.seen):
            return self, 0, False  # a repeat of a counted wrong secret: no new count
        seen = (*self.seen[-(REMEMBERED_SECRETS - 1) :], digest)
        if self.locked_until and now - self.locked_until < rules.window:
            state = replace(self, count=self.count + 1, seen=seen)  # back-off running: each failure doubles it
        else:
            recent = [t for t in self.failures if t > now - rules.window]
            failures = (*recent[-(rules.threshold - 1) :], now) if rules.threshold > 1 else (now,)
            state = PairState(failures=failures, count=len(failures), locked_until=0.0, seen=seen)
        if state.count < rules.threshold:
            return state, 0, True
        lock = rules.lock_for(state.count)
        return replace(state, locked_until=now + lock), math.ceil(lock), True

    def forget_at(self, rules: Rules) -> float:
        """When nothing of this state matters any more (a DynamoDB item's TTL)."""
        return max(self.locked_until, *self.failures, 0.0) + rules.window


@dataclass(frozen=True)
class ClientState:
    accounts: tuple[tuple[str, float], ...] = ()  # (account digest, last failure), within the window
    locked_until: float = 0.0

    def locked(self, now: float) -> float:
        return max(self.locked_until - now, 0.0)

    def failed(self, rules: Rules, account: str, now: float) -> tuple[ClientState, int]:
        """(the new state, the lock it starts on the address in whole seconds (0: none))."""
        quiet = not self.locked_until or now - self.locked_until >= rules.window
        kept = {a: t for a, t in self.accounts if t > now - rules.window or not quiet}
        if account in kept:
            kept[account] = now
            return replace(self, accounts=tuple(kept.items())), 0
        kept[account] = now
        # Bounded: beyond the limit only how many matters, and the newest are kept.
        items = sorted(kept.items(), key=lambda kv: kv[1])[-(rules.max_accounts + _MAX_EXPONENT) :]
        over = len(items) - rules.max_accounts
        if over < 0:
            return ClientState(accounts=tuple(items), locked_until=0.0 if quiet else self.locked_until), 0
        lock = rules.lock_for(CLIENT_FIRST_LOCK_EXPONENT + over)
        return ClientState(accounts=tuple(items), locked_until=now + lock), math.ceil(lock)

    def forget_at(self, rules: Rules) -> float:
        return max(self.locked_until, *(t for _, t in self.accounts), 0.0) + rules.window


class Attempt:
    """One reserved try; settle it with `failure` or `success` (unsettled, it is released uncounted)."""

    def __init__(self, lockout: Lockout, key: Key, shared: Any = None) -> None:
        self._lockout = lockout
        self._key = key
        self.shared = shared  # what the shared store said when the try was reserved (None: local only)
        self.settled = False

    def failure(self, secret: str) -> int:
        """Count a wrong secret; returns the lock it starts in seconds (0: not locked)."""
        self.settled = True
        return self._lockout._failure(self._key, secret, self.shared)

    def success(self) -> None:
        self.settled = True
        self._lockout._success(self._key, self.shared)


class Lockout:
    def __init__(
        self,
        threshold: int = 5,
        window: float = 300.0,
        max_lock: float = 900.0,
        max_entries: int = 10_000,
        now: Callable[[], float] = time.time,
        max_wait: float = 15.0,
        max_accounts: int = 100,
        secret_key: bytes | None = None,
    ) -> None:
        if threshold < 1 or window <= 0 or max_lock <= 0 or max_entries < 1 or max_wait < 0 or max_accounts < 1:
            raise ValueError("lockout: threshold, window, max_lock, max_entries and max_accounts must be positive")
        self.rules = Rules(threshold=threshold, window=window, max_lock=max_lock, max_accounts=max_accounts)
        self.threshold = threshold
        self.window = window
        self.max_lock = max_lock
        self.max_entries = max_entries
        self.max_wait = max_wait
        self._now = now
        self._entries: OrderedDict[Key, PairState] = OrderedDict()
        self._clients: OrderedDict[str, ClientState] = OrderedDict()
        self._in_flight: dict[Key, int] = {}
        self._changed = threading.Condition()
        # Wrong secrets and account names are remembered only as HMACs under this key (random per
        # process; the shared store's is the same on every host: auth/shared_lockout.py).
        self._hmac_key = secret_key if secret_key is not None else secrets.token_bytes(32)

    @staticmethod
    def _key(account: str, client: str) -> Key:
        return (account[:MAX_KEY_CHARS], client)

    # -- the shared store's hooks (auth/shared_lockout.py); here, state is this process's only ------------

    def _shared_read(self, key: Key) -> Any:
        """What the shared store holds for the pair and its address, or None (no store, or unreachable)."""
        return None

    def _shared_check(self, shared: Any, now: float) -> tuple[float, int, bool]:
        """(locked seconds, tries left, locked because of the address) from what `_shared_read` gave."""
        return 0.0, self.threshold, False

    def _shared_failure(self, key: Key, digest: bytes, account: str, shared: Any) -> int:
        return 0

    def _shared_success(self, key: Key, shared: Any) -> None:
        return None

    # -- the local state ----------------------------------------------------------------------------------

    def _local_check(self, key: Key, now: float) -> tuple[float, int, bool]:
        pair = self._entries.get(key)
        locked, left = pair.check(self.rules, now) if pair else (0.0, self.threshold)
        client = self._clients.get(key[1])
        client_locked = client.locked(now) if client else 0.0
        if client_locked > locked:
            return client_locked, 0, True
        return locked, left, False

    def retry_after(self, account: str, client: str) -> int:
        """Seconds the pair (or its address) must still wait (0: it may try now)."""
        key = self._key(account, client)
        shared = self._shared_read(key)
        now = self._now()
        if shared is not None:
            locked = self._shared_check(shared, now)[0]
        else:
            with self._changed:
                locked = self._local_check(key, now)[0]
        return max(1, math.ceil(locked)) if locked else 0

    @contextmanager
    def attempt(self, account: str, client: str) -> Iterator[Attempt]:
        """Reserve a try for the pair, or raise Locked. Leaving the block settles or releases it."""
        key = self._key(account, client)
        deadline = time.monotonic() + self.max_wait
        while True:
            shared = self._shared_read(key)  # outside the lock: a network call
            with self._changed:
                now = self._now()
                # The shared store decides when it answers (deleting its item unlocks a pair fleet-wide);
                # this process's own counts only when it does not (or there is none).
                if shared is not None:
                    locked, left, by_client = self._shared_check(shared, now)
                else:
                    locked, left, by_client = self._local_check(key, now)
                if locked:
                    raise Locked(max(1, math.ceil(locked)), client=by_client)
                if self._in_flight.get(key, 0) < left:
                    self._in_flight[key] = self._in_flight.get(key, 0) + 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Locked(1, busy=True)
                self._changed.wait(remaining)
        attempt = Attempt(self, key, shared)
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

    def _digest(self, text: str) -> bytes:
        return hmac.new(self._hmac_key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def account_digest(self, account: str) -> str:
        """How an address's record names an account it failed against (no account names stored)."""
        return self._digest("account\0" + account).hex()[:24]

    def _failure(self, key: Key, secret: str, shared: Any = None) -> int:
        now = self._now()
        digest = self._digest(secret)
        account = self.account_digest(key[0])
        with self._changed:
            entry = self._entries.pop(key, None) or PairState()
            entry, lock, counted = entry.failed(self.rules, digest, now)
            self._entries[key] = entry  # most recent last
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            client_lock = 0
            if counted:
                client = self._clients.pop(key[1], None) or ClientState()
                client, client_lock = client.failed(self.rules, account, now)
                self._clients[key[1]] = client
                while len(self._clients) > self.max_entries:
                    self._clients.popitem(last=False)
        shared_lock = self._shared_failure(key, digest, account, shared)
        return max(lock, client_lock, shared_lock)

    def _success(self, key: Key, shared: Any = None) -> None:
        with self._changed:
            self._entries.pop(key, None)
        self._shared_success(key, shared)

    def status(self) -> dict[str, Any]:
        """What /healthz says about the lockout."""
        return {"store": "local", "shared": False}

    def __len__(self) -> int:
        return len(self._entries)
