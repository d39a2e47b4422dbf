"""The token endpoint's OAuth2 POST (containerd's first ask), refresh tokens, one canonical identity
per login, and the client address behind proxies. No processes: the Flask app with a fake clock and
a stand-in directory (tests/helpers/token_service.py); containerd itself runs against the lab in
tests/test_lab_clients.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import urllib.parse
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from auth.config import ConfigError, parse_config
from auth.identity import account_key
from auth.local import LocalAuthenticator, hash_secret
from auth.refresh import TYP
from auth.server import AUDIT_LOGGER, client_address, create_app
from tests.helpers.token_service import (
    COST,
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

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def client(tmp_path: Path, clock: Clock, directory: Directory) -> FlaskClient:
    return make_app(tmp_path, clock, directory).test_client()


def post(client: FlaskClient, headers: dict[str, str] | None = None, **fields: str) -> Any:
    fields.setdefault("service", SERVICE)
    fields.setdefault("client_id", "containerd-client")
    body = urllib.parse.urlencode(fields)
    return client.post("/auth", data=body, content_type=f"{FORM}; charset=utf-8", headers=headers or {})


def password_grant(client: FlaskClient, user: str, password: str, **fields: str) -> Any:
    return post(client, grant_type="password", username=user, password=password, **fields)


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def audit(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]


# --- the OAuth2 password grant ---------------------------------------------------------------------


def test_password_grant_as_containerd_sends_it(client: FlaskClient) -> None:
    resp = password_grant(client, "bob", "bob-pw", scope="repository:team-a/app:pull,push repository:team-b/x:pull")
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["scope"] == "repository:team-a/app:pull,push", "the scope granted, space-separated"
    assert body["access_token"] and body["expires_in"] == 300 and "refresh_token" not in body
    assert claims(body["access_token"])["sub"] == "bob" and claims(body["access_token"])["aud"] == SERVICE
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"grant_type": "password", "username": "bob"}, "invalid_request", "needs username and password"),
        ({"grant_type": "password", "password": "x"}, "invalid_request", "needs username and password"),
        ({"username": "bob", "password": "bob-pw"}, "invalid_request", "grant_type is required"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type", "only password and refresh_token"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type", "only password and refresh_token"),
        ({"grant_type": "refresh_token"}, "invalid_request", "needs refresh_token"),
        ({"grant_type": "password", "service": "other"}, "invalid_request", "unknown service 'other'"),
        ({"grant_type": "password", "client_id": ""}, "invalid_request", "client_id must be"),
        ({"grant_type": "password", "access_type": "forever"}, "invalid_request", "online or offline"),
        ({"grant_type": "password", "scope": "repository:Bad:pull"}, "invalid_request", "is not a repository name"),
        ({"grant_type": "password", "username": "a\x00b", "password": "x"}, "invalid_request", "control characters"),
    ],
)
def test_malformed_forms_get_the_oauth_error_body(
    client: FlaskClient, fields: dict[str, str], error: str, words: str
) -> None:
    resp = post(client, **fields)
    assert resp.status_code == 400
    assert resp.json["error"] == error and words in resp.json["error_description"]
    assert "access_token" not in resp.json


def test_a_form_without_client_id_or_in_the_wrong_shape_is_refused(client: FlaskClient) -> None:
    body = urllib.parse.urlencode({"grant_type": "password", "username": "bob", "password": "bob-pw"})
    resp = client.post("/auth", data=body + f"&service={SERVICE}", content_type=FORM)
    assert resp.status_code == 400 and "client_id is required" in resp.json["error_description"]
    resp = client.post("/auth", json={"grant_type": "password"})
    assert resp.status_code == 400 and "application/x-www-form-urlencoded" in resp.json["error_description"]
    resp = client.post("/auth", data=b"grant_type=password&username=\xff", content_type=FORM)
    assert resp.status_code == 400 and "not UTF-8" in resp.json["error_description"]
    dup = client.post(
        "/auth", data=f"grant_type=password&grant_type=refresh_token&service={SERVICE}", content_type=FORM
    )
    assert dup.status_code == 400 and "grant_type is given 2 times" in dup.json["error_description"]
    with_basic = post(client, headers=basic("bob", "bob-pw"), grant_type="password", username="bob", password="bob-pw")
    assert with_basic.status_code == 400 and "no Authorization header" in with_basic.json["error_description"]


def test_wrong_credentials_are_invalid_grant_and_count_towards_the_lock(client: FlaskClient) -> None:
    for i in range(5):
        resp = password_grant(client, "bob", f"wrong-{i}")
        assert resp.status_code == 400 and resp.json["error"] == "invalid_grant"
    resp = password_grant(client, "bob", "bob-pw")
    assert resp.status_code == 429 and resp.json["error"] == "slow_down" and resp.headers["Retry-After"] == "32"
    assert get_token(client, who=("bob", "bob-pw")).status_code == 429, "GET and POST share the lockout"


def test_containerd_fallback_after_a_wrong_password_counts_once(client: FlaskClient) -> None:
    """containerd sends the same credentials by GET when the POST answers 400: one failure, not two."""
    for i in range(4):
        assert password_grant(client, "bob", f"typo-{i}").status_code == 400
        assert get_token(client, who=("bob", f"typo-{i}")).status_code == 401
    assert get_token(client, who=("bob", "bob-pw")).status_code == 200, "4 distinct failures, not 8"


def test_a_directory_outage_is_temporarily_unavailable(tmp_path: Path, clock: Clock) -> None:
    client = make_app(tmp_path, clock, Directory(down=True)).test_client()
    resp = password_grant(client, "zoe", "zoe-pw")
    assert resp.status_code == 503 and resp.json["error"] == "temporarily_unavailable"


# --- refresh tokens -----------------------------------------------------------------------------------


def offline(client: FlaskClient, user: str = "bob", password: str = "bob-pw", **fields: str) -> str:
    resp = password_grant(client, user, password, access_type="offline", **fields)
    assert resp.status_code == 200, resp.json
    return str(resp.json["refresh_token"])


def refresh_grant(client: FlaskClient, token: str, **fields: str) -> Any:
    return post(client, grant_type="refresh_token", refresh_token=token, **fields)


def test_offline_access_gives_a_refresh_token_that_gets_access_tokens(client: FlaskClient) -> None:
    token = offline(client)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == TYP and "x5c" not in header
    body = claims(token)
    assert body["aud"] == f"refresh:{SERVICE}" and body["sub"] == "bob" and body["cid"] == "containerd-client"
    assert body["exp"] - body["iat"] == 7 * 86_400
    resp = refresh_grant(client, token, scope="repository:team-a/app:push")
    assert resp.status_code == 200, resp.json
    assert resp.json["refresh_token"] == token, "the spec: the refresh grant returns the same refresh token"
    assert claims(resp.json["access_token"])["access"][0]["actions"] == ["push"]
    assert claims(resp.json["access_token"])["sub"] == "bob"


def test_a_refresh_token_is_no_access_token_and_an_access_token_no_refresh_token(client: FlaskClient) -> None:
    token = offline(client)
    assert claims(token)["aud"] != SERVICE, "the registry checks aud == service: it refuses a refresh token"
    access = password_grant(client, "bob", "bob-pw").json["access_token"]
    resp = refresh_grant(client, access)
    assert resp.status_code == 400 and resp.json["error"] == "invalid_grant"
    assert refresh_grant(client, token[:-4] + "AAAA").status_code == 400, "a forged signature"


def test_a_refresh_token_is_bound_to_its_client_id_and_expires(client: FlaskClient, clock: Clock) -> None:
    token = offline(client)
    resp = refresh_grant(client, token, client_id="docker")
    assert resp.status_code == 400 and "another client_id" in resp.json["error_description"]
    clock.advance(7 * 86_400 - 1)
    assert refresh_grant(client, token).status_code == 200
    clock.advance(1)
    resp = refresh_grant(client, token)
    assert resp.status_code == 400 and "expired" in resp.json["error_description"]


def test_refresh_stops_when_the_account_is_gone_changed_revoked_or_expired(tmp_path: Path, clock: Clock) -> None:
    """Each app is the service after a config reload, with the same signing key."""
    base = config_data(tmp_path)
    expiry = datetime.datetime.fromtimestamp(clock() + 3600, datetime.UTC).isoformat()
    base["policy"] = policy_data(robot_expires=expiry)

    def app(**changes: Any) -> FlaskClient:
        config = parse_config({**base, **changes}, tmp_path)
        backends = [LocalAuthenticator(config.password_hashes, config.policy.robots, now=clock), Directory()]
        return create_app(config, backends, now=clock).test_client()

    first = app()
    alice, robot = offline(first, "alice", "alice-pw"), offline(first, "robot-a", ROBOT_TOKEN)
    resp = refresh_grant(first, alice)
    assert resp.status_code == 200 and claims(resp.json["access_token"])["sub"] == "alice"

    users = {k: v for k, v in base["users"].items() if k != "alice"}
    resp = refresh_grant(app(users=users), alice)
    assert resp.status_code == 400 and "gone or disabled" in resp.json["error_description"], "alice removed"
    users = {**base["users"], "alice": {"password_hash": hash_secret("new-pw", COST)}}
    resp = refresh_grant(app(users=users), alice)
    assert resp.status_code == 400 and "password or token changed" in resp.json["error_description"]
    revoked = app(refresh_tokens={"revoked": [claims(alice)["jti"]]})
    assert refresh_grant(revoked, alice).status_code == 400
    assert refresh_grant(revoked, robot).status_code == 200, "revoking one id leaves the others"
    clock.advance(3600)
    resp = refresh_grant(first, robot)
    assert resp.status_code == 400 and "gone or disabled" in resp.json["error_description"], "the robot expired"


def test_a_directory_account_refresh_rereads_it_and_stops_once_deleted(
    client: FlaskClient, directory: Directory
) -> None:
    token = offline(client, "zoe", "zoe-pw", scope="repository:team-a/app:push")
    directory.entries["zoe"] = ("zoe-pw", frozenset({"a-readers"}))
    resp = refresh_grant(client, token, scope="repository:team-a/app:pull,push")
    assert resp.json["scope"] == "repository:team-a/app:pull", "groups are read again on every refresh"
    del directory.entries["zoe"]
    assert refresh_grant(client, token).status_code == 400


def test_disabled_refresh_tokens_give_access_tokens_only(tmp_path: Path, clock: Clock) -> None:
    client = make_app(tmp_path, clock, None, refresh_tokens={"enabled": False}).test_client()
    resp = password_grant(client, "bob", "bob-pw", access_type="offline")
    assert resp.status_code == 200 and "refresh_token" not in resp.json


def test_a_locked_account_cannot_refresh_either(client: FlaskClient) -> None:
    token = offline(client)
    for i in range(5):
        password_grant(client, "bob", f"wrong-{i}")
    resp = refresh_grant(client, token)
    assert resp.status_code == 429 and resp.json["error"] == "slow_down"


def test_post_audit_lines_name_the_grant_client_and_refresh_id_and_no_secret(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        token = offline(client, scope="repository:team-a/app:pull")
        refresh_grant(client, token)
        password_grant(client, "bob", "hunter2-wrong")
    issued, refreshed, wrong = audit(caplog)
    assert issued["grant"] == "password" and issued["client_id"] == "containerd-client"
    assert issued["refresh_id"] == claims(token)["jti"] and issued["granted"] == ["repository:team-a/app:pull"]
    assert refreshed["grant"] == "refresh_token" and refreshed["account"] == "bob"
    assert refreshed["refresh_id"] == issued["refresh_id"] and refreshed["outcome"] == "granted"
    assert wrong["outcome"] == "unauthenticated" and wrong["reason"] == "wrong credentials"
    for secret in ("bob-pw", "hunter2-wrong", token, token.split(".")[2]):
        assert secret not in caplog.text


def test_refresh_token_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("refresh_tokens.lifetime_seconds")):
        parse_config(config_data(tmp_path, refresh_tokens={"lifetime_seconds": 60}), tmp_path)
    with pytest.raises(ConfigError, match="is not a refresh token id"):
        parse_config(config_data(tmp_path, refresh_tokens={"revoked": ["*"]}), tmp_path)


# --- one canonical identity per login -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("Alice", "alice"),
        ("  alice ", "alice"),
        ("ALICE", "alice"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # full-width letters
        ("al\u00adice", "alice"),  # soft hyphen
        ("ali\u200bce", "alice"),  # zero-width space
        ("Stra\u00dfe", "strasse"),
        ("j  doe", "j doe"),
        ("j\tdoe", "j doe"),
        ("\u212bngstr\u00f6m", "\u00e5ngstr\u00f6m"),  # the Angstrom sign is A-ring
    ],
)
def test_account_key_folds_what_the_directory_folds(spelling: str, key: str) -> None:
    assert account_key(spelling) == key


def test_changing_case_never_opens_a_fresh_counter(client: FlaskClient, directory: Directory) -> None:
    """The issue's probe: 8 wrong passwords for a directory account under changing case, then the
    right one under yet another spelling."""
    answers = [
        get_token(client, who=(name, f"guess-{i}")).status_code
        for i, name in enumerate(["zoe", "Zoe", "ZOE", " zoe", "zOe", "ZoE", "zoE ", "\uff5a\uff4f\uff45"])
    ]
    assert answers == [401] * 5 + [429] * 3
    assert get_token(client, who=("ZOE", "zoe-pw")).status_code == 429, "still locked under another spelling"
    assert get_token(client, who=("zoe", "zoe-pw")).status_code == 429


def test_the_token_and_the_audit_name_the_stored_account(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        resp = get_token(client, "repository:team-a/app:pull", who=("  ZOE", "zoe-pw"))
    assert resp.status_code == 200 and claims(resp.json["token"])["sub"] == "zoe"
    line = audit(caplog)[-1]
    assert line["account"] == "zoe" and line["login"] == "  ZOE"


def test_a_success_resets_the_counter_of_every_spelling(client: FlaskClient) -> None:
    for i in range(4):
        get_token(client, who=("Zoe", f"guess-{i}"))
    assert get_token(client, who=("zoe", "zoe-pw")).status_code == 200
    assert [get_token(client, who=("ZOE", f"again-{i}")).status_code for i in range(5)] == [401] * 5


def test_local_names_that_fold_together_are_refused(tmp_path: Path) -> None:
    users = {"alice": {"password_hash": hash_secret("x", COST)}, "Alice": {"password_hash": hash_secret("y", COST)}}
    with pytest.raises(ConfigError, match=re.escape("users.Alice: the same account name as users.alice")):
        parse_config(config_data(tmp_path, users=users), tmp_path)


def test_parallel_wrong_tries_through_the_app_stop_at_the_threshold(tmp_path: Path, clock: Clock) -> None:
    """24 clients guessing one directory account at once: at most 5 answers before 429."""
    app = make_app(tmp_path, clock, Directory(delay=0.05))
    statuses = in_parallel(24, lambda i: get_token(app.test_client(), who=("zoe", f"guess-{i}")).status_code)
    assert sorted(statuses) == [401] * 5 + [429] * 19


# --- the client address -------------------------------------------------------------------------------


def test_client_address_is_the_right_most_untrusted_hop() -> None:
    lb = ["127.0.0.2/32"]
    assert client_address("127.0.0.2", "127.0.0.1", lb) == "127.0.0.1"
    assert client_address("127.0.0.2", "6.6.6.6, 127.0.0.1", lb) == "127.0.0.1", "the client wrote the left"
    assert client_address("127.0.0.1", "6.6.6.6", lb) == "127.0.0.1", "only the LB's header counts"
    alb = ["10.0.0.0/16"]
    assert client_address("10.0.1.1", "6.6.6.6, 198.51.100.4", alb) == "198.51.100.4"
    assert client_address("10.0.1.1", "10.0.9.9, 10.0.3.3", alb) == "10.0.3.3", "all trusted: what our proxy saw"
    assert client_address("10.0.1.1", "junk, 10.0.3.3", alb) == "10.0.1.1", "a garbled hop: the peer"


def test_a_spoofed_forwarded_for_does_not_open_a_fresh_counter(tmp_path: Path, clock: Clock) -> None:
    client = make_app(tmp_path, clock, Directory(), trusted_proxies=["127.0.0.2/32"]).test_client()
    via_lb = {"REMOTE_ADDR": "127.0.0.2"}
    for i in range(5):
        spoof = {"X-Forwarded-For": f"203.0.113.{i}, 127.0.0.1"}
        resp = client.get(f"/auth?service={SERVICE}", headers={**basic("bob", f"g-{i}"), **spoof}, environ_base=via_lb)
        assert resp.status_code == 401
    resp = client.get(
        f"/auth?service={SERVICE}",
        headers={**basic("bob", "bob-pw"), "X-Forwarded-For": "198.51.100.7, 127.0.0.1"},
        environ_base=via_lb,
    )
    assert resp.status_code == 429
