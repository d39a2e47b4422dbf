"""The token service without processes: scopes, policy decisions, validation, lockout, tokens, the app.

The registry-facing behaviour (what 2.8.2 accepts) is in test_auth_registry.py; here every rule of
the service itself, with a fake clock where time matters.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask.testing import FlaskClient

from auth.access import AccessControl
from auth.config import ConfigError, load_config, parse_config
from auth.identity import Identity
from auth.local import LocalAuthenticator, hash_secret
from auth.lockout import Locked, Lockout
from auth.scopes import Scope, ScopeError, parse_scope, parse_scopes
from auth.server import AUDIT_LOGGER, client_address
from auth.tokens import SigningKeyError, TokenSigner, create_signing_pair, load_private_key
from tests.helpers.token_service import (
    COST,
    FUTURE,
    ISSUER,
    PASSWORDS,
    ROBOT_TOKEN,
    SERVICE,
    Clock,
    Directory,
    basic,
    config_data,
    get_token,
    in_parallel,
    make_app,
    policy_data,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- scopes -----------------------------------------------------------------------------------------


def test_scopes_parse_repository_plugin_and_catalog() -> None:
    assert parse_scope("repository:team-a/app:pull,push") == Scope("repository", "team-a/app", ("pull", "push"))
    assert parse_scope("repository(plugin):team-a/plug:pull") == Scope("repository", "team-a/plug", ("pull",), "plugin")
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", ("*",))
    assert str(parse_scope("repository(plugin):a/b:pull")) == "repository(plugin):a/b:pull"
    for name in ("a", "a/b/c", "a.b_c__d-e---f/x9", "x" * 255, "example.com/team/app"):
        assert parse_scope(f"repository:{name}:pull").name == name


def test_scope_parameters_split_on_spaces_and_merge_per_resource() -> None:
    scopes = parse_scopes(["repository:a/b:pull repository:c/d:push", "repository:a/b:push,pull", ""])
    assert scopes == [Scope("repository", "a/b", ("pull", "push")), Scope("repository", "c/d", ("push",))]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("repository:team-a/app", "not of the form type:name:actions"),
        ("repository:team-a/app:", "action ''"),
        ("repository:team-a/app:pull,,push", "action ''"),
        ("repository:team-a/app:PULL", "action 'PULL'"),
        ("repository:team-a/app:pull;rm", "action 'pull;rm'"),
        ("repository:Team-A/app:pull", "is not a repository name"),
        ("repository:/team-a:pull", "is not a repository name"),
        ("repository:team-a/:pull", "is not a repository name"),
        ("repository:team-a//app:pull", "is not a repository name"),
        ("repository:team-a/../x:pull", "is not a repository name"),
        ("repository:team-a/-app:pull", "is not a repository name"),
        ("repository:team_.a:pull", "is not a repository name"),
        ("repository:a___b:pull", "is not a repository name"),
        ("repository:host:5000/app:pull", "is not a repository name"),
        ("repository:*)(uid=*:pull", "is not a repository name"),
        ("repository:" + "x" * 256 + ":pull", "is not a repository name"),
        ("repository(Plugin):a:pull", "resource type"),
        ("blob:team-a/app:pull", "unknown resource type 'blob'"),
        ("registry:tags:*", "the only registry resource"),
        ("repository:" + "a/" * 300 + "a:pull", "longer than 512"),
    ],
)
def test_malformed_scopes_are_refused_naming_the_scope(text: str, words: str) -> None:
    with pytest.raises(ScopeError) as err:
        parse_scope(text)
    assert words in str(err.value)
    assert repr(text[:80])[:40] in str(err.value)


# --- policy: decisions --------------------------------------------------------------------------------

POLICY = AccessControl.model_validate(policy_data())


def user(name: str, *groups: str, kind: str = "user") -> Identity:
    return Identity(name=name, kind=kind, groups=frozenset(groups))  # type: ignore[arg-type]


ALL = "pull,push,delete"


@pytest.mark.parametrize(
    ("who", "scope", "client", "granted"),
    [
        # team roles on the team's namespaces
        (user("alice"), f"repository:team-a/app:{ALL}", "10.1.1.1", {"pull"}),
        (user("bob"), f"repository:team-a/app:{ALL}", "10.1.1.1", {"pull", "push"}),
        (user("bob"), f"repository:team-a/deep/er/app:{ALL}", "10.1.1.1", {"pull", "push"}),
        (user("carol"), f"repository:team-a/x:{ALL}", "10.1.1.1", {"pull", "push", "delete"}),
        (user("erin"), "repository:team-a/x:*", "10.1.1.1", {"*"}),
        (user("erin"), "registry:catalog:*", "10.1.1.1", set()),  # the catalog is for global admins only
        (user("dave"), f"repository:shared/b/app:{ALL}", "10.1.1.1", {"pull", "push"}),
        # a namespace covers what is below it, not its prefix-siblings nor itself
        (user("bob"), f"repository:team-abc/app:{ALL}", "10.1.1.1", set()),
        (user("bob"), f"repository:team-a:{ALL}", "10.1.1.1", set()),
        (user("bob"), f"repository:team-b/app:{ALL}", "10.1.1.1", set()),
        (user("bob"), "repository:team-a/app:*", "10.1.1.1", set()),  # `*` is asked literally: admins only
        # directory groups
        (user("zoe", "a-devs", kind="directory"), f"repository:team-a/app:{ALL}", "10.1.1.1", {"pull", "push"}),
        (user("zoe", "a-readers", "a-devs", kind="directory"), "repository:team-a/app:push", "10.1.1.1", {"push"}),
        (user("zoe", "auditors", kind="directory"), f"repository:team-b/x/y:{ALL}", "10.1.1.1", {"pull"}),
        (user("zoe", "A-DEVS", kind="directory"), f"repository:team-a/app:{ALL}", "10.1.1.1", set()),
        # global admins
        (user("root"), "registry:catalog:*", "10.1.1.1", {"*"}),
        (user("root"), f"repository:team-b/x:{ALL}", "10.1.1.1", {"pull", "push", "delete"}),
        (user("root", kind="robot"), "registry:catalog:*", "10.1.1.1", set()),
        # robots: their namespace and the rules, never team rights
        (user("robot-a", kind="robot"), f"repository:team-a/ci/app:{ALL}", "10.1.1.1", {"pull", "push"}),
        (user("robot-a", kind="robot"), f"repository:team-a/app:{ALL}", "10.1.1.1", set()),
        (user("robot-a", kind="robot"), f"repository:team-a/ci:{ALL}", "10.1.1.1", set()),
        (user("robot-a", kind="robot"), f"repository:base/debian:{ALL}", "10.1.1.1", {"pull"}),
        (user("bob", kind="robot"), f"repository:team-a/app:{ALL}", "10.1.1.1", set()),
        (user("robot-a"), f"repository:team-a/ci/app:{ALL}", "10.1.1.1", set()),  # a *user* named like a robot
        # rules: ${account}, globs, clients
        (user("alice"), f"repository:users/alice/app:{ALL}", "10.1.1.1", {"pull", "push", "delete"}),
        (user("alice"), f"repository:users/bob/app:{ALL}", "10.1.1.1", set()),
        (user("alice"), f"repository:users/alice/x/y:{ALL}", "10.1.1.1", set()),  # `*` stays in one component
        (user("*", kind="directory"), f"repository:users/bob/app:{ALL}", "10.1.1.1", set()),
        (user("Alice", kind="directory"), f"repository:users/alice/app:{ALL}", "10.1.1.1", set()),
        (user("ci-runner"), f"repository:team-b/x:{ALL}", "10.1.2.3", {"pull"}),
        (user("ci-runner"), f"repository:team-b/x:{ALL}", "192.168.1.1", set()),
        (user("ci-runner"), f"repository:team-b/x:{ALL}", "not-an-ip", set()),
        (user("nobody"), f"repository:base/debian:{ALL}", "10.1.1.1", {"pull"}),
        # anonymous: the anonymous rules, pull at most
        (None, f"repository:public/x/y:{ALL}", "10.1.1.1", {"pull"}),
        (None, f"repository:base/debian:{ALL}", "10.1.1.1", set()),
        (None, f"repository:team-a/app:{ALL}", "10.1.1.1", set()),
        (None, "registry:catalog:*", "10.1.1.1", set()),
        # unmatched: nothing
        (user("nobody"), f"repository:team-a/app:{ALL}", "10.1.1.1", set()),
    ],
)
def test_policy_decisions(who: Identity | None, scope: str, client: str, granted: set[str]) -> None:
    assert POLICY.allowed(who, parse_scope(scope), client) == granted


def test_anonymous_never_gets_more_than_pull_even_from_a_wide_rule() -> None:
    policy = AccessControl.model_validate({"rules": [{"anonymous": True, "repositories": ["**"], "actions": ["pull"]}]})
    assert policy.allowed(None, parse_scope(f"repository:any/thing:{ALL},*"), "127.0.0.1") == {"pull"}
    assert AccessControl().allowed(None, parse_scope("repository:any/thing:pull"), "127.0.0.1") == set()


# --- policy and service config: validation names the key -----------------------------------------


def policy_with(**changes: Any) -> dict[str, Any]:
    data = policy_data()
    data.update(changes)
    return data


TEAM_A = {"namespaces": ["team-a"], "members": {"bob": "developer"}}
HASH = hash_secret("t", COST)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            policy_with(teams={"team-a": TEAM_A, "team-b": {"namespaces": ["team-a/sub"]}}),
            "policy.teams.team-b.namespaces[0]: 'team-a/sub' overlaps 'team-a' of team 'team-a'",
        ),
        (policy_with(teams={"team-a": TEAM_A, "team-b": {"namespaces": ["team-a"]}}), "overlaps 'team-a'"),
        (
            policy_with(teams={"team-a": {"namespaces": ["team-a"], "members": {"x": "owner"}}}),
            "teams.team-a.members.x",
        ),
        (policy_with(teams={"team-a": {"namespaces": ["team-a"], "groups": {"g": "root"}}}), "teams.team-a.groups.g"),
        (policy_with(teams={"team-a": {"namespaces": ["team-a/*"]}}), "teams.team-a.namespaces"),
        (policy_with(teams={"team-a": {"namespaces": []}}), "teams.team-a.namespaces"),
        (policy_with(teams={"team-a": {**TEAM_A, "memebers": {}}}), "teams.team-a.memebers: Extra inputs"),
        (policy_with(rules=[{"accounts": [], "repositories": ["a/*"], "actions": ["pull"]}]), "rules.0.accounts"),
        (policy_with(rules=[{"groups": [], "repositories": ["a/*"], "actions": ["pull"]}]), "rules.0.groups"),
        (policy_with(rules=[{"repositories": [], "actions": ["pull"]}]), "rules.0.repositories"),
        (policy_with(rules=[{"repositories": ["a/*"], "actions": []}]), "rules.0.actions"),
        (policy_with(rules=[{"repositories": ["a/*"], "actions": ["pull"], "clients": []}]), "rules.0.clients"),
        (
            policy_with(rules=[{"repositories": ["a/*"], "actions": ["pull"], "clients": ["10.0.0.1/8"]}]),
            "policy.rules.0.clients: '10.0.0.1/8' is not a network",
        ),
        (
            policy_with(rules=[{"repositories": ["a/*"], "actions": ["pull"], "clients": ["nowhere"]}]),
            "rules.0.clients",
        ),
        (policy_with(rules=[{"repositories": ["Team-*/app"], "actions": ["pull"]}]), "can never match"),
        (policy_with(rules=[{"repositories": ["team-a//x"], "actions": ["pull"]}]), "can never match"),
        (policy_with(rules=[{"repositories": ["team-a/"], "actions": ["pull"]}]), "can never match"),
        (policy_with(rules=[{"repositories": ["-*"], "actions": ["pull"]}]), "can never match"),
        (policy_with(rules=[{"repositories": ["a/*_"], "actions": ["pull"]}]), "can never match"),
        (policy_with(rules=[{"repositories": ["users/${user}/*"], "actions": ["pull"]}]), "unknown variable ${user}"),
        (policy_with(rules=[{"repositories": ["a/*"], "actions": ["pull", "own"]}]), "rules.0.actions.1"),
        (
            policy_with(rules=[{"anonymous": True, "repositories": ["a/*"], "actions": ["pull", "push"]}]),
            "may only grant pull",
        ),
        (
            policy_with(rules=[{"anonymous": True, "accounts": ["x"], "repositories": ["a/*"], "actions": ["pull"]}]),
            "drop accounts/groups",
        ),
        (
            policy_with(
                robots={"r": {"namespace": "team-c/ci", "actions": ["push"], "expires": FUTURE, "token_hash": HASH}}
            ),
            "policy.robots.r.namespace: 'team-c/ci' is not owned by any team",
        ),
        (
            policy_with(
                robots={"r": {"namespace": "team-a/ci", "actions": ["push"], "expires": FUTURE, "token_hash": "t"}}
            ),
            "policy.robots.r.token_hash: is neither sha256:<64 hex digits> nor a bcrypt hash",
        ),
        (
            policy_with(
                robots={
                    "r": {
                        "namespace": "team-a/ci",
                        "actions": ["push"],
                        "expires": "2099-01-01T00:00:00",
                        "token_hash": HASH,
                    }
                }
            ),
            "policy.robots.r.expires",
        ),
        (
            policy_with(
                robots={"r": {"namespace": "team-a/ci", "actions": ["*"], "expires": FUTURE, "token_hash": HASH}}
            ),
            "policy.robots.r.actions.0",
        ),
    ],
)
def test_policy_errors_name_the_key(tmp_path: Path, policy: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config_data(tmp_path, policy=policy), tmp_path, "auth.yml")
    assert expected in str(err.value)
    assert str(err.value).startswith("auth.yml:\n")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"users": {"alice": {"password_hash": hash_secret("pw", COST)}}, "bcrypt_min_cost": 10},
            "users.alice.password_hash: bcrypt cost 4",
        ),
        ({"users": {"alice": {"password_hash": "alice-pw"}}}, "users.alice.password_hash: is not a bcrypt hash"),
        ({"users": {"robot-a": {"password_hash": HASH}}}, "users.robot-a: also a robot"),
        ({"users": {"a:b": {"password_hash": HASH}}}, "users.a:b: an account name cannot hold ':'"),
        ({"service": ""}, "service: String should have at least 1 character"),
        ({"token_lifetime_seconds": 30}, "token_lifetime_seconds"),
        ({"trusted_proxies": ["10.0.0.1/16"]}, "trusted_proxies: '10.0.0.1/16' is not a network"),
        ({"ldap": {"url": "ldap://dc1.example.com:389"}}, "ldap."),
        ({"ldap_directory": {}}, "ldap_directory: Extra inputs are not permitted"),
    ],
)
def test_service_config_errors_name_the_key(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config_data(tmp_path, **changes), tmp_path, "auth.yml")
    assert expected in str(err.value)


def test_config_file_yaml_with_relative_paths_and_aware_expiry(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    data["signing_key"], data["signing_cert"] = "signing/token-signing.key", "signing/token-signing.crt"
    text = yaml.safe_dump(data).replace(f"'{FUTURE}'", "2099-01-01T00:00:00Z")  # a YAML timestamp, unquoted
    (tmp_path / "auth.yml").write_text(text)
    config = load_config(tmp_path / "auth.yml")
    assert config.signing_key == tmp_path / "signing" / "token-signing.key"
    assert config.policy.robots["robot-a"].expires == datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    (tmp_path / "bad.yml").write_text("issuer: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yml")


def test_cli_check_validates_and_reports_errors(tmp_path: Path) -> None:
    (tmp_path / "good.yml").write_text(yaml.safe_dump(config_data(tmp_path)))
    bad = config_data(
        tmp_path, policy=policy_with(rules=[{"repositories": ["a/*"], "actions": ["pull"], "clients": ["10.0.0.1/8"]}])
    )
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    common = ["--bind", "127.0.0.1:1", "--certfile", "x", "--keyfile", "x", "--check"]

    def run(config: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "auth", "--config", str(tmp_path / config), *common]
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)

    good = run("good.yml")
    assert good.returncode == 0 and "ok" in good.stdout, good.stderr
    failed = run("bad.yml")
    assert failed.returncode == 2
    assert "policy.rules.0.clients: '10.0.0.1/8' is not a network" in failed.stderr


# --- lockout ------------------------------------------------------------------------------------------


_guesses = itertools.count()


def fail(lockout: Lockout, account: str, client: str, secret: str | None = None) -> int:
    """One wrong try through a reservation (a new wrong secret each time unless given)."""
    with lockout.attempt(account, client) as attempt:
        return attempt.failure(secret if secret is not None else f"guess-{next(_guesses)}")


def succeed(lockout: Lockout, account: str, client: str) -> None:
    with lockout.attempt(account, client) as attempt:
        attempt.success()


def test_lockout_backs_off_exponentially_and_a_success_resets() -> None:
    clock = Clock()
    lockout = Lockout(now=clock)
    for _ in range(4):
        assert fail(lockout, "bob", "10.0.0.1") == 0
    assert lockout.retry_after("bob", "10.0.0.1") == 0
    assert fail(lockout, "bob", "10.0.0.1") == 32  # 5th failure: 2**5 s
    assert lockout.retry_after("bob", "10.0.0.1") == 32
    assert lockout.retry_after("bob", "10.0.0.2") == 0, "another address is another pair"
    assert lockout.retry_after("alice", "10.0.0.1") == 0, "another account is another pair"
    clock.advance(31.5)
    assert lockout.retry_after("bob", "10.0.0.1") == 1
    clock.advance(0.5)
    assert lockout.retry_after("bob", "10.0.0.1") == 0
    assert fail(lockout, "bob", "10.0.0.1") == 64
    locks = []
    for _ in range(6):
        clock.advance(lockout.retry_after("bob", "10.0.0.1"))
        locks.append(fail(lockout, "bob", "10.0.0.1"))
    assert locks == [128, 256, 512, 900, 900, 900]  # capped at 15 minutes
    clock.advance(900)
    succeed(lockout, "bob", "10.0.0.1")
    assert lockout.retry_after("bob", "10.0.0.1") == 0
    assert fail(lockout, "bob", "10.0.0.1") == 0


def test_lockout_starts_over_after_a_quiet_window_once_the_lock_ends() -> None:
    clock = Clock()
    lockout = Lockout(now=clock)
    for _ in range(5):
        fail(lockout, "bob", "10.0.0.1")
    clock.advance(32 + 300)  # the lock ended, then a whole window without failures
    assert [fail(lockout, "bob", "10.0.0.1") for _ in range(5)] == [0, 0, 0, 0, 32]
    clock.advance(32 + 299)  # within the window after the lock: the back-off goes on
    assert fail(lockout, "bob", "10.0.0.1") == 64


def test_lockout_forgets_failures_outside_the_window() -> None:
    clock = Clock()
    lockout = Lockout(now=clock)
    for _ in range(20):
        assert fail(lockout, "bob", "10.0.0.1") == 0
        clock.advance(76)  # 4 failures per 5 minutes never lock
    assert lockout.retry_after("bob", "10.0.0.1") == 0


def test_lockout_memory_is_bounded() -> None:
    clock = Clock()
    lockout = Lockout(max_entries=100, now=clock, max_accounts=100_000)
    # Ten times the bound. The address's account list grows with each failure (max_accounts keeps it unlocked),
    # and each failure sorts it: 10,000 took 12 s.
    for i in range(1_000):
        fail(lockout, f"user{i}", "10.0.0.1")
    assert len(lockout) == 100
    fail(lockout, "x" * 100_000, "10.0.0.1")
    assert lockout.retry_after("x" * 100_000, "10.0.0.1") == 0
    assert max(len(k[0]) for k in lockout._entries) == 256


def test_a_locked_pair_cannot_even_reserve_a_try() -> None:
    clock = Clock()
    lockout = Lockout(now=clock)
    for _ in range(5):
        fail(lockout, "bob", "10.0.0.1")
    with pytest.raises(Locked) as locked, lockout.attempt("bob", "10.0.0.1"):
        pytest.fail("a reservation while locked")
    assert locked.value.retry_after == 32 and not locked.value.busy


def test_the_same_wrong_secret_counts_once() -> None:
    """A client retrying one login (containerd's POST, then GET) or a repeated typo is one failure."""
    lockout = Lockout(now=Clock())
    assert [fail(lockout, "bob", "10.0.0.1", "typo") for _ in range(10)] == [0] * 10
    assert lockout.retry_after("bob", "10.0.0.1") == 0
    assert [fail(lockout, "bob", "10.0.0.1") for _ in range(4)] == [0, 0, 0, 32], "new guesses still count"


def test_parallel_wrong_tries_never_exceed_the_threshold() -> None:
    """Check, credential work and count are one step: 24 threads guessing at once get 5 tries."""
    lockout = Lockout(now=time.time, max_wait=10)
    tried: list[int] = []
    refused: list[int] = []

    def guess(i: int) -> None:
        try:
            with lockout.attempt("bob", "10.0.0.1") as attempt:
                time.sleep(0.05)  # the password check
                tried.append(i)
                attempt.failure(f"guess-{i}")
        except Locked:
            refused.append(i)

    in_parallel(24, guess)
    assert len(tried) == 5 and len(refused) == 19


def test_parallel_right_secrets_all_go_through() -> None:
    """Reservations bound failures, not logins: 24 parallel successes all get their try."""
    lockout = Lockout(now=time.time, max_wait=10)
    fail(lockout, "bob", "10.0.0.1")
    fail(lockout, "bob", "10.0.0.1")
    fail(lockout, "bob", "10.0.0.1")
    done: list[int] = []

    def login(i: int) -> None:
        with lockout.attempt("bob", "10.0.0.1") as attempt:
            time.sleep(0.02)
            attempt.success()
            done.append(i)

    in_parallel(24, login)
    assert len(done) == 24


def test_an_unsettled_try_is_released_uncounted() -> None:
    lockout = Lockout(now=Clock(), threshold=1, max_wait=0)
    with lockout.attempt("bob", "10.0.0.1"):
        with pytest.raises(Locked) as busy, lockout.attempt("bob", "10.0.0.1"):
            pass
        assert busy.value.busy, "the one try left is in flight"
    assert fail(lockout, "bob", "10.0.0.1") == 2, "the released try did not count; this one locks"


# --- tokens -------------------------------------------------------------------------------------------


def test_token_claims_and_header_as_the_registry_needs_them(tmp_path: Path) -> None:
    key_path, cert_path = create_signing_pair(tmp_path)
    clock = Clock()
    signer = TokenSigner.load(key_path, cert_path, ISSUER, 300, clock())
    access = [Scope("repository", "team-a/app", ("pull", "push")), Scope("repository", "p/q", ("pull",), "plugin")]
    minted = signer.mint("bob", SERVICE, access, clock())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    claims = jwt.decode(minted.token, public_key, algorithms=["RS256"], audience=SERVICE, issuer=ISSUER)
    header = jwt.get_unverified_header(minted.token)
    assert header["alg"] == "RS256" and "kid" not in header
    assert header["x5c"] == [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    assert claims["aud"] == SERVICE and isinstance(claims["aud"], str)
    assert claims["iss"] == ISSUER and claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"] == int(clock())
    assert claims["jti"] == minted.jti and len(claims["jti"]) >= 16
    assert claims["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "p/q", "actions": ["pull"], "class": "plugin"},
    ]
    assert signer.mint("bob", SERVICE, access, clock()).jti != minted.jti


def test_signing_key_pkcs1_and_pkcs8_load_and_bad_keys_are_refused(tmp_path: Path) -> None:
    key_path, cert_path = create_signing_pair(tmp_path)
    assert key_path.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    key = load_private_key(key_path)
    pkcs8 = tmp_path / "pkcs8.key"
    pkcs8.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert pkcs8.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert load_private_key(pkcs8).private_numbers() == key.private_numbers()
    TokenSigner.load(pkcs8, cert_path, ISSUER, 300, time.time())

    def write_key(name: str, k: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
        path = tmp_path / name
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return path

    with pytest.raises(SigningKeyError, match="RS256 needs an RSA key"):
        load_private_key(write_key("ec.key", ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(SigningKeyError, match="1024-bit RSA"):
        load_private_key(write_key("small.key", rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    other = write_key("other.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(SigningKeyError, match="does not match"):
        TokenSigner.load(other, cert_path, ISSUER, 300, time.time())
    with pytest.raises(SigningKeyError, match="not now"):
        TokenSigner.load(key_path, cert_path, ISSUER, 300, time.time() + 400 * 86400)
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_private_key(tmp_path / "junk.key")


# --- local accounts -----------------------------------------------------------------------------------


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt check the local backend runs, as the hash it ran against."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)  # auth.local calls bcrypt.checkpw through the module
    return calls


def local_backend(clock: Callable[[], float], robot_expires: str = FUTURE) -> LocalAuthenticator:
    policy = AccessControl.model_validate(policy_data(robot_expires))
    users = {name: hash_secret(pw, COST) for name, pw in PASSWORDS.items()}
    return LocalAuthenticator(users, policy.robots, now=clock)


def test_local_users_and_robots_authenticate(checkpw_calls: list[bytes]) -> None:
    backend = local_backend(Clock())
    assert backend.authenticate("alice", "alice-pw") == Identity("alice", "user")
    assert backend.authenticate("robot-a", ROBOT_TOKEN) == Identity("robot-a", "robot")
    assert backend.authenticate("alice", "wrong") is None
    assert backend.authenticate("robot-a", "alice-pw") is None
    assert backend.authenticate("Alice", "alice-pw") is None, "names are exact"
    assert len(checkpw_calls) == 5


def test_unknown_accounts_cost_one_bcrypt_check_like_known_ones(checkpw_calls: list[bytes]) -> None:
    backend = local_backend(Clock())
    for name, password in (("ghost", "x"), ("*)(uid=*", "*"), ("alice", "a" * 100), ("", "")):
        checkpw_calls.clear()
        assert backend.authenticate(name, password) is None
        assert len(checkpw_calls) == 1, name
        assert checkpw_calls[0] == backend._dummy
    checkpw_calls.clear()
    backend.authenticate("alice", "wrong")
    assert len(checkpw_calls) == 1 and checkpw_calls[0] != backend._dummy
    # The dummy hash has the configured cost, so it takes as long as a real check.
    assert backend._dummy.startswith(f"$2b${COST:02d}$".encode())


def test_expired_robot_fails_like_a_wrong_password_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    expiry = datetime.datetime.fromtimestamp(clock() + 60, datetime.UTC).isoformat()
    backend = local_backend(clock, robot_expires=expiry)
    assert backend.authenticate("robot-a", ROBOT_TOKEN) == Identity("robot-a", "robot")
    clock.advance(60)
    with caplog.at_level(logging.INFO):
        assert backend.authenticate("robot-a", ROBOT_TOKEN) is None
        assert backend.authenticate("robot-a", "wrong") is None
    expired = [r for r in caplog.records if "expired" in r.getMessage()]
    assert len(expired) == 1 and "robot-a" in expired[0].getMessage()
    assert ROBOT_TOKEN not in caplog.text


# --- the app ------------------------------------------------------------------------------------------


def test_a_robots_name_signs_in_with_the_robots_token_only(tmp_path: Path, clock: Clock) -> None:
    """A directory account named like a robot (in any spelling) never gets a token, with its own password or a
    refresh: a token's subject that names a robot is always that robot (the gates serve the scanner's robot
    without checks, docs/scanning.md)."""
    directory = Directory()
    directory.entries["robot-a"] = ("dir-pw", frozenset({"a-devs"}))
    client = make_app(tmp_path, clock, directory).test_client()
    for name in ("robot-a", "ROBOT-A", " Robot-A "):
        assert get_token(client, "repository:team-a/app:pull", who=(name, "dir-pw")).status_code == 401, name
    robot = get_token(client, "repository:team-a/app:pull", who=("robot-a", ROBOT_TOKEN))
    assert robot.status_code == 200
    assert claims_of(robot)["sub"] == "robot-a"
    zoe = get_token(client, "repository:team-a/app:pull", who=("zoe", "zoe-pw"))
    assert zoe.status_code == 200, "other directory accounts are unaffected"


@pytest.fixture
def client(tmp_path: Path, clock: Clock) -> FlaskClient:
    return make_app(tmp_path, clock, Directory()).test_client()


def body_of(resp: Any) -> dict[str, Any]:
    data = resp.get_json()
    assert isinstance(data, dict), resp.data
    return data


def claims_of(resp: Any) -> dict[str, Any]:
    return dict(jwt.decode(resp.json["token"], options={"verify_signature": False}))


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]


def test_token_response_grants_the_intersection(client: FlaskClient, clock: Clock) -> None:
    resp = get_token(
        client, "repository:team-a/app:pull,push,delete", "repository:team-b/app:pull", who=("bob", "bob-pw")
    )
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    body = resp.json
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    assert body["issued_at"] == datetime.datetime.fromtimestamp(int(clock()), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    claims = claims_of(resp)
    assert claims["sub"] == "bob" and claims["aud"] == SERVICE
    assert claims["access"] == [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}]


def test_a_login_without_scopes_and_the_account_parameter(client: FlaskClient) -> None:
    resp = get_token(client, who=("bob", "bob-pw"), extra="&account=bob&offline_token=true&client_id=docker")
    assert resp.status_code == 200 and claims_of(resp)["access"] == []


def test_directory_identities_get_their_group_roles(client: FlaskClient) -> None:
    resp = get_token(client, "repository:team-a/app:pull,push", who=("zoe", "zoe-pw"))
    assert resp.status_code == 200
    assert claims_of(resp)["access"][0]["actions"] == ["pull", "push"]


def test_anonymous_gets_an_empty_token(client: FlaskClient) -> None:
    resp = get_token(client, "repository:team-a/app:pull")
    assert resp.status_code == 200
    assert claims_of(resp)["sub"] == "" and claims_of(resp)["access"] == []
    resp = get_token(client, "repository:public/x:pull,push")
    assert claims_of(resp)["access"] == [{"type": "repository", "name": "public/x", "actions": ["pull"]}]


@pytest.mark.parametrize(
    ("query", "headers", "words"),
    [
        ("scope=repository:a/b:pull", {}, "service is required"),
        (f"service={SERVICE}&service=other", {}, "service is given 2 times"),
        ("service=registry.other", {}, "unknown service 'registry.other'"),
        (f"service={SERVICE}&scope=repository:Team/app:pull", {}, "scope 'repository:Team/app:pull'"),
        (f"service={SERVICE}&scope=repository:a:b:c:pull", {}, "scope 'repository:a:b:c:pull'"),
        (
            f"service={SERVICE}" + "".join(f"&scope=repository:a/r{i}:pull" for i in range(21)),
            {},
            "21 scope parameters",
        ),
        (f"service={SERVICE}&scope=" + "+".join(f"repository:a/r{i}:pull" for i in range(21)), {}, "21 scopes"),
        (f"service={SERVICE}&account=root", basic("bob", "bob-pw"), "account must be the user"),
        (f"service={SERVICE}&account=bob", {}, "account must be the user"),
        (f"service={SERVICE}", {"Authorization": "Basic !!!"}, "not base64"),
        (f"service={SERVICE}", {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}, "no user name"),
        (
            f"service={SERVICE}",
            {"Authorization": "Basic " + base64.b64encode(b"\xff:x").decode()},
            "not base64 of UTF-8",
        ),
        (f"service={SERVICE}", {"Authorization": "Bearer abc"}, "only HTTP Basic"),
        (f"service={SERVICE}", basic("a\x00b", "x"), "control characters"),
        (f"service={SERVICE}", basic("u" * 300, "x"), "longer than 256"),
    ],
)
def test_bad_requests_get_400_saying_why(client: FlaskClient, query: str, headers: dict[str, str], words: str) -> None:
    resp = client.get(f"/auth?{query}", headers=headers)
    assert resp.status_code == 400
    assert words in body_of(resp)["errors"][0]["message"]
    assert "token" not in body_of(resp)


def test_wrong_credentials_get_401_with_a_basic_challenge(client: FlaskClient) -> None:
    for who in (("bob", "wrong"), ("ghost", "x"), ("*)(uid=*", "*"), ("robot-a", "bob-pw")):
        resp = get_token(client, "repository:team-a/app:pull", who=who)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == 'Basic realm="registry-fleet"'
        assert "token" not in resp.json


def test_repeated_failures_get_429_and_success_resets(client: FlaskClient, clock: Clock) -> None:
    for i in range(5):
        assert get_token(client, who=("bob", f"wrong-{i}")).status_code == 401
    resp = get_token(client, who=("bob", "bob-pw"))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "32"
    assert get_token(client, who=("alice", "alice-pw")).status_code == 200
    clock.advance(32)
    assert get_token(client, who=("bob", "bob-pw")).status_code == 200
    assert get_token(client, who=("bob", "wrong")).status_code == 401, "the success reset the count"


def test_a_directory_that_is_down_is_503_and_not_a_failure(tmp_path: Path, clock: Clock) -> None:
    directory = Directory(down=True)
    client = make_app(tmp_path, clock, directory).test_client()
    for _ in range(6):
        resp = get_token(client, who=("zoe", "zoe-pw"))
        assert resp.status_code == 503 and "token" not in resp.json
    assert get_token(client, who=("bob", "bob-pw")).status_code == 200, "local accounts still work"
    directory.down = False
    assert get_token(client, who=("zoe", "zoe-pw")).status_code == 200, "503s did not count towards a lock"


def test_bodies_and_other_methods_are_refused(client: FlaskClient) -> None:
    assert client.get(f"/auth?service={SERVICE}", data=b"x" * 10).status_code == 413
    assert client.put(f"/auth?service={SERVICE}").status_code == 405
    assert client.delete("/auth").status_code == 405
    assert client.post("/healthz", data=b"x").status_code == 405
    too_big = client.post("/auth", data=b"a" * 20_000, content_type="application/x-www-form-urlencoded")
    assert too_big.status_code == 413
    assert body_of(client.get("/nope"))["errors"][0]["code"] == "NOT_FOUND"
    assert client.get("/healthz").status_code == 200


def test_audit_lines_record_each_decision_and_no_secret(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-*)(uid=*)-secret"
    with caplog.at_level(logging.INFO):
        ok = get_token(client, "repository:team-a/app:pull,push", who=("alice", "alice-pw"))
        get_token(client, "repository:team-b/app:push", who=("alice", "alice-pw"))
        get_token(client, "repository:team-a/app:pull", who=("carol", secret))
        get_token(client, "repository:BAD:pull", who=("carol", secret))
        for i in range(5):
            get_token(client, who=("x", f"{secret}{i}"))
    lines = audit_lines(caplog)
    assert lines[0] == {
        "event": "token",
        "grant": "basic",
        "account": "alice",
        "login": "alice",
        "client": "127.0.0.1",
        "client_id": None,
        "service": SERVICE,
        "requested": ["repository:team-a/app:pull,push"],
        "granted": ["repository:team-a/app:pull"],
        "outcome": "granted",
        "reason": None,
        "jti": claims_of(ok)["jti"],
        "refresh_id": None,
    }
    assert lines[1]["outcome"] == "denied" and lines[1]["granted"] == []
    assert lines[2]["outcome"] == "unauthenticated" and lines[2]["account"] == "carol"
    assert lines[3]["outcome"] == "bad_request" and lines[3]["account"] == "carol"
    assert "is not a repository name" in lines[3]["reason"]
    assert [line["outcome"] for line in lines[4:]] == ["unauthenticated"] * 5
    assert "locked for 32s" in lines[-1]["reason"]
    assert get_token(client, who=("x", "x-pw")).status_code == 429
    assert secret not in caplog.text and "alice-pw" not in caplog.text
    assert ok.json["token"] not in caplog.text and "eyJ" not in caplog.text
    assert all(r.name == AUDIT_LOGGER or r.levelno < logging.ERROR for r in caplog.records)


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = ["10.0.0.0/16"]
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9", "an untrusted peer cannot claim"
    assert client_address("10.0.1.1", "1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("10.0.1.1", "6.6.6.6, 1.2.3.4, 10.0.2.2", trusted) == "1.2.3.4", "the nearest untrusted hop"
    assert client_address("10.0.1.1", "junk", trusted) == "10.0.1.1"
    assert client_address("10.0.1.1", None, trusted) == "10.0.1.1"
    assert client_address("10.0.1.1", "1.2.3.4", []) == "10.0.1.1"
