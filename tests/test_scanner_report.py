"""The scan report and queue message contract (scanner/report.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scanner.report import (
    RESCAN_ALL_BODY,
    Finding,
    Report,
    ReportError,
    RescanAllMessage,
    ScanMessage,
    latest_key,
    parse_message,
    parse_report,
    report_key,
    scan_body,
)

DIGEST = "sha256:" + "ab" * 32


def report(*severities: str) -> Report:
    findings = tuple(
        Finding(id=f"CVE-2024-{i}", severity=s, package="openssl", installedVersion="3.0.1")
        for i, s in enumerate(severities)
    )
    when = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    return Report(
        digest=DIGEST, repository="team-a/app", scannedAt=when, databaseUpdatedAt=when, scanner="trivy 0.59.1",
        findings=findings,
    )  # fmt: skip


def test_round_trip_and_highest_severity() -> None:
    r = report("LOW", "CRITICAL", "HIGH")
    back = parse_report(r.to_json())
    assert back == r
    assert back.highest_severity == "CRITICAL"
    assert report().highest_severity == "NONE"


def test_keys() -> None:
    assert latest_key(DIGEST) == f"registry-fleet/scan-reports/sha256/{'ab' * 32}/latest.json"
    assert report_key(DIGEST, report().database_date).endswith("/2026-12-01.json")
    with pytest.raises(ReportError, match="not a sha256 digest"):
        latest_key("sha256:../../x")
    with pytest.raises(ReportError, match="YYYY-MM-DD"):
        report_key(DIGEST, "../x")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"schema": 1}', "digest: Field required"),
        (b"not json", "report:"),
        (report("HIGH").to_json().replace(b'"HIGH"', b'"SEVERE"'), "unknown severity 'SEVERE'"),
        (report().to_json().replace(b"Z", b""), "needs a time zone"),
    ],
)
def test_bad_reports_are_named(body: bytes, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse_report(body, source="report")


def test_messages() -> None:
    assert parse_message(scan_body("team-a/app", DIGEST)) == ScanMessage(
        kind="scan", repository="team-a/app", digest=DIGEST
    )
    assert parse_message(RESCAN_ALL_BODY) == RescanAllMessage(kind="rescan-all")
    for body, message in [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"kind": "delete"}', "expected 'scan' or 'rescan-all'"),
        ('{"kind": "scan", "repository": "a", "digest": "sha256:1"}', "not a sha256 digest"),
    ]:
        with pytest.raises(ReportError, match=message):
            parse_message(body)
