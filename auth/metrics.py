"""The token service's Prometheus metrics: what an on-call engineer looks at first.

Served at `GET /metrics` on the service's own port, answered only to a loopback peer that no proxy
forwarded (anything else gets 404): the host's CloudWatch agent scrapes it at
https://127.0.0.1:5002/metrics (host/cloudwatch_agent.py), the load balancer never reaches it (its
listener rule sends only `/auth` to the token service, and its address is not loopback).

gunicorn runs several worker processes, each counting on its own: prometheus_client's multiprocess
mode adds their values up. `python -m auth` (auth/serve.py) calls `prepare_multiprocess()` before
anything imports prometheus_client: a fresh private directory for the workers' value files
(PROMETHEUS_MULTIPROC_DIR), removed when the master exits; `worker_exited` (gunicorn's child_exit
hook) drops a dead worker's gauges. Counters of dead workers stay in the sums, as counters must. An app
built in-process (the tests) counts in its own registry.

    registry_fleet_token_requests_total{grant, outcome}          every decision, as its audit line says it
    registry_fleet_token_request_duration_seconds{outcome}       histogram, from the request to the decision
    registry_fleet_token_credential_cache_total{result}          hit | miss: one per login checked
    registry_fleet_token_lockout_local_total                     logins whose lockout state this process
                                                                 alone decided: DynamoDB could not be reached
    registry_fleet_token_lockout_store_errors_total              DynamoDB calls that failed
    registry_fleet_token_lockout_shared                          1: counters shared through DynamoDB; 0: this
                                                                 process's only (no table, or unreachable)
    registry_fleet_token_directory_errors_total                  the directory (LDAP/AD) could not answer
    registry_fleet_token_signing_cert_expiry_timestamp_seconds   when the token signing certificate expires
                                                                 (after that the registry refuses every token)

`grant` is basic | password | refresh_token | unknown; `outcome` granted | denied | unauthenticated |
locked | bad_request | unavailable (auth/server.py). Every label pair exists from the start at 0, so a
scraper that turns counters into deltas (the CloudWatch agent) has a baseline before the first event.
The CloudWatch agent drops histograms: in CloudWatch the token service's p99 is the load balancer's
TargetResponseTime on its target group; the histogram is for a scrape by hand.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import sys
import tempfile
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "registry_fleet_token"
GRANTS = ("basic", "password", "refresh_token", "unknown")
OUTCOMES = ("granted", "denied", "unauthenticated", "locked", "bad_request", "unavailable")
# Seconds: a cached login takes about a millisecond of service time, a bcrypt check tens, a directory bind more.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The names a scrape shows (counters with their _total): the host's CloudWatch agent config selects them.
REQUESTS = f"{PREFIX}_requests_total"
DURATION = f"{PREFIX}_request_duration_seconds"
CACHE = f"{PREFIX}_credential_cache_total"
LOCKOUT_LOCAL = f"{PREFIX}_lockout_local_total"
LOCKOUT_STORE_ERRORS = f"{PREFIX}_lockout_store_errors_total"
LOCKOUT_SHARED = f"{PREFIX}_lockout_shared"
DIRECTORY_ERRORS = f"{PREFIX}_directory_errors_total"
SIGNING_CERT_EXPIRY = f"{PREFIX}_signing_cert_expiry_timestamp_seconds"
METRIC_NAMES = (
    REQUESTS,
    DURATION,
    CACHE,
    LOCKOUT_LOCAL,
    LOCKOUT_STORE_ERRORS,
    LOCKOUT_SHARED,
    DIRECTORY_ERRORS,
    SIGNING_CERT_EXPIRY,
)


def _counter_name(exposed: str) -> str:
    return exposed.removesuffix("_total")


class TokenMetrics:
    """The metrics of one app; in multiprocess mode their values go to the shared directory."""

    def __init__(self) -> None:
        # Imported here, not at the top: in the service, only after prepare_multiprocess() set the directory.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            _counter_name(REQUESTS), "Token requests decided, by grant and outcome", ["grant", "outcome"], registry=r
        )
        self._duration = Histogram(
            DURATION, "Seconds from the request to its decision", ["outcome"], buckets=LATENCY_BUCKETS, registry=r
        )
        self._cache = Counter(
            _counter_name(CACHE), "Logins answered from the verified-credential cache (hit) or checked", ["result"],
            registry=r,
        )  # fmt: skip
        self._lockout_local = Counter(
            _counter_name(LOCKOUT_LOCAL),
            "Logins whose lockout state this process alone decided (DynamoDB could not be reached)",
            registry=r,
        )
        self._store_errors = Counter(
            _counter_name(LOCKOUT_STORE_ERRORS), "Lockout table (DynamoDB) calls that failed", registry=r
        )
        self._shared = Gauge(
            LOCKOUT_SHARED,
            "1 while the lockout counters are shared through DynamoDB, 0 while they are this process's only",
            multiprocess_mode="livemin",
            registry=r,
        )
        self._directory_errors = Counter(
            _counter_name(DIRECTORY_ERRORS), "Logins the directory (LDAP/AD) could not answer", registry=r
        )
        self._cert_expiry = Gauge(
            SIGNING_CERT_EXPIRY,
            "Unix time at which the token signing certificate expires",
            multiprocess_mode="livemin",
            registry=r,
        )
        # Every child made once (labels() on each request costs more than the increment).
        self._decisions = {(g, o): self._requests.labels(g, o) for g in GRANTS for o in OUTCOMES}
        self._durations = {o: self._duration.labels(o) for o in OUTCOMES}
        self._lookups = {hit: self._cache.labels("hit" if hit else "miss") for hit in (True, False)}

    def decided(self, grant: str, outcome: str, seconds: float) -> None:
        self._decisions[(grant if grant in GRANTS else "unknown", outcome)].inc()
        self._durations[outcome].observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self._lookups[hit].inc()

    def lockout_local(self) -> None:
        self._lockout_local.inc()

    def lockout_store_error(self) -> None:
        self._store_errors.inc()

    def lockout_shared(self, shared: bool) -> None:
        self._shared.set(1 if shared else 0)

    def directory_error(self) -> None:
        self._directory_errors.inc()

    def signing_cert_expires(self, timestamp: float) -> None:
        self._cert_expiry.set(timestamp)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type: every worker's values in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def scrape_allowed(peer: str | None, forwarded: bool) -> bool:
    """Only a loopback peer that no proxy forwarded: the host's own agent, never the load balancer."""
    if forwarded or not peer:
        return False
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def prepare_multiprocess() -> str:
    """A fresh private directory for the workers' values, named in the environment before prometheus_client is
    imported (it picks its value store at import), removed when this process (the gunicorn master) exits."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    directory = tempfile.mkdtemp(prefix="registry-token-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # workers are forked from the master and run its atexit hooks too
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    return directory


def worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges leave the sums."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
