"""The token service in process, for the tests that need no processes (test_auth_unit.py, test_auth_oauth.py):
its service name, issuer, bcrypt cost and local accounts; a fake clock to move time by hand; the policy and
service config the tests start from (`policy_data`, `config_data`); a stand-in directory backend; the Flask
app built from them (`make_app`); a token request as a registry client sends it (`get_token`, with `basic`
credentials); and `in_parallel`, which releases threads together to probe the lockout under contention.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from auth.config import ServiceConfig, parse_config
from auth.identity import BackendUnavailable, Identity, account_key
from auth.local import LocalAuthenticator, hash_secret
from auth.server import create_app
from auth.tokens import create_signing_pair

SERVICE = "registry.unit.test"
ISSUER = "unit-issuer"
COST = 4  # the cheapest bcrypt cost: tests only
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "root": "root-pw", "x": "x-pw"}
ROBOT_TOKEN = "robot-token-0123456789"
FUTURE = "2099-01-01T00:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# --- policy and service config ---------------------------------------------------------------------


def policy_data(robot_expires: str = FUTURE) -> dict[str, Any]:
    return {
        "teams": {
            "team-a": {
                "namespaces": ["team-a"],
                "members": {"alice": "reader", "bob": "developer", "carol": "maintainer", "erin": "admin"},
                "groups": {"a-devs": "developer", "a-readers": "reader"},
            },
            "team-b": {"namespaces": ["team-b", "shared/b"], "members": {"dave": "developer"}},
        },
        "robots": {
            "robot-a": {
                "namespace": "team-a/ci",
                "actions": ["pull", "push"],
                "expires": robot_expires,
                "token_hash": hash_secret(ROBOT_TOKEN, COST),
            }
        },
        "admins": ["root"],
        "rules": [
            {"accounts": ["*"], "repositories": ["base/**"], "actions": ["pull"]},
            {"repositories": ["users/${account}/*"], "actions": ["pull", "push", "delete"]},
            {"anonymous": True, "repositories": ["public/**"], "actions": ["pull"]},
            {"accounts": ["ci-*"], "clients": ["10.0.0.0/8"], "repositories": ["team-b/**"], "actions": ["pull"]},
            {"groups": ["auditors"], "repositories": ["**"], "actions": ["pull"]},
        ],
    }


def config_data(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    key, cert = create_signing_pair(tmp_path / "signing")
    data: dict[str, Any] = {
        "issuer": ISSUER,
        "service": SERVICE,
        "signing_key": str(key),
        "signing_cert": str(cert),
        "bcrypt_min_cost": COST,
        "users": {name: {"password_hash": hash_secret(pw, COST)} for name, pw in PASSWORDS.items()},
        "policy": policy_data(),
    }
    data.update(changes)
    return data


# --- concurrency -----------------------------------------------------------------------------------


def in_parallel(count: int, work: Callable[[int], Any]) -> list[Any]:
    """`work(0..count-1)` in as many threads, released together; their results in order."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        start.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- the app ---------------------------------------------------------------------------------------


class Directory:
    """A stand-in directory backend (the LDAP one lives in auth/ldap.py): it stores `zoe` and, as
    LDAP does, finds her under any spelling with the same account key."""

    def __init__(self, down: bool = False, delay: float = 0.0) -> None:
        self.down = down
        self.delay = delay
        self.calls = 0
        self.entries = {"zoe": ("zoe-pw", frozenset({"a-devs"}))}

    def _find(self, username: str) -> str | None:
        if self.down:
            raise BackendUnavailable("ldaps://dc1: connection refused")
        return next((n for n in self.entries if account_key(n) == account_key(username)), None)

    def authenticate(self, username: str, password: str) -> Identity | None:
        self.calls += 1
        time.sleep(self.delay)
        name = self._find(username)
        if name is not None and self.entries[name][0] == password:
            return Identity(name, "directory", self.entries[name][1])
        return None

    def lookup(self, name: str) -> Identity | None:
        found = self._find(name)
        return Identity(found, "directory", self.entries[found][1]) if found else None


def make_app(tmp_path: Path, clock: Clock, directory: Directory | None = None, **changes: Any) -> Flask:
    config: ServiceConfig = parse_config(config_data(tmp_path, **changes), tmp_path)
    backends: list[Any] = [LocalAuthenticator(config.password_hashes, config.policy.robots, now=clock)]
    if directory is not None:
        backends.append(directory)
    return create_app(config, backends, now=clock)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def get_token(
    client: FlaskClient,
    *scopes: str,
    who: tuple[str, str] | None = None,
    extra: str = "",
    headers: dict[str, str] | None = None,
) -> Any:
    query = f"service={SERVICE}" + "".join(f"&scope={s}" for s in scopes) + extra
    hdrs = {**(basic(*who) if who else {}), **(headers or {})}
    return client.get(f"/auth?{query}", headers=hdrs)
