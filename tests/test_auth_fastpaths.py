"""The token service's fast paths, without processes: robot tokens stored as SHA-256, the verified-credential
cache (auth/cache.py), and the lockout's limit on accounts per address (auth/lockout.py).

The processes (two services sharing a DynamoDB table, a reload) are in tests/test_auth_shared_lockout.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from auth.access import Robot
from auth.cache import CredentialCache
from auth.config import ConfigError, parse_config
from auth.identity import Identity
from auth.local import LocalAuthenticator, hash_secret, new_robot_token, robot_token_hash
from auth.lockout import Locked, Lockout
from tests.helpers.token_service import (
    COST,
    FUTURE,
    SERVICE,
    Clock,
    Directory,
    config_data,
    get_token,
    in_parallel,
    make_app,
    policy_data,
)

ROBOT_TOKEN = new_robot_token()


# --- robot tokens --------------------------------------------------------------------------------------


def test_a_new_robot_token_has_at_least_128_bits_and_is_stored_as_sha256() -> None:
    token = new_robot_token()
    assert len(token) >= 22 and token != new_robot_token()
    assert robot_token_hash(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def robots(**hashes: str) -> dict[str, Robot]:
    return {
        name: Robot(namespace="team-a/ci", actions=("pull",), expires=FUTURE, token_hash=h)  # type: ignore[arg-type]
        for name, h in hashes.items()
    }


def test_a_sha256_robot_needs_no_bcrypt_and_a_bcrypt_robot_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    old_token = "an-old-robot-token-from-before-rotation"
    backend = LocalAuthenticator(
        {"alice": hash_secret("alice-pw", COST)},
        robots(fast=robot_token_hash(ROBOT_TOKEN), old=hash_secret(old_token, COST)),
    )
    calls: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(h) or real(p, h))
    identity = backend.authenticate("fast", ROBOT_TOKEN)
    assert identity is not None and identity.kind == "robot" and calls == []
    assert backend.authenticate("fast", ROBOT_TOKEN + "x") is None
    assert backend.authenticate("fast", robot_token_hash(ROBOT_TOKEN)) is None, "the stored form is no token"
    assert calls == []
    old = backend.authenticate("old", old_token)
    assert old is not None and old.kind == "robot" and len(calls) == 1, "bcrypt robots keep working"
    assert backend.authenticate("old", ROBOT_TOKEN) is None


def test_a_short_secret_never_matches_a_sha256_robot() -> None:
    short = "short-token"  # under 128 bits: whatever its hash, a robot's token it is not
    backend = LocalAuthenticator({}, robots(r=robot_token_hash(short)))
    assert backend.authenticate("r", short) is None


def test_the_config_takes_either_form_and_refuses_a_token_in_clear(tmp_path: Path) -> None:
    policy = policy_data()
    policy["robots"]["robot-a"]["token_hash"] = robot_token_hash(ROBOT_TOKEN)
    parse_config(config_data(tmp_path, policy=policy), tmp_path)
    policy["robots"]["robot-a"]["token_hash"] = ROBOT_TOKEN
    with pytest.raises(ConfigError, match=r"policy\.robots\.robot-a\.token_hash: is neither sha256"):
        parse_config(config_data(tmp_path, policy=policy), tmp_path)
    policy["robots"]["robot-a"]["token_hash"] = "sha256:" + "A" * 64  # upper-case hex: not the form
    with pytest.raises(ConfigError, match="token_hash"):
        parse_config(config_data(tmp_path, policy=policy), tmp_path)


# --- the verified-credential cache -------------------------------------------------------------------------

ALICE = Identity("alice", "user")
ZOE = Identity("zoe", "directory", frozenset({"a-devs"}))


def test_only_the_exact_secret_is_served_and_a_failure_forgets_the_account() -> None:
    clock = Clock()
    cache = CredentialCache(now=clock)
    cache.put("alice", "alice", "pw", ALICE)
    assert cache.get("alice", "alice", "pw") == ALICE
    for wrong in ("pw ", "PW", "p", ""):
        assert cache.get("alice", "alice", wrong) is None, "a wrong secret is a miss"
    assert cache.get("alice", "Alice", "pw") is None, "another spelling is checked by the backends first"
    assert cache.get("bob", "alice", "pw") is None
    cache.forget("alice")
    assert cache.get("alice", "alice", "pw") is None and len(cache) == 0


def test_entries_expire_directory_ones_within_the_group_bound() -> None:
    clock = Clock()
    cache = CredentialCache(ttl=300, directory_ttl=60, now=clock)
    cache.put("alice", "alice", "pw", ALICE)
    cache.put("zoe", "zoe", "pw", ZOE)
    clock.advance(59.9)
    assert cache.get("zoe", "zoe", "pw") == ZOE
    clock.advance(0.1)
    assert cache.get("zoe", "zoe", "pw") is None, "directory groups are re-read at least every 60 s"
    assert cache.get("alice", "alice", "pw") == ALICE
    clock.advance(240)
    assert cache.get("alice", "alice", "pw") is None


def test_a_new_secret_forgets_the_old_and_memory_is_bounded() -> None:
    cache = CredentialCache(max_entries=3, now=Clock())
    cache.put("alice", "alice", "old", ALICE)
    cache.put("alice", "alice", "new", ALICE)
    assert cache.get("alice", "alice", "old") is None and cache.get("alice", "alice", "new") == ALICE
    for i in range(10):
        cache.put(f"u{i}", f"u{i}", "pw", Identity(f"u{i}", "user"))
    assert len(cache) == 3 and cache.get("u9", "u9", "pw") is not None and cache.get("u0", "u0", "pw") is None
    assert cache._by_account.keys() == {"u7", "u8", "u9"}, "the index drops what the cache drops"


def test_the_cache_holds_no_secret() -> None:
    cache = CredentialCache()
    cache.put("alice", "alice", "hunter2-secret", ALICE)
    assert all(b"hunter2" not in k for k in cache._entries), "keys are HMACs under a per-process key"
    assert CredentialCache()._digest("a", "a", "s") != cache._digest("a", "a", "s")


def counting_directory() -> Directory:
    return Directory()


def test_the_app_checks_a_repeated_login_once_and_never_serves_a_wrong_one(tmp_path: Path) -> None:
    clock = Clock()
    directory = counting_directory()
    client = make_app(tmp_path, clock, directory).test_client()
    scope = "repository:team-a/app:pull,push"
    for _ in range(5):
        assert get_token(client, scope, who=("zoe", "zoe-pw")).status_code == 200
    assert directory.calls == 1, "repeated logins are served from the cache"
    assert get_token(client, scope, who=("zoe", "zoe-pw-wrong")).status_code == 401
    assert directory.calls == 2
    assert get_token(client, scope, who=("zoe", "zoe-pw")).status_code == 200
    assert directory.calls == 3, "the failure forgot zoe: the right password is checked again"
    directory.entries["zoe"] = ("zoe-new-pw", frozenset({"a-devs"}))  # changed in the directory
    assert get_token(client, scope, who=("zoe", "zoe-new-pw")).status_code == 200, "the new one works at once"
    assert get_token(client, scope, who=("zoe", "zoe-pw")).status_code == 401, "the old one is checked, refused"
    health = client.get("/healthz").get_json()
    assert health["credential_cache"]["hits"] == 4 and health["lockout"] == {"store": "local", "shared": False}


def test_a_locked_account_is_not_served_from_the_cache(tmp_path: Path) -> None:
    clock = Clock()
    client = make_app(tmp_path, clock, Directory()).test_client()
    assert get_token(client, who=("zoe", "zoe-pw")).status_code == 200
    for i in range(5):
        get_token(client, who=("zoe", f"guess-{i}"))
    assert get_token(client, who=("zoe", "zoe-pw")).status_code == 429


def test_the_cache_can_be_turned_off(tmp_path: Path) -> None:
    directory = Directory()
    config: dict[str, Any] = {"credential_cache": {"ttl_seconds": 0}}
    client = make_app(tmp_path, Clock(), directory, **config).test_client()
    for _ in range(3):
        assert get_token(client, who=("zoe", "zoe-pw")).status_code == 200
    assert directory.calls == 3


def test_the_directory_bound_cannot_be_set_above_60_seconds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"credential_cache\.directory_ttl_seconds"):
        parse_config(config_data(tmp_path, credential_cache={"directory_ttl_seconds": 61}), tmp_path)


# --- one address against many accounts -----------------------------------------------------------------------


def fail(lockout: Lockout, account: str, client: str, secret: str = "guess") -> int:
    with lockout.attempt(account, client) as attempt:
        return attempt.failure(secret)


def test_an_address_failing_against_many_accounts_waits_and_backs_off() -> None:
    clock = Clock()
    lockout = Lockout(now=clock, max_accounts=10)
    locks = [fail(lockout, f"user{i}", "10.0.0.9") for i in range(10)]
    assert locks == [0] * 9 + [32], "the 10th distinct account locks the address for 32 s"
    with pytest.raises(Locked) as locked, lockout.attempt("someone-else", "10.0.0.9"):
        pytest.fail("a try from a locked address")
    assert locked.value.client and locked.value.retry_after == 32
    assert lockout.retry_after("user0", "10.0.0.10") == 0, "another address is not slowed"
    clock.advance(32)
    assert fail(lockout, "user10", "10.0.0.9") == 64, "each further account doubles it"
    clock.advance(64)
    assert fail(lockout, "user0", "10.0.0.9", "guess") == 0, "a repeat of a counted guess adds nothing"
    clock.advance(299)
    assert fail(lockout, "user11", "10.0.0.9") == 128, "within a window of the lock's end: it goes on"
    clock.advance(128 + 300)
    assert fail(lockout, "user12", "10.0.0.9") == 0, "a quiet window after the lock: a fresh start"


def test_an_address_spraying_through_the_app_gets_429(tmp_path: Path) -> None:
    client = make_app(tmp_path, Clock(), Directory(), lockout={"max_accounts_per_client": 3}).test_client()
    codes = [get_token(client, who=(f"nobody{i}", "Summer2026!")).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    resp = get_token(client, who=("alice", "alice-pw"))
    assert resp.status_code == 429 and "from this address" in resp.get_json()["errors"][0]["message"]
    other = get_token(client, who=("alice", "alice-pw"), headers={"X-Forwarded-For": "10.1.2.3"})
    assert other.status_code == 429, "X-Forwarded-For from an untrusted peer changes nothing"
    assert SERVICE


def test_a_burst_of_the_same_login_is_checked_once(tmp_path: Path) -> None:
    """50 CI jobs starting at once with one account: one directory check, the rest wait for it."""
    directory = Directory(delay=0.05)
    client = make_app(tmp_path, Clock(), directory).test_client()
    codes = in_parallel(20, lambda i: get_token(client, who=("zoe", "zoe-pw")).status_code)
    assert codes == [200] * 20 and directory.calls == 1
    wrong = in_parallel(4, lambda i: get_token(client, who=("zoe", "zoe-typo")).status_code)
    assert wrong == [401] * 4 and directory.calls == 5, "a failure is never shared: each one is checked"
