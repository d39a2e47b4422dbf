"""Two token-service processes (`python -m auth`, gunicorn, TLS) sharing one DynamoDB table: moto's
server on loopback, as the fleet's hosts share the stack's table (auth/shared_lockout.py).

Failures against one count on the other; a repeated wrong secret counts once across both; one
address failing against many accounts is slowed on both; with DynamoDB stopped mid-run both keep
issuing tokens to good credentials and still slow a guesser with their own counters, and say so in
their log and /healthz. A local user's new password (a config reload) takes effect at once.

Each service trusts 127.0.0.1 as its load balancer, so a test names its client in X-Forwarded-For
(one address per test: the tests share the table).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth import metrics
from auth.local import hash_secret
from auth.tokens import create_signing_pair
from lab import supervisor
from lab.pki import LabPki, create_pki
from tests.helpers.waiting import wait_for

MOTO = Path(sys.executable).with_name("moto_server")
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "eu-west-1"
TABLE = "registry-fleet-test-lockout"
SERVICE = "registry.shared.test"
COST = 4
MAX_ACCOUNTS = 6
USERS = {f"user{i}": f"user{i}-Correct-Horse" for i in range(12)}


@dataclass
class Moto:
    url: str
    service: supervisor.Service


@dataclass
class TokenService:
    name: str
    port: int
    service: supervisor.Service
    config: Path
    ca: Path

    def request(self, user: str, password: str, client: str) -> tuple[int, dict[str, Any]]:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.port}/auth?service={SERVICE}&scope=repository:team-a/app:pull",
            headers={"Authorization": f"Basic {auth}", "X-Forwarded-For": client},
        )
        return _open(req, self.ca)

    def health(self) -> dict[str, Any]:
        return _open(urllib.request.Request(f"https://127.0.0.1:{self.port}/healthz"), self.ca)[1]

    def log(self) -> str:
        return Path(self.service.log).read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics (auth/metrics.py), read from loopback as the host's agent does."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/metrics", context=context, timeout=30) as resp:
            text = resp.read().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _open(req: urllib.request.Request, ca: Path) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def start_moto(work: Path) -> Moto:
    port = supervisor.free_port()
    svc = supervisor.Service(
        "moto",
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        str(work / "moto.log"),
        {"http": port},
        env=supervisor.clean_env({**CREDS, "AWS_DEFAULT_REGION": REGION}),
    )
    supervisor.start(svc, cwd=work)
    supervisor.wait_ready(svc, lambda: supervisor.port_open(port), timeout=30)
    return Moto(f"http://127.0.0.1:{port}", svc)


def dynamodb(url: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return session.client("dynamodb", endpoint_url=url)


def create_table(url: str) -> None:
    """The table as components/access.py declares it: a string key `pk`, TTL on `expires_at`."""
    client = dynamodb(url)
    client.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


def write_config(path: Path, work: Path, moto_url: str, passwords: dict[str, str]) -> None:
    key, cert = create_signing_pair(work / "signing")  # one key for both: they share it on a fleet
    config = {
        "issuer": "registry-fleet-test",
        "service": SERVICE,
        "signing_key": str(key),
        "signing_cert": str(cert),
        "bcrypt_min_cost": COST,
        "users": {name: {"password_hash": hash_secret(pw, COST)} for name, pw in passwords.items()},
        "policy": {"teams": {"team-a": {"namespaces": ["team-a"], "members": dict.fromkeys(passwords, "reader")}}},
        "trusted_proxies": ["127.0.0.1/32"],
        "lockout": {
            "table": TABLE,
            "region": REGION,
            "endpoint_url": moto_url,
            "max_accounts_per_client": MAX_ACCOUNTS,
        },
    }
    path.write_text(json.dumps(config))


def start_service(name: str, work: Path, pki: LabPki, config: Path) -> TokenService:
    port = supervisor.free_port()
    svc = supervisor.Service(
        name,
        [
            sys.executable, "-m", "auth", "--config", str(config), "--bind", f"127.0.0.1:{port}",
            "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key), "--workers", "1",
        ],
        str(work / f"{name}.log"),
        {"https": port},
        env=supervisor.clean_env({**CREDS, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}),
    )  # fmt: skip
    supervisor.start(svc, cwd=work)
    supervisor.wait_ready(svc, lambda: supervisor.port_open(port), timeout=60)
    return TokenService(name, port, svc, config, pki.ca_cert)


@dataclass
class Fleet:
    moto: Moto
    a: TokenService
    b: TokenService
    work: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    assert MOTO.exists(), f"moto_server not found next to {sys.executable}"
    work = tmp_path_factory.mktemp("shared-lockout")
    pki = create_pki(work / "pki", ["127.0.0.1", "localhost"])
    started: list[supervisor.Service] = []
    try:
        moto = start_moto(work)
        started.append(moto.service)
        create_table(moto.url)
        config = work / "auth.json"
        write_config(config, work, moto.url, USERS)
        a = start_service("auth-a", work, pki, config)
        started.append(a.service)
        config_b = work / "auth-b.json"
        config_b.write_text(config.read_text())
        b = start_service("auth-b", work, pki, config_b)
        started.append(b.service)
        yield Fleet(moto, a, b, work)
    finally:
        for svc in reversed(started):
            supervisor.stop(svc)


def test_failures_against_one_service_count_on_the_other(fleet: Fleet) -> None:
    client = "192.0.2.10"
    assert fleet.a.health()["lockout"] == {"store": "dynamodb", "table": TABLE, "shared": True, "errors": 0}
    assert fleet.a.metrics()[metrics.LOCKOUT_SHARED] == 1
    codes = [fleet.a.request("user0", f"guess-{i}", client)[0] for i in range(3)]
    codes += [fleet.b.request("user0", f"guess-{i + 3}", client)[0] for i in range(2)]
    assert codes == [401] * 5, "the 5th failure locks; it is still answered"
    status, body = fleet.a.request("user0", USERS["user0"], client)
    assert status == 429, f"B's failures counted on A: {body}"
    assert fleet.b.request("user0", USERS["user0"], client)[0] == 429
    assert fleet.a.request("user0", USERS["user0"], "192.0.2.11")[0] == 200, "another address is another pair"


def test_a_repeated_wrong_secret_counts_once_across_services(fleet: Fleet) -> None:
    client = "192.0.2.20"
    for service in (fleet.a, fleet.b, fleet.a, fleet.b):
        assert service.request("user1", "the-same-typo", client)[0] == 401
    for i in range(3):
        assert fleet.b.request("user1", f"new-guess-{i}", client)[0] == 401
    assert fleet.a.request("user1", USERS["user1"], client)[0] == 200, "4 counted failures: not locked"
    for i in range(5):
        fleet.a.request("user1", f"guess-{i}", client)
    assert fleet.b.request("user1", USERS["user1"], client)[0] == 429


def test_one_address_failing_against_many_accounts_is_slowed_everywhere(fleet: Fleet) -> None:
    client = "192.0.2.30"
    codes = []
    for i in range(MAX_ACCOUNTS):  # one guess per account, alternating services: under every pair's threshold
        service = fleet.a if i % 2 else fleet.b
        codes.append(service.request(f"user{i}", "Summer2026!", client)[0])
    assert codes == [401] * MAX_ACCOUNTS
    for service in (fleet.a, fleet.b):
        status, body = service.request("user11", USERS["user11"], client)
        assert status == 429 and "from this address" in json.dumps(body), body
    assert fleet.a.request("user11", USERS["user11"], "192.0.2.31")[0] == 200


def test_a_local_users_new_password_takes_effect_at_once_on_reload(fleet: Fleet) -> None:
    client = "192.0.2.40"
    assert fleet.b.request("user10", USERS["user10"], client)[0] == 200
    assert fleet.b.request("user10", USERS["user10"], client)[0] == 200  # served from the cache now
    new = "user10-New-Horse-2"
    write_config(fleet.b.config, fleet.work, fleet.moto.url, {**USERS, "user10": new})
    exited = fleet.b.log().count("Worker exiting")
    os.kill(fleet.b.service.pid, signal.SIGHUP)  # what `systemctl reload` sends
    # gunicorn starts a new worker (a new app, an empty cache), then stops the old one.
    wait_for(lambda: fleet.b.log().count("Worker exiting") > exited, timeout=30, what="the old worker's exit")
    assert fleet.b.health()["credential_cache"]["entries"] == 0
    assert fleet.b.request("user10", USERS["user10"], client)[0] == 401, "the old password is gone at once"
    assert fleet.b.request("user10", new, client)[0] == 200


def test_deleting_the_item_unlocks_the_pair_on_every_service(fleet: Fleet) -> None:
    """What docs/operating.md tells an operator to do for a locked-out colleague."""
    client = "192.0.2.45"
    for i in range(5):
        fleet.a.request("user9", f"guess-{i}", client)
    assert fleet.b.request("user9", USERS["user9"], client)[0] == 429
    dynamodb(fleet.moto.url).delete_item(TableName=TABLE, Key={"pk": {"S": f"pair|user9|{client}"}})
    for service in (fleet.a, fleet.b):
        assert service.request("user9", USERS["user9"], client)[0] == 200


def test_with_dynamodb_stopped_good_logins_go_on_and_a_guesser_is_still_slowed(fleet: Fleet) -> None:
    """Runs last: it stops the table's server."""
    client = "192.0.2.50"
    supervisor.stop(fleet.moto.service)
    for service in (fleet.a, fleet.b):
        for _ in range(3):
            assert service.request("user2", USERS["user2"], client)[0] == 200, "tokens go on"
    codes = [fleet.a.request("user3", f"guess-{i}", client)[0] for i in range(6)]
    assert codes == [401] * 5 + [429], "local counters still lock the guesser"
    assert fleet.a.request("user3", USERS["user3"], client)[0] == 429
    for service in (fleet.a, fleet.b):
        lockout = service.health()["lockout"]
        assert lockout["shared"] is False and lockout["errors"] >= 1 and "local_since" in lockout, lockout
        assert "cannot be reached" in service.log() and "counting failed logins in this process only" in service.log()
        seen = service.metrics()  # what the hosts' CloudWatch agent sends, and the stack's alarm watches
        assert seen[metrics.LOCKOUT_SHARED] == 0, seen
        assert seen[metrics.LOCKOUT_STORE_ERRORS] >= 1 and seen[metrics.LOCKOUT_LOCAL] >= 3, seen
