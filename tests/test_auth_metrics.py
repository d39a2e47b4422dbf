"""The token service's metrics in process (auth/metrics.py): what each decision counts, who may read them.

The same metrics summed over gunicorn's workers and scraped the way the hosts' CloudWatch agent scrapes
them: tests/test_lab_metrics.py. Their lockout fallback with DynamoDB stopped: tests/test_auth_shared_lockout.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from auth import metrics as m
from auth.shared_lockout import SharedLockout, StoreUnavailable
from tests.helpers.token_service import PASSWORDS, Clock, Directory, get_token, make_app


def scrape(app: Flask, **environ: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1", **environ})
    assert resp.status_code == 200, resp.data
    assert resp.content_type.startswith("text/plain"), resp.content_type
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.get_data(as_text=True))
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path, Clock(), directory=Directory())


def test_every_metric_is_exposed_from_the_start_with_every_label_pair(app: Flask) -> None:
    samples = scrape(app)
    names = {name for name, _ in samples}
    for metric in m.METRIC_NAMES:
        exposed = f"{metric}_count" if metric == m.DURATION else metric
        assert exposed in names, f"{metric} is not exposed"
    for grant in m.GRANTS:
        for outcome in m.OUTCOMES:
            assert value(samples, m.REQUESTS, grant=grant, outcome=outcome) == 0
    assert value(samples, m.LOCKOUT_SHARED) == 0, "no lockout table: the counters are this process's only"
    assert value(samples, m.SIGNING_CERT_EXPIRY) > Clock().t, "the signing certificate's expiry, in the future"


def test_decisions_are_counted_by_grant_and_outcome_with_their_time(app: Flask) -> None:
    client = app.test_client()
    assert get_token(client, "repository:team-a/app:pull", who=("bob", PASSWORDS["bob"])).status_code == 200
    assert get_token(client, "repository:team-a/app:pull", who=("bob", PASSWORDS["bob"])).status_code == 200
    assert get_token(client, "repository:team-a/app:pull", who=("bob", "wrong")).status_code == 401
    assert client.get("/auth?service=other").status_code == 400
    samples = scrape(app)
    assert value(samples, m.REQUESTS, grant="basic", outcome="granted") == 2
    assert value(samples, m.REQUESTS, grant="basic", outcome="unauthenticated") == 1
    assert value(samples, m.REQUESTS, grant="basic", outcome="bad_request") == 1
    assert value(samples, f"{m.DURATION}_count", outcome="granted") == 2
    assert value(samples, f"{m.DURATION}_sum", outcome="granted") > 0
    # One lookup per login checked: the first bob and the wrong password went to bcrypt, the second bob did not.
    assert value(samples, m.CACHE, result="hit") == 1
    assert value(samples, m.CACHE, result="miss") == 2


def test_a_directory_that_cannot_answer_is_counted(tmp_path: Path) -> None:
    app = make_app(tmp_path, Clock(), directory=Directory(down=True))
    resp = get_token(app.test_client(), "repository:team-a/app:pull", who=("zoe", "zoe-pw"))
    assert resp.status_code == 503
    samples = scrape(app)
    assert value(samples, m.DIRECTORY_ERRORS) == 1
    assert value(samples, m.REQUESTS, grant="basic", outcome="unavailable") == 1


@pytest.mark.parametrize(
    ("peer", "headers"),
    [
        ("10.0.1.20", {}),
        ("192.0.2.7", {}),
        ("127.0.0.2", {"X-Forwarded-For": "192.0.2.7"}),
        ("::1", {"X-Forwarded-For": "10.0.0.1"}),
    ],
)
def test_only_a_loopback_peer_that_no_proxy_forwarded_reads_them(
    app: Flask, peer: str, headers: dict[str, str]
) -> None:
    resp = app.test_client().get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": peer})
    assert resp.status_code == 404, f"{peer} {headers}: {resp.status_code}"
    assert b"registry_fleet" not in resp.data


def test_a_loopback_peer_reads_them_over_ipv6_too(app: Flask) -> None:
    assert m.LOCKOUT_SHARED in {name for name, _ in scrape(app, REMOTE_ADDR="::1")}


class DownStore:
    """A lockout table that never answers."""

    table = "registry-fleet-test-lockout"
    calls = 0

    def get_many(self, keys: list[str]) -> Any:
        self.calls += 1
        raise StoreUnavailable("batch_get_item: could not connect")

    def get(self, key: str) -> Any:
        raise StoreUnavailable("get_item: could not connect")

    def put(self, item: Any, version: int) -> bool:
        raise StoreUnavailable("put_item: could not connect")

    def delete(self, key: str) -> None:
        raise StoreUnavailable("delete_item: could not connect")


def test_the_lockout_falling_back_to_local_counters_is_counted() -> None:
    metrics = m.TokenMetrics()
    clock = Clock()
    lockout = SharedLockout(DownStore(), b"k" * 32, clock=clock, metrics=metrics, now=clock)  # type: ignore[arg-type]
    assert metrics_value(metrics, m.LOCKOUT_SHARED) == 1, "a table: shared until it fails"
    with lockout.attempt("alice", "192.0.2.1") as attempt:
        attempt.success()
    with lockout.attempt("alice", "192.0.2.1") as attempt:  # within RETRY_SECONDS: not asked again
        attempt.success()
    assert metrics_value(metrics, m.LOCKOUT_SHARED) == 0
    assert metrics_value(metrics, m.LOCKOUT_STORE_ERRORS) == 1
    assert metrics_value(metrics, m.LOCKOUT_LOCAL) == 2, "both logins were decided by this process alone"


def metrics_value(metrics: m.TokenMetrics, name: str) -> float:
    text = metrics.exposition()[0].decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_the_multiprocess_directory_must_be_set_before_prometheus_client_is_imported() -> None:
    with pytest.raises(RuntimeError, match="imported before"):
        m.prepare_multiprocess()  # this test process imported it above
