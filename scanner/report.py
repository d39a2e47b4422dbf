"""A scan report and the scan queue's messages: the contract between the scanner, the gate and `fleet`.

Reports live in the registry's bucket, outside the registry's `docker/` root (like the restore journal):

    registry-fleet/scan-reports/sha256/<hex>/<database-date>.json   one per database date scanned with
    registry-fleet/scan-reports/sha256/<hex>/latest.json            the newest scan; what the gate reads

A report is keyed by the image's manifest digest only: the same digest has the same content in every
repository. The worker writes the dated report first, then `latest.json`, and only then deletes the
queue message, so a report is never lost and a rescan of the same digest with the same database
rewrites the same key (idempotent).

Queue messages (SQS bodies, JSON):
    {"kind": "scan", "repository": "team-a/app", "digest": "sha256:..."}   one image manifest to scan
    {"kind": "rescan-all"}                                                   the nightly schedule: re-queue
                                                                             every tagged digest
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPORTS_PREFIX = "registry-fleet/scan-reports/"
SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # ascending, Trivy's names
NONE = "NONE"  # the highest severity of a report without findings
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CVE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9.]+)+$")  # CVE-2024-1234, GHSA-xxxx-..., DLA-1234-1


class ReportError(ValueError):
    """A report or queue message that does not follow this contract; the message says what is wrong."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def severity_rank(severity: str) -> int:
    """0 for NONE, 1..5 for UNKNOWN..CRITICAL; ReportError for anything else."""
    if severity == NONE:
        return 0
    try:
        return SEVERITIES.index(severity) + 1
    except ValueError:
        raise ReportError(f"unknown severity {severity!r}: one of {', '.join(SEVERITIES)}") from None


class Finding(_Frozen):
    id: str = Field(description="CVE-2024-1234, or the database's own id")
    severity: str
    package: str
    installed_version: str = Field(alias="installedVersion")
    fixed_version: str = Field(default="", alias="fixedVersion")
    title: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not CVE_ID.match(v):
            raise ValueError(f"{v!r} is not a vulnerability id (e.g. CVE-2024-1234)")
        return v

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        if v not in SEVERITIES:
            raise ValueError(f"unknown severity {v!r}: one of {', '.join(SEVERITIES)}")
        return v


class Report(_Frozen):
    schema_version: Literal[1] = Field(default=1, alias="schema")
    digest: str
    repository: str = Field(description="the repository the image was pulled from for the scan")
    scanned_at: datetime = Field(alias="scannedAt")
    database_updated_at: datetime = Field(alias="databaseUpdatedAt", description="the Trivy DB's UpdatedAt")
    scanner: str = Field(description="e.g. trivy 0.59.1")
    findings: tuple[Finding, ...] = ()

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not DIGEST.match(v):
            raise ValueError(f"{v!r} is not a sha256 digest")
        return v

    @field_validator("scanned_at", "database_updated_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a time zone (RFC 3339, e.g. 2026-12-01T17:00:00Z)")
        return v.astimezone(UTC)

    @property
    def highest_severity(self) -> str:
        """The highest severity among the findings, or NONE."""
        return max((f.severity for f in self.findings), key=severity_rank, default=NONE)

    @property
    def database_date(self) -> str:
        return self.database_updated_at.strftime("%Y-%m-%d")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=1).encode() + b"\n"


def parse_report(data: bytes | str, source: str = "report") -> Report:
    """A Report from its JSON; ReportError naming `source` and what is wrong."""
    try:
        return Report.model_validate_json(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors())
        raise ReportError(f"{source}: {problems}") from None


def _hex(digest: str) -> str:
    if not DIGEST.match(digest):
        raise ReportError(f"{digest!r} is not a sha256 digest")
    return digest.removeprefix("sha256:")


def report_key(digest: str, database_date: str) -> str:
    """The S3 key of the report of `digest` scanned with the database of `database_date` (YYYY-MM-DD)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", database_date):
        raise ReportError(f"database date {database_date!r} is not YYYY-MM-DD")
    return f"{REPORTS_PREFIX}sha256/{_hex(digest)}/{database_date}.json"


def latest_key(digest: str) -> str:
    """The S3 key of the newest report of `digest` (what the gate and `fleet scan-report` read)."""
    return f"{REPORTS_PREFIX}sha256/{_hex(digest)}/latest.json"


class ScanMessage(_Frozen):
    kind: Literal["scan"]
    repository: str
    digest: str

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not DIGEST.match(v):
            raise ValueError(f"{v!r} is not a sha256 digest")
        return v


class RescanAllMessage(_Frozen):
    kind: Literal["rescan-all"]


RESCAN_ALL_BODY = '{"kind": "rescan-all"}'  # what the nightly EventBridge schedule sends to the queue


def parse_message(body: str) -> ScanMessage | RescanAllMessage:
    """A queue message from its body; ReportError for anything else (the worker dead-letters it)."""
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError as e:
        raise ReportError(f"queue message is not JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ReportError("queue message is not a JSON object")
    try:
        if data.get("kind") == "rescan-all":
            return RescanAllMessage.model_validate(data)
        if data.get("kind") == "scan":
            return ScanMessage.model_validate(data)
    except ValidationError as e:
        raise ReportError(f"queue message: {e.errors()[0]['msg']}") from None
    raise ReportError(f"queue message kind {data.get('kind')!r}: expected 'scan' or 'rescan-all'")


def scan_body(repository: str, digest: str) -> str:
    return ScanMessage(kind="scan", repository=repository, digest=digest).model_dump_json()
