"""The scanner worker: scan messages from the queue in, reports in the registry's bucket out.

`python -m scanner worker --config FILE` runs on scanner hosts (never on registry hosts). It takes one message
at a time (the others stay on the queue for other workers) and:

- `{"kind": "scan", "repository": R, "digest": D}`:
  1. makes sure its Trivy database is the mirror's newest (`db_repository`'s manifest digest, looked at most
     every `db_check_seconds`; a new one is downloaded into a fresh cache, scanner/trivy.py);
  2. reads the manifest of R@D through the registry with the scanner robot (a digest the registry does not
     have is a failure: the message is retried, then dead-lettered);
  3. if the report of D for this database (same UpdatedAt) is already stored, uses it (idempotent: a message
     delivered twice, or a rescan with the same database, writes nothing); otherwise runs Trivy on R@D and
     writes the dated report, then `latest.json` (scanner/report.py keys, in `bucket`) unless latest.json
     already holds a scan with a newer database;
  4. publishes a summary to `findings_topic_arn` when the report's highest severity is at least
     `findings_threshold` (again on a redelivered message: a notification may repeat, never be lost);
  5. deletes the message, last.
  While a scan runs, a heartbeat keeps the message invisible (ChangeMessageVisibility every third of
  `visibility_timeout_seconds`). A worker killed mid-scan stops the heartbeat: the message comes back after
  its visibility timeout and another (or the restarted) worker scans it.
- `{"kind": "rescan-all"}` (the nightly schedule): refreshes the database, lists every tagged digest from
  the bucket's tag links (`docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link`: no
  catalog right needed), skipping `ignore_prefixes` and cosign attachment tags, and queues one scan message per
  digest (the first repository holding it, in name order). A digest whose report already used the newest
  database is scanned again only if the database changed: that is what finds CVEs published after the push.
- Anything else (not JSON, unknown kind, bad digest), or a scan that fails: the message is not deleted; it
  comes back after `retry_delay_seconds`, and after the queue's maxReceiveCount SQS moves it to the
  dead-letter queue (whose alarm someone answers). The worker itself never stops for a bad message.

A multi-arch index: its report is the union of its platform manifests' findings (each `linux/*` platform
manifest scanned on its own, attestation manifests `unknown/unknown` skipped), stored under the index's
digest; each platform manifest's own report is stored under its digest too (a client pulling
`repo@<platform digest>` gets the same verdict). An index with no platform manifest fails (dead-lettered):
an empty report would read as clean.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanner.config import WorkerConfig, read_secret
from scanner.events import COSIGN_TAG, send_scans
from scanner.report import (
    Report,
    ReportError,
    RescanAllMessage,
    ScanMessage,
    latest_key,
    parse_message,
    parse_report,
    report_key,
    severity_rank,
)
from scanner.trivy import DbMetadata, Trivy, TrivyError, build_report, union
from signing.registry import NotFound, RegistryClient, RegistryError, Transport

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFESTS = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, *IMAGE_MANIFESTS))
REPOSITORIES_PREFIX = "docker/registry/v2/repositories/"
DB_DIGEST_FILE = "db-digest"  # in the cache: the mirror manifest digest of the database in place


class ScanFailed(Exception):  # noqa: N818 (reads as a sentence: raise ScanFailed)
    """This message cannot be handled now; it is retried, then dead-lettered. The message says why."""


@dataclass(frozen=True)
class Outcome:
    """What became of one message (for logs and tests)."""

    deleted: bool
    detail: str
    written: int = 0  # reports written (dated + latest count as one each)


class Heartbeat:
    """Keeps one message invisible while its scan runs."""

    def __init__(self, sqs: Any, queue_url: str, receipt: str, seconds: int, log: Callable[[str], None]) -> None:
        self.sqs, self.queue_url, self.receipt, self.seconds, self.log = sqs, queue_url, receipt, seconds, log
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(max(1.0, self.seconds / 3)):
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=self.receipt, VisibilityTimeout=self.seconds
                )
            except Exception as err:  # a missed beat: at worst the message is handled twice, harmlessly
                self.log(f"heartbeat failed: {type(err).__name__}: {str(err)[:200]}")

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class ReportStore:
    """Reports in the registry's bucket, under scanner/report.py's keys."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket

    def get(self, key: str) -> Report | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        try:
            return parse_report(body, f"s3://{self.bucket}/{key}")
        except ReportError:
            return None  # unreadable: scanned again and overwritten

    def put(self, key: str, report: Report) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=report.to_json(), ContentType="application/json")


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        sqs: Any,
        s3: Any,
        sns: Any,
        trivy: Trivy,
        registry: RegistryClient,
        log: Callable[[str], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config, self.sqs, self.sns, self.trivy, self.registry, self.log, self.now = (
            config, sqs, sns, trivy, registry, log, now,
        )  # fmt: skip
        self.s3 = s3
        config.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = ReportStore(s3, config.bucket)
        self.scanner = trivy.version()
        self.db: DbMetadata | None = trivy.db_metadata()
        self.db_checked = 0.0
        self.stopping = threading.Event()
        self.current_trivy: Any = None  # the running Trivy process (tests and shutdown)

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            db = self.ensure_db()
            database = f"database of {db.updated_at:%Y-%m-%dT%H:%M:%SZ}"
        except ScanFailed as err:  # the registry may be starting too: scans retry until it answers
            database = f"no database yet ({err})"
        self.log(f"ready: {self.scanner}, {database}, queue {self.config.queue_url}")
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception as err:  # SQS unreachable, or a bug: log, wait, go on
                self.log(f"poll failed: {type(err).__name__}: {str(err)[:300]}")
                self.stopping.wait(5)

    def poll_once(self) -> Outcome | None:
        answer = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.config.wait_seconds,
            VisibilityTimeout=self.config.visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = answer.get("Messages", [])
        if not messages:
            return None
        return self.handle(messages[0])

    def handle(self, message: dict[str, Any]) -> Outcome:
        receipt = message["ReceiptHandle"]
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        started = time.monotonic()
        try:
            parsed = parse_message(message.get("Body", ""))
        except ReportError as err:
            return self._retry(receipt, f"poison message (receive {receives}): {err}")
        try:
            with Heartbeat(self.sqs, self.config.queue_url, receipt, self.config.visibility_timeout_seconds, self.log):
                if isinstance(parsed, RescanAllMessage):
                    outcome = self.rescan_all()
                else:
                    outcome = self.scan(parsed, redelivered=receives > 1)
        except ScanFailed as err:
            return self._retry(receipt, f"failed (receive {receives}): {err}")
        except Exception as err:  # S3 or SNS failing, or a bug: the message is retried, the worker goes on
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()[:500]
            return self._retry(receipt, f"failed (receive {receives}): {detail}")
        self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
        self.log(f"{outcome.detail} ({time.monotonic() - started:.1f} s); message deleted")
        return outcome

    def _retry(self, receipt: str, detail: str) -> Outcome:
        self.log(f"{detail}; back in {self.config.retry_delay_seconds} s (the dead-letter queue after the last try)")
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.config.queue_url, ReceiptHandle=receipt, VisibilityTimeout=self.config.retry_delay_seconds
            )
        except Exception as err:  # it comes back after its visibility timeout instead
            self.log(f"could not shorten its visibility: {type(err).__name__}")
        return Outcome(False, detail)

    # --- the database -------------------------------------------------------------------------------

    def ensure_db(self, force: bool = False) -> DbMetadata:
        """The database to scan with: the mirror's newest, checked at most every db_check_seconds."""
        due = force or self.db is None or time.monotonic() - self.db_checked >= self.config.db_check_seconds
        if not due and self.db is not None:
            return self.db
        digest_file = self.config.cache_dir / DB_DIGEST_FILE
        try:
            manifest = self.registry.get_manifest(
                self.config.db_repository_name, self.config.db_repository_tag, accept=", ".join(IMAGE_MANIFESTS)
            )
        except RegistryError as err:
            if self.db is not None:
                self.log(f"database check failed ({err}); scanning with the database of {self.db.updated_at}")
                return self.db
            raise ScanFailed(f"no vulnerability database: {self.config.db_repository}: {err}") from None
        self.db_checked = time.monotonic()
        known = digest_file.read_text().strip() if digest_file.exists() else ""
        if self.db is None or known != manifest.digest:
            try:
                self.db = self.trivy.download_db(self.config.db_repository)
            except TrivyError as err:
                if self.db is not None:
                    self.log(f"database download failed ({err}); scanning with the database of {self.db.updated_at}")
                    return self.db
                raise ScanFailed(str(err)) from None
            digest_file.write_text(manifest.digest)
            self.log(f"database {manifest.digest} in place, updated at {self.db.updated_at:%Y-%m-%dT%H:%M:%SZ}")
        return self.db

    # --- one scan -----------------------------------------------------------------------------------

    def scan(self, message: ScanMessage, redelivered: bool = False) -> Outcome:
        db = self.ensure_db()
        repository, digest = message.repository, message.digest
        try:
            manifest = self.registry.get_manifest(repository, digest, accept=ACCEPT)
        except NotFound:
            raise ScanFailed(f"{repository}@{digest}: no such manifest in the registry") from None
        except RegistryError as err:
            raise ScanFailed(f"{repository}@{digest}: {err}") from None
        written = 0
        if manifest.media_type in (OCI_INDEX, DOCKER_LIST):
            children = platform_manifests(manifest.body)
            if not children:
                raise ScanFailed(f"{repository}@{digest}: an index without a platform image manifest")
            reports = []
            for child in children:
                report, wrote = self._report(repository, child, db, None)
                reports.append(report)
                written += wrote
            findings = union(r.findings for r in reports)
            report, wrote = self._report(repository, digest, db, findings)
        elif manifest.media_type in IMAGE_MANIFESTS:
            report, wrote = self._report(repository, digest, db, None)
        else:
            raise ScanFailed(f"{repository}@{digest}: media type {manifest.media_type!r} is not an image")
        written += wrote
        if wrote or redelivered:
            self.publish(report)
        state = "written" if wrote else "already stored"
        detail = f"scanned {repository}@{digest}: {len(report.findings)} findings, highest {report.highest_severity}"
        return Outcome(True, f"{detail}; report {state}", written)

    def _report(
        self, repository: str, digest: str, db: DbMetadata, findings: tuple[Any, ...] | None
    ) -> tuple[Report, int]:
        """The stored report of `digest` for `db`, or a new one (scanned with Trivy unless `findings` are given:
        an index's union), written dated then latest. (report, reports written: 0 or 1)."""
        dated = report_key(digest, db.updated_at.strftime("%Y-%m-%d"))
        existing = self.store.get(dated)
        if existing is not None and existing.database_updated_at == db.updated_at:
            latest = self.store.get(latest_key(digest))
            if latest is None or latest.database_updated_at < existing.database_updated_at:
                self.store.put(latest_key(digest), existing)  # a worker stopped between the two writes
            return existing, 0
        if findings is None:
            image = f"{self.config.registry}/{repository}@{digest}"
            try:
                findings = self.trivy.scan(image, on_start=self._started)
            except TrivyError as err:
                raise ScanFailed(str(err)) from None
            finally:
                self.current_trivy = None
        report = build_report(digest, repository, self.now(), db, self.scanner, findings)
        self.store.put(dated, report)
        latest = self.store.get(latest_key(digest))
        # Never back: a worker that has not seen the newest database yet leaves a newer latest.json alone.
        if latest is None or latest.database_updated_at <= report.database_updated_at:
            self.store.put(latest_key(digest), report)
        return report, 1

    def _started(self, proc: Any) -> None:
        self.current_trivy = proc

    def publish(self, report: Report) -> None:
        if self.config.findings_topic_arn is None:
            return
        threshold = severity_rank(self.config.findings_threshold)
        if severity_rank(report.highest_severity) < threshold:
            return
        ids = sorted({f.id for f in report.findings if severity_rank(f.severity) >= threshold})
        summary = {
            "digest": report.digest,
            "repository": report.repository,
            "highestSeverity": report.highest_severity,
            "vulnerabilities": ids[:20],
            "count": len(ids),
            "databaseUpdatedAt": report.database_updated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "report": f"s3://{self.config.bucket}/{latest_key(report.digest)}",
        }
        subject = f"registry-fleet scan: {report.highest_severity} in {report.repository}"[:100]
        self.sns.publish(TopicArn=self.config.findings_topic_arn, Subject=subject, Message=json.dumps(summary))

    # --- rescan-all ---------------------------------------------------------------------------------

    def rescan_all(self) -> Outcome:
        self.ensure_db(force=True)
        seen: dict[str, str] = {}
        for repository, tag, digest in tagged_digests(self.s3, self.config.bucket):
            if COSIGN_TAG.match(tag) or any(repository.startswith(p) for p in self.config.ignore_prefixes):
                continue
            seen.setdefault(digest, repository)
        scans = sorted(((r, d) for d, r in seen.items()), key=lambda p: (p[0], p[1]))
        failed = send_scans(self.sqs, self.config.queue_url, scans)
        if failed:
            raise ScanFailed(f"rescan-all: the queue refused {len(failed)} of {len(scans)} messages")
        return Outcome(True, f"rescan-all: {len(scans)} digests queued")


def platform_manifests(index: bytes) -> list[str]:
    """The digests of an index's platform image manifests (attestations `unknown/unknown` left out)."""
    try:
        doc = json.loads(index)
        entries = doc["manifests"]
    except (ValueError, KeyError, TypeError):
        raise ScanFailed("an index that is not valid JSON with `manifests`") from None
    digests = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("mediaType") not in IMAGE_MANIFESTS:
            continue
        platform = entry.get("platform") or {}
        annotations = entry.get("annotations") or {}
        if platform.get("os") == "unknown" or "vnd.docker.reference.type" in annotations:
            continue
        digest = entry.get("digest")
        if isinstance(digest, str) and digest not in digests:
            digests.append(digest)
    return digests


def _common_prefixes(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for entry in page.get("CommonPrefixes", []):
            yield str(entry["Prefix"])


def tagged_digests(s3: Any, bucket: str) -> Iterator[tuple[str, str, str]]:
    """(repository, tag, digest) of every tag in the registry's storage, walking the repositories' folders
    (`_layers`, `_uploads` and revisions are never listed)."""
    stack = [REPOSITORIES_PREFIX]
    while stack:
        prefix = stack.pop()
        for child in sorted(_common_prefixes(s3, bucket, prefix), reverse=True):
            name = child[len(prefix) :].rstrip("/")
            if name == "_manifests":
                repository = prefix[len(REPOSITORIES_PREFIX) :].rstrip("/")
                for tag_prefix in _common_prefixes(s3, bucket, child + "tags/"):
                    tag = tag_prefix[len(child + "tags/") :].rstrip("/")
                    try:
                        link = s3.get_object(Bucket=bucket, Key=tag_prefix + "current/link")["Body"].read()
                    except s3.exceptions.NoSuchKey:
                        continue  # a tag being deleted
                    digest = link.decode(errors="replace").strip()
                    if digest.startswith("sha256:") and len(digest) == 71:
                        yield repository, tag, digest
            elif not name.startswith("_"):
                stack.append(child)


def build_worker(config: WorkerConfig, log: Callable[[str], None]) -> Worker:
    password = read_secret(config.password_file, "password_file")
    credentials = (config.username, password)
    ca = str(config.ca_file) if config.ca_file else None
    registry = RegistryClient(Transport(f"https://{config.registry}", ca_file=ca), credentials, "registry-scanner")
    trivy = Trivy(config.trivy, config.cache_dir, config.scan_timeout_seconds, config.ca_file, credentials)
    return Worker(
        config, config.aws_client("sqs"), config.aws_client("s3"), config.aws_client("sns"), trivy, registry, log
    )


def run(config: WorkerConfig) -> int:
    def log(line: str) -> None:
        print(f"scanner worker: {line}", file=sys.stderr, flush=True)

    lock = lock_cache(config.cache_dir)
    worker = build_worker(config, log)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    worker.run()
    log("stopped")
    lock.close()
    return 0


def lock_cache(cache_dir: Path) -> Any:
    """An exclusive lock on the cache directory: one worker process per cache."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = (cache_dir / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"scanner worker: another worker uses {cache_dir}") from None
    return handle
