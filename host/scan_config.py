"""The scanner's two configs (scanner/config.py reads them), rendered from plain values (issue 14).

Pure: plain values in, YAML text out, no Pulumi import. The fleet renders the events forwarder's config for
every registry host (`render_events_config`) and the scanning component the workers' (`render_worker_config`),
from resolved outputs inside one `apply`; the lab renders both with its own endpoints. Neither text holds a
secret: the bearer token and the robot's password are files written from Secrets Manager at boot, named here
by path. The keys are the shared contract of issue 14 (docs/scanning.md):

events (registry hosts):
    listen: 127.0.0.1:5004
    cert_file / key_file: the host certificate and the forwarder's copy of the host key
    token_file: the bearer the registry sends
    queue_url, region, endpoint_url (null on AWS), ignore_prefixes: ["mirror/"]
worker (scanner hosts):
    queue_url, region, endpoint_url, bucket, registry, ca_file, username, password_file, trivy,
    db_repository, findings_topic_arn, findings_threshold, visibility_timeout_seconds, cache_dir
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from host.contract import (
    HOST_CERT_FILE,
    SCAN_EVENTS_PORT,
    SCAN_EVENTS_TLS_KEY_FILE,
    SCAN_EVENTS_TOKEN_FILE,
    SCAN_IGNORED_PREFIXES,
)

SCAN_SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # scanner/report.py SEVERITIES
# The token service's robots the scanning deploys (infra/token_service.py): account names no stack may use.
SCANNER_ROBOT = "registry-scanner"  # pulls every repository, nothing else (the workers' Trivy)
MIRROR_ROBOT = "trivy-db-mirror"  # pushes mirror/trivy-db only (the database mirror job)
SCAN_ROBOTS = (SCANNER_ROBOT, MIRROR_ROBOT)
TRIVY_DB_REPOSITORY = "mirror/trivy-db"  # where the mirror job pushes the Trivy database (tag 2)
TRIVY_DB_TAG = "2"  # the database schema Trivy reads
_QUEUE_URL = re.compile(r"^https://sqs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/\d{12}/[A-Za-z0-9_-]{1,80}$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
_ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")


def db_repository(registry: str) -> str:
    """What Trivy's `--db-repository` names: the mirrored database in the registry itself."""
    return f"{registry}/{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}"


def _check(field: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{field} must be {what}; got {value!r}.")


def events_config(
    queue_url: str,
    region: str,
    ignore_prefixes: Sequence[str] = SCAN_IGNORED_PREFIXES,
    port: int = SCAN_EVENTS_PORT,
) -> dict[str, Any]:
    """The events forwarder's config on a registry host; ValueError naming a bad value."""
    _check(
        "events.queue_url", queue_url, _QUEUE_URL, "an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
    )
    _check("events.region", region, re.compile(r"^[a-z0-9-]+$"), "an AWS region name")
    return {
        "listen": f"127.0.0.1:{port}",
        "cert_file": HOST_CERT_FILE,
        "key_file": SCAN_EVENTS_TLS_KEY_FILE,
        "token_file": SCAN_EVENTS_TOKEN_FILE,
        "queue_url": queue_url,
        "region": region,
        "endpoint_url": None,
        "ignore_prefixes": list(ignore_prefixes),
    }


@dataclass(frozen=True)
class WorkerConfig:
    """The effective worker config: every value resolved (a worker's user-data carries its text)."""

    queue_url: str
    region: str
    bucket: str  # the registry bucket: reports under registry-fleet/scan-reports/
    registry: str  # host[:port] Trivy pulls from (the fleet's public name)
    username: str  # the scanner robot
    password_file: str  # the robot's token, written from Secrets Manager at boot
    trivy: str  # the installed Trivy binary
    findings_topic_arn: str
    findings_threshold: str
    visibility_timeout_seconds: int
    cache_dir: str
    ca_file: str | None = None  # None: the system's CAs (the registry's public ACM certificate)


def worker_config(cfg: WorkerConfig) -> dict[str, Any]:
    """The worker's config as a mapping (contract keys); ValueError naming a bad value."""
    _check("worker.queue_url", cfg.queue_url, _QUEUE_URL, "an SQS queue URL")
    _check("worker.bucket", cfg.bucket, _BUCKET, "an S3 bucket name")
    _check("worker.registry", cfg.registry, _REGISTRY, "a registry host[:port] such as registry.example.com")
    _check("worker.username", cfg.username, _ACCOUNT, "the scanner robot's account name")
    _check("worker.findings_topic_arn", cfg.findings_topic_arn, _TOPIC_ARN, "an SNS topic ARN")
    for field in ("password_file", "trivy", "cache_dir"):
        _check(f"worker.{field}", getattr(cfg, field), _PATH, "an absolute path")
    if cfg.ca_file is not None:
        _check("worker.ca_file", cfg.ca_file, _PATH, "an absolute path or None")
    if cfg.findings_threshold not in SCAN_SEVERITIES:
        raise ValueError(
            f"worker.findings_threshold must be one of {', '.join(SCAN_SEVERITIES)}; got {cfg.findings_threshold!r}."
        )
    if isinstance(cfg.visibility_timeout_seconds, bool) or not 60 <= cfg.visibility_timeout_seconds <= 43200:
        raise ValueError(
            f"worker.visibility_timeout_seconds must be 60..43200; got {cfg.visibility_timeout_seconds!r}."
        )
    return {
        "queue_url": cfg.queue_url,
        "region": cfg.region,
        "endpoint_url": None,
        "bucket": cfg.bucket,
        "registry": cfg.registry,
        "ca_file": cfg.ca_file,
        "username": cfg.username,
        "password_file": cfg.password_file,
        "trivy": cfg.trivy,
        "db_repository": db_repository(cfg.registry),
        "findings_topic_arn": cfg.findings_topic_arn,
        "findings_threshold": cfg.findings_threshold,
        "visibility_timeout_seconds": cfg.visibility_timeout_seconds,
        "cache_dir": cfg.cache_dir,
    }


def dump_config(data: dict[str, Any]) -> str:
    """A config mapping as the file's text (the lab changes its endpoints first)."""
    return yaml.safe_dump(data, sort_keys=False, width=1000)


def render_events_config(queue_url: str, region: str) -> str:
    return dump_config(events_config(queue_url, region))


def render_worker_config(cfg: WorkerConfig) -> str:
    return dump_config(worker_config(cfg))
