"""The lockout (auth/lockout.py) with its state in DynamoDB: every worker on every host sees one state.

The table (components/lockout_table.py creates it, one per stack) has a string partition key `pk`
and a TTL attribute `expires_at`. Two kinds of items:

    pk = "pair|<account key>|<client address>"   failures, count, locked_until, seen, v, expires_at
    pk = "client|<client address>"               accounts (digest -> last failure), locked_until, v, expires_at

The state and its rules are the ones auth/lockout.py applies in one process (`PairState`,
`ClientState`); here each change is a read (strongly consistent, both items in one BatchGetItem
before the credential check) and a conditional PutItem (`v` unchanged since the read, or the item
still absent); a lost race re-reads and applies the failure again, so two hosts counting at once
both count. Items name accounts and addresses in clear (an operator unlocks an account by deleting
its item: docs/operating.md); wrong secrets and, in an address's item, the accounts it failed
against are HMACs under a key derived from the token signing key, the same on every host (so a
repeated wrong secret counts once fleet-wide). DynamoDB deletes an item some time after
`expires_at`; until it does, the times inside decide, as in memory.

Differences from one process, stated in docs/token-service.md: reservations (24 parallel guesses
get `threshold` answers) hold per process; across processes, guesses already in flight when the
lock starts are still answered (each counts and doubles the lock). A success deletes the pair's item.

While DynamoDB answers, its items alone decide (an operator's delete of an item unlocks at once,
everywhere). When it cannot be reached (a timeout, an error other than a lost race), the service
goes on with this process's own counters (every failure is always counted there too, so a guesser
already counted by this process stays slowed), logs an error once ("counting failed logins in this
process only"), and asks DynamoDB again after `RETRY_SECONDS`; /healthz says `"shared": false` with
the error count until it answers again (logged too). Failures counted only locally during an outage
are not copied to the table afterwards.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from auth.lockout import ClientState, Key, Lockout, PairState

if TYPE_CHECKING:
    from auth.metrics import TokenMetrics

log = logging.getLogger("registry_fleet.auth.lockout")

# Every call DynamoStore makes: the hosts' role and the VPC endpoint allow these, on the table only.
TABLE_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem")
RETRY_SECONDS = 10.0  # after a DynamoDB error, local counters only for this long, then try again
WRITE_RACES = 8  # conditional writes lost to other hosts before giving up on one failure
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 1.0


class StoreUnavailable(Exception):  # noqa: N818
    """DynamoDB did not answer, or answered with an error other than a lost race."""


@dataclass
class SharedRead:
    pair: PairState | None
    pair_version: int  # 0: no item
    client: ClientState | None
    client_version: int


def derive_key(signing_key_der: bytes) -> bytes:
    """The HMAC key for what the table holds: the same on every host (they share the signing key)."""
    return hmac.new(signing_key_der, b"registry-fleet lockout v1", hashlib.sha256).digest()


def _num(value: Any) -> float:
    return float(Decimal(value))


class DynamoStore:
    """The table's reads and writes, in DynamoDB's JSON (the low-level client)."""

    def __init__(self, table: str, region: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.table = table
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        self._client = boto3.session.Session().client(
            "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config
        )

    def _call(self, name: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, name)(**kwargs)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise
            raise StoreUnavailable(f"{name}: {err}") from err
        except BotoCoreError as err:
            raise StoreUnavailable(f"{name}: {err}") from err

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        answer = self._call(
            "batch_get_item",
            RequestItems={self.table: {"Keys": [{"pk": {"S": k}} for k in keys], "ConsistentRead": True}},
        )
        if answer.get("UnprocessedKeys"):
            raise StoreUnavailable("batch_get_item: keys left unprocessed (throttled)")
        return {item["pk"]["S"]: item for item in answer.get("Responses", {}).get(self.table, [])}

    def get(self, key: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._call(
            "get_item", TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True
        ).get("Item")
        return item

    def put(self, item: dict[str, Any], version: int) -> bool:
        """Write `item` (with v = version + 1) if the stored v is still `version`; False: lost a race."""
        from botocore.exceptions import ClientError

        if version:
            condition = {"ConditionExpression": "v = :v", "ExpressionAttributeValues": {":v": {"N": str(version)}}}
        else:
            condition = {"ConditionExpression": "attribute_not_exists(pk)"}
        try:
            self._call("put_item", TableName=self.table, Item={**item, "v": {"N": str(version + 1)}}, **condition)
        except ClientError:  # only ConditionalCheckFailedException reaches here
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete_item", TableName=self.table, Key={"pk": {"S": key}})


def pair_key(key: Key) -> str:
    return f"pair|{key[0]}|{key[1]}"


def client_key(client: str) -> str:
    return f"client|{client}"


def pair_from_item(item: dict[str, Any]) -> PairState:
    return PairState(
        failures=tuple(_num(v["N"]) for v in item.get("failures", {}).get("L", [])),
        count=int(item.get("count", {}).get("N", "0")),
        locked_until=_num(item.get("locked_until", {}).get("N", "0")),
        seen=tuple(bytes.fromhex(v["S"]) for v in item.get("seen", {}).get("L", [])),
    )


def client_from_item(item: dict[str, Any]) -> ClientState:
    accounts = item.get("accounts", {}).get("M", {})
    return ClientState(
        accounts=tuple(sorted(((a, _num(t["N"])) for a, t in accounts.items()), key=lambda kv: kv[1])),
        locked_until=_num(item.get("locked_until", {}).get("N", "0")),
    )


def _n(value: float) -> dict[str, str]:
    return {"N": repr(round(value, 3))}


def pair_item(pk: str, state: PairState, expires_at: float) -> dict[str, Any]:
    return {
        "pk": {"S": pk},
        "failures": {"L": [_n(t) for t in state.failures]},
        "count": {"N": str(state.count)},
        "locked_until": _n(state.locked_until),
        "seen": {"L": [{"S": d.hex()} for d in state.seen]},
        "expires_at": {"N": str(math.ceil(expires_at))},
    }


def client_item(pk: str, state: ClientState, expires_at: float) -> dict[str, Any]:
    return {
        "pk": {"S": pk},
        "accounts": {"M": {a: _n(t) for a, t in state.accounts}},
        "locked_until": _n(state.locked_until),
        "expires_at": {"N": str(math.ceil(expires_at))},
    }


def _version(item: dict[str, Any] | None) -> int:
    return int(item["v"]["N"]) if item and "v" in item else 0


class SharedLockout(Lockout):
    def __init__(
        self,
        store: DynamoStore,
        secret_key: bytes,
        clock: Callable[[], float] = time.monotonic,
        metrics: TokenMetrics | None = None,
        **kwargs: Any,
    ):
        super().__init__(secret_key=secret_key, **kwargs)
        self.metrics = metrics
        if metrics is not None:
            metrics.lockout_shared(True)
        self.store = store
        self._clock = clock
        self._state_lock = threading.Lock()
        self._down_until = 0.0
        self._down_since: float | None = None
        self.errors = 0
        self.last_error = ""

    # -- reachability --------------------------------------------------------------------------------

    def _usable(self) -> bool:
        with self._state_lock:
            return self._clock() >= self._down_until

    def _failed(self, err: Exception) -> None:
        if self.metrics is not None:
            self.metrics.lockout_store_error()
            self.metrics.lockout_shared(False)
        with self._state_lock:
            self.errors += 1
            self.last_error = str(err)[:300]
            self._down_until = self._clock() + RETRY_SECONDS
            first = self._down_since is None
            if first:
                self._down_since = self._now()
        if first:
            log.error(
                "lockout: DynamoDB table %s cannot be reached (%s): counting failed logins in this process only "
                "until it answers (asking again every %.0f s)",
                self.store.table,
                err,
                RETRY_SECONDS,
            )

    def _answered(self) -> None:
        with self._state_lock:
            was_down = self._down_since is not None
            self._down_since = None
        if was_down:
            if self.metrics is not None:
                self.metrics.lockout_shared(True)
            log.warning("lockout: DynamoDB table %s answers again: failed logins count fleet-wide", self.store.table)

    def status(self) -> dict[str, Any]:
        with self._state_lock:
            since = self._down_since
            status: dict[str, Any] = {
                "store": "dynamodb",
                "table": self.store.table,
                "shared": since is None,
                "errors": self.errors,
            }
        if since is not None:
            status["local_since"] = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat()
            status["last_error"] = self.last_error
        return status

    # -- the hooks ----------------------------------------------------------------------------------

    def _shared_read(self, key: Key) -> SharedRead | None:
        if not self._usable():
            self._decided_locally()
            return None
        pk, ck = pair_key(key), client_key(key[1])
        try:
            items = self.store.get_many([pk, ck])
        except StoreUnavailable as err:
            self._failed(err)
            self._decided_locally()
            return None
        self._answered()
        pair, client = items.get(pk), items.get(ck)
        return SharedRead(
            pair=pair_from_item(pair) if pair else None,
            pair_version=_version(pair),
            client=client_from_item(client) if client else None,
            client_version=_version(client),
        )

    def _decided_locally(self) -> None:
        if self.metrics is not None:
            self.metrics.lockout_local()

    def _shared_check(self, shared: SharedRead, now: float) -> tuple[float, int, bool]:
        locked, left = shared.pair.check(self.rules, now) if shared.pair else (0.0, self.threshold)
        client_locked = shared.client.locked(now) if shared.client else 0.0
        if client_locked > locked:
            return client_locked, 0, True
        return locked, left, False

    def _shared_failure(self, key: Key, digest: bytes, account: str, shared: SharedRead | None) -> int:
        if shared is None or not self._usable():
            return 0  # reserved while DynamoDB was unreachable: this failure counts in this process only
        try:
            lock, counted = self._write_pair(key, digest, shared)
            client_lock = self._write_client(key[1], account, shared) if counted else 0
        except StoreUnavailable as err:
            self._failed(err)
            return 0
        self._answered()
        return max(lock, client_lock)

    def _write_pair(self, key: Key, digest: bytes, shared: SharedRead) -> tuple[int, bool]:
        pk = pair_key(key)
        state, version = shared.pair or PairState(), shared.pair_version
        for _ in range(WRITE_RACES):
            now = self._now()
            new, lock, counted = state.failed(self.rules, digest, now)
            if not counted:
                return 0, False
            if self.store.put(pair_item(pk, new, new.forget_at(self.rules)), version):
                return lock, True
            item = self.store.get(pk)  # another host counted meanwhile: apply this failure to its state
            state, version = (pair_from_item(item) if item else PairState()), _version(item)
        raise StoreUnavailable(f"{pk}: lost {WRITE_RACES} write races in a row")

    def _write_client(self, client: str, account: str, shared: SharedRead) -> int:
        ck = client_key(client)
        state, version = shared.client or ClientState(), shared.client_version
        for _ in range(WRITE_RACES):
            new, lock = state.failed(self.rules, account, self._now())
            if self.store.put(client_item(ck, new, new.forget_at(self.rules)), version):
                return lock
            item = self.store.get(ck)
            state, version = (client_from_item(item) if item else ClientState()), _version(item)
        raise StoreUnavailable(f"{ck}: lost {WRITE_RACES} write races in a row")

    def _shared_success(self, key: Key, shared: SharedRead | None) -> None:
        if shared is None or shared.pair is None or not self._usable():
            return  # nothing stored for the pair when the try began: nothing to forget
        try:
            self.store.delete(pair_key(key))
        except StoreUnavailable as err:
            self._failed(err)
