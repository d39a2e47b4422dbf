"""Pull-time vulnerability blocking without processes: the decision (fixed clock), the gate's config, the
report store against moto S3, the gate's WSGI app against a scripted registry and moto S3 reports, the
settings keys with broken inputs, the audit's expired allow-list entries, the hosts' gate config (graph),
and `fleet scan-report`/`fleet gate` usage errors. tests/test_lab_scan_gate.py runs the same against the
real lab.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from fleet import cli
from fleet.audit import audit_stack, expired_allow_entries
from fleet.runner import FakeRunner, FakeStack
from gate.app import AUDIT_LOGGER, Gate
from gate.config import ConfigError, NamespacePolicy, parse_config
from gate.reports import ReportStore, ReportsUnavailable
from gate.scan import UNREADABLE, UNSCANNED, VULNERABLE, Unreadable, scan_refusals
from host.contract import GATE_CONFIG_FILE
from host.gate_config import GatePolicy, ReportsLocation, gate_config, render_gate_config
from infra.gate_spec import gate_policies
from infra.settings import SettingsError, load_stack_settings, protected_namespaces, signed_namespaces
from scanner.report import Finding, Report, latest_key
from signing import cosign
from tests.helpers import recording, settings_with, stack_config
from tests.test_signing_graph import written
from tests.test_signing_unit import IMAGE, IMAGE_DIGEST, ScriptedRegistry, call, new_key, pem, signed_answers

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
TODAY = NOW.date()
BUCKET = "registry-bucket"
DIGEST = IMAGE_DIGEST


def finding(cve: str, severity: str, package: str = "openssl") -> Finding:
    return Finding(id=cve, severity=severity, package=package, installed_version="3.0.1", fixed_version="3.0.2")


def report(*findings: Finding, digest: str = DIGEST) -> Report:
    return Report(
        digest=digest,
        repository="team-a/app",
        scanned_at=NOW - datetime.timedelta(minutes=5),
        database_updated_at=NOW - datetime.timedelta(hours=6),
        scanner="trivy 0.59.1",
        findings=findings,
    )


def policy(**values: Any) -> NamespacePolicy:
    return NamespacePolicy.model_validate(values)


HIGH = policy(block_severity="HIGH", unscanned="deny")


# --- the decision: pure, fixed clock -------------------------------------------------------------


def test_a_finding_at_the_threshold_is_refused_naming_the_highest_severity_and_the_ids() -> None:
    (refusal,) = scan_refusals([HIGH], report(finding("CVE-2024-0001", "HIGH"), finding("CVE-2024-0002", "LOW")), NOW)
    assert refusal.code == VULNERABLE
    assert refusal.message == "vulnerabilities at or above HIGH: HIGH CVE-2024-0001"


def test_findings_below_the_threshold_and_a_clean_report_pass() -> None:
    assert scan_refusals([HIGH], report(finding("CVE-2024-0002", "MEDIUM")), NOW) == []
    assert scan_refusals([HIGH], report(), NOW) == []
    # The twin: the same MEDIUM finding under a MEDIUM threshold is refused.
    assert scan_refusals([policy(block_severity="MEDIUM")], report(finding("CVE-2024-0002", "MEDIUM")), NOW)


def test_at_most_five_ids_most_severe_first_then_how_many_more() -> None:
    findings = [finding(f"CVE-2024-000{i}", "HIGH") for i in range(1, 7)]
    findings += [finding("CVE-2023-9999", "CRITICAL"), finding("CVE-2024-0001", "HIGH", package="libssl3")]
    (refusal,) = scan_refusals([HIGH], report(*findings), NOW)
    assert refusal.message == (
        "vulnerabilities at or above HIGH: CRITICAL CVE-2023-9999, CVE-2024-0001, CVE-2024-0002, CVE-2024-0003, "
        "CVE-2024-0004 (2 more)"  # 7 distinct ids: the same CVE in two packages counts once
    )


def test_an_allow_list_entry_counts_through_its_expiry_day_utc_and_not_the_day_after() -> None:
    allowing = policy(
        block_severity="HIGH", allow_vulnerabilities=[{"id": "CVE-2024-0001", "expires": TODAY.isoformat()}]
    )
    vulnerable = report(finding("CVE-2024-0001", "CRITICAL"))
    last_moment = datetime.datetime(2026, 12, 1, 23, 59, 59, tzinfo=datetime.UTC)
    assert scan_refusals([allowing], vulnerable, last_moment) == []
    # Late on the 1st in New York is already the 2nd in UTC: the entry no longer counts.
    new_york = datetime.timezone(datetime.timedelta(hours=-5))
    assert scan_refusals([allowing], vulnerable, datetime.datetime(2026, 12, 1, 19, 0, 1, tzinfo=new_york))
    (refusal,) = scan_refusals([allowing], vulnerable, last_moment + datetime.timedelta(seconds=1))
    assert refusal.code == VULNERABLE and "CVE-2024-0001" in refusal.message


def test_an_allow_list_excuses_only_its_ids() -> None:
    allowing = policy(block_severity="HIGH", allow_vulnerabilities=[{"id": "CVE-2024-0001", "expires": "2027-01-01"}])
    (refusal,) = scan_refusals(
        [allowing], report(finding("CVE-2024-0001", "CRITICAL"), finding("CVE-2024-0002", "HIGH")), NOW
    )
    assert refusal.message == "vulnerabilities at or above HIGH: HIGH CVE-2024-0002"


def test_unscanned_is_refused_when_denied_and_served_when_allowed() -> None:
    assert [r.message for r in scan_refusals([HIGH], None, NOW)] == ["not scanned yet"]
    assert scan_refusals([policy(block_severity="HIGH", unscanned="allow")], None, NOW) == []
    assert [r.code for r in scan_refusals([policy(unscanned="deny")], None, NOW)] == [UNSCANNED]


def test_a_corrupt_report_is_refused_by_every_policy_that_reads_reports() -> None:
    (refusal,) = scan_refusals([policy(block_severity="HIGH", unscanned="allow")], Unreadable("x: bad json"), NOW)
    assert refusal.code == UNREADABLE and "unreadable (x: bad json)" in refusal.message
    assert scan_refusals([policy(require_signed=True)], Unreadable("x"), NOW) == []  # reads no report


def test_every_covering_policy_applies_and_equal_reasons_come_once() -> None:
    parent = policy(block_severity="CRITICAL")
    child = policy(block_severity="HIGH", allow_vulnerabilities=[{"id": "CVE-2024-0001", "expires": "2027-01-01"}])
    vulnerable = report(finding("CVE-2024-0001", "CRITICAL"))
    # The child's allow-list does not lift the parent's threshold.
    assert [r.message for r in scan_refusals([parent, child], vulnerable, NOW)] == [
        "vulnerabilities at or above CRITICAL: CRITICAL CVE-2024-0001"
    ]
    assert len(scan_refusals([HIGH, HIGH], None, NOW)) == 1


def test_the_decision_needs_an_aware_clock() -> None:
    with pytest.raises(ValueError, match="aware"):
        scan_refusals([HIGH], None, datetime.datetime(2026, 12, 1))


# --- the gate's configuration ----------------------------------------------------------------------


def config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "upstream": "https://127.0.0.1:1",
        "public_keys": [pem(new_key())],
        "namespaces": {"team-a": {"block_severity": "HIGH", "unscanned": "deny"}},
        "reports": {"bucket": BUCKET, "region": "eu-west-1"},
    }
    data.update(changes)
    return data


def allowing_config(cve: str, expires: str) -> dict[str, Any]:
    entry = {"block_severity": "HIGH", "allow_vulnerabilities": [{"id": cve, "expires": expires}]}
    return {"namespaces": {"team-a": entry}}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"namespaces": {"team-a": {"block_severity": "SEVERE"}}}, "namespaces.team-a.block_severity"),
        ({"namespaces": {"team-a": {"unscanned": "maybe"}}}, "namespaces.team-a.unscanned"),
        (allowing_config("x y", "2027-01-01"), "namespaces.team-a.allow_vulnerabilities.0.id"),
        (allowing_config("CVE-2024-1", "soon"), "namespaces.team-a.allow_vulnerabilities.0.expires"),
        ({"reports": None}, "reports: missing; namespaces ['team-a'] block on scan reports"),
        ({"reports": {"bucket": BUCKET}}, "reports.region"),
        ({"reports": {"bucket": BUCKET, "region": "eu-west-1", "endpoint_url": "http://x"}}, "reports.endpoint_url"),
        ({"reports": {"bucket": BUCKET, "region": "eu-west-1", "ca_bundle": "none.pem"}}, "reports.ca_bundle"),
        ({"reports": {"bucket": BUCKET, "region": "eu-west-1", "cache_seconds": 61}}, "reports.cache_seconds"),
    ],
)  # fmt: skip
def test_gate_config_errors_name_the_key(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config(**changes), tmp_path, "gate.yml")
    assert expected in str(err.value), str(err.value)


def test_a_gate_config_without_scan_blocking_needs_no_reports(tmp_path: Path) -> None:
    parsed = parse_config(config(namespaces={"team-a": {"require_signed": True}}, reports=None), tmp_path)
    assert parsed.reports is None and parsed.protected("team-a/app")
    scanned = parse_config(config(), tmp_path)
    assert scanned.protected("team-a/app") and not scanned.protected("team-b/app")
    assert not parse_config(config(namespaces={"team-a": {}}, reports=None), tmp_path).protected("team-a/app")


# --- the report store: moto S3 ----------------------------------------------------------------------


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield client


def put_report(s3: Any, data: bytes | Report, digest: str = DIGEST) -> None:
    s3.put_object(Bucket=BUCKET, Key=latest_key(digest), Body=data.to_json() if isinstance(data, Report) else data)


def test_the_store_reads_latest_json_or_says_what_is_wrong(s3: Any) -> None:
    store = ReportStore(s3, BUCKET)
    assert store.latest(DIGEST) is None
    put_report(s3, report(finding("CVE-2024-0001", "HIGH")))
    got = store.latest(DIGEST)
    assert isinstance(got, Report) and got.highest_severity == "HIGH"
    put_report(s3, b'{"schema": 1, "digest": "sha256:')
    bad = store.latest(DIGEST)
    assert isinstance(bad, Unreadable) and f"s3://{BUCKET}/{latest_key(DIGEST)}" in bad.message
    put_report(s3, report(digest="sha256:" + "e" * 64))
    other = store.latest(DIGEST)
    assert isinstance(other, Unreadable) and "the report of sha256:eeee" in other.message


def test_the_store_remembers_briefly_and_within_its_bound(s3: Any) -> None:
    now = [0.0]
    store = ReportStore(s3, BUCKET, cache_seconds=5, cache_entries=2, now=lambda: now[0])
    assert store.latest(DIGEST) is None
    put_report(s3, report(finding("CVE-2024-0001", "HIGH")))
    now[0] = 4.9
    assert store.latest(DIGEST) is None and store.reads == 1  # still the remembered absence
    now[0] = 5.1
    assert isinstance(store.latest(DIGEST), Report) and store.reads == 2  # seen within cache_seconds
    for i in range(3):
        store.latest("sha256:" + f"{i}" * 64)
    assert len(store._cache) == 2


def test_s3_unreachable_is_reports_unavailable() -> None:
    from gate.config import ReportsConfig
    from gate.reports import s3_client

    client = s3_client(ReportsConfig(bucket=BUCKET, region="eu-west-1", endpoint_url="https://127.0.0.1:9"))
    with pytest.raises(ReportsUnavailable, match="reading s3://registry-bucket/"):
        ReportStore(client, BUCKET).latest(DIGEST)


# --- the gate's WSGI app: scripted registry + moto S3 reports ------------------------------------------


def scan_gate(
    tmp_path: Path,
    s3: Any,
    namespaces: dict[str, Any],
    clock: datetime.datetime = NOW,
    signed: bool = False,
    **changes: Any,
) -> Gate:
    """A gate whose registry holds IMAGE as team-a/app:1 (and by digest), with its signature when `signed`."""
    key = new_key()
    parsed = parse_config(config(public_keys=[pem(key)], namespaces=namespaces, **changes), tmp_path)
    gate = Gate(parsed, clock=lambda: clock, reports=ReportStore(s3, BUCKET))
    answers = signed_answers(key)
    answers[f"/v2/team-a/app/manifests/{IMAGE_DIGEST}"] = answers["/v2/team-a/app/manifests/1"]
    sig_path = f"/v2/team-a/app/manifests/{cosign.signature_tag(IMAGE_DIGEST)}"
    sig = answers[sig_path][2]
    answers[sig_path] = (
        200,
        {"Content-Type": cosign.OCI_MANIFEST, "Docker-Content-Digest": cosign.sha256_digest(sig)},
        sig,
    )
    unsigned = dict(answers)
    del unsigned[sig_path]
    gate.transport = ScriptedRegistry(answers if signed else unsigned)  # type: ignore[assignment]
    return gate


def denied(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["errors"][0]
    assert error["code"] == "DENIED"
    return error


def test_the_gate_refuses_a_high_finding_naming_the_digest_and_the_cve(tmp_path: Path, s3: Any) -> None:
    put_report(s3, report(finding("CVE-2024-0001", "CRITICAL"), finding("CVE-2024-0002", "HIGH")))
    gate = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "deny"}})
    for method in ("GET", "HEAD"):
        status, body = call(gate, method, "/v2/team-a/app/manifests/1")
        assert status.startswith("403") and IMAGE not in body
    status, body = call(gate, "GET", f"/v2/team-a/app/manifests/{IMAGE_DIGEST}")
    error = denied(body)
    assert error["message"] == (
        f"team-a/app@{IMAGE_DIGEST}: vulnerabilities at or above HIGH: CRITICAL CVE-2024-0001, CVE-2024-0002"
    )
    assert error["detail"] == {"repository": "team-a/app", "digest": IMAGE_DIGEST, "reason": VULNERABLE,
                               "reasons": [VULNERABLE]}  # fmt: skip


def test_the_gate_serves_a_clean_image_and_one_below_the_threshold(tmp_path: Path, s3: Any) -> None:
    gate = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "deny"}})
    put_report(s3, report(finding("CVE-2024-0003", "MEDIUM")))
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("200") and body == IMAGE
    put_report(s3, report())
    assert call(gate, "HEAD", "/v2/team-a/app/manifests/1")[0].startswith("200")


def test_the_gate_lets_an_allow_listed_cve_through_until_the_entry_expires(tmp_path: Path, s3: Any) -> None:
    put_report(s3, report(finding("CVE-2024-0001", "CRITICAL")))
    allowing = {"team-a": {"block_severity": "HIGH", "allow_vulnerabilities": [{"id": "CVE-2024-0001",
                                                                                "expires": "2026-12-01"}]}}  # fmt: skip
    on_the_day = scan_gate(tmp_path, s3, allowing, datetime.datetime(2026, 12, 1, 23, 59, tzinfo=datetime.UTC))
    assert call(on_the_day, "GET", "/v2/team-a/app/manifests/1")[0].startswith("200")
    day_after = scan_gate(tmp_path, s3, allowing, datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.UTC))
    status, body = call(day_after, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("403") and "CRITICAL CVE-2024-0001" in denied(body)["message"]


def test_the_gate_refuses_an_unscanned_image_where_denied_and_serves_it_where_allowed(tmp_path: Path, s3: Any) -> None:
    gate = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "deny"}})
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("403") and denied(body)["message"] == f"team-a/app@{IMAGE_DIGEST}: not scanned yet"
    allowing = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "allow"}})
    assert call(allowing, "GET", "/v2/team-a/app/manifests/1")[0].startswith("200")


def jwt_with_subject(subject: str) -> str:
    """A JWT-shaped bearer with `sub` (the scripted registry accepts any; the real one verifies it)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"Bearer {part({'alg': 'RS256'})}.{part({'sub': subject, 'access': []})}.c2lnbmF0dXJl"


def test_the_scanners_robot_reads_an_unsigned_unscanned_image_others_are_refused(
    tmp_path: Path, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The scanner must pull an image before any report or signature exists (a blocking namespace would
    otherwise never get its images scanned); only the configured account, only with a token the registry
    accepted for the request, and every such pull leaves an audit line."""
    policy = {"team-a": {"require_signed": True, "block_severity": "HIGH", "unscanned": "deny"}}
    gate = scan_gate(tmp_path, s3, policy, scanner_accounts=["registry-scanner"])
    scanner = {"Authorization": jwt_with_subject("registry-scanner")}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        status, body = call(gate, "GET", "/v2/team-a/app/manifests/1", scanner)
    assert status.startswith("200") and body == IMAGE
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert (line["event"], line["account"]) == ("pull_by_scanner", "registry-scanner")
    for authorization in (jwt_with_subject("team-a-reader"), "Bearer not.a.jwt", "Basic cmVnaXN0cnktc2Nhbm5lcg=="):
        status, body = call(gate, "GET", "/v2/team-a/app/manifests/1", {"Authorization": authorization})
        assert status.startswith("403"), authorization
    unexempt = scan_gate(tmp_path, s3, policy)  # no scanner account configured: the robot is checked like anyone
    assert call(unexempt, "GET", "/v2/team-a/app/manifests/1", scanner)[0].startswith("403")


def test_the_gate_refuses_a_corrupt_report_fail_closed(tmp_path: Path, s3: Any) -> None:
    put_report(s3, b"\x00not json")
    gate = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "allow"}})
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("403") and "its scan report is unreadable" in denied(body)["message"]


def test_the_gate_answers_503_when_s3_is_unreachable_and_serves_nothing(tmp_path: Path) -> None:
    from gate.config import ReportsConfig
    from gate.reports import s3_client

    unreachable = s3_client(ReportsConfig(bucket=BUCKET, region="eu-west-1", endpoint_url="https://127.0.0.1:9"))
    gate = scan_gate(tmp_path, unreachable, {"team-a": {"block_severity": "HIGH"}})
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("503") and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE" and IMAGE not in body


def test_signature_and_scan_both_apply_and_the_refusal_lists_every_reason(
    tmp_path: Path, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    put_report(s3, report(finding("CVE-2024-0001", "CRITICAL")))
    both = {"team-a": {"require_signed": True, "block_severity": "HIGH"}}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        _, body = call(scan_gate(tmp_path, s3, both), "GET", "/v2/team-a/app/manifests/1")
    error = denied(body)
    assert error["detail"]["reasons"] == ["no-signature", VULNERABLE]
    assert "no valid signature by this registry's signing key (no-signature" in error["message"]
    assert error["message"].endswith("; vulnerabilities at or above HIGH: CRITICAL CVE-2024-0001")
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert line["reasons"] == ["no-signature", VULNERABLE] and "CVE-2024-0001" in line["message"]
    # Signed, the scan still refuses it; with a clean report it is served.
    signed_gate = scan_gate(tmp_path, s3, both, signed=True)
    assert denied(call(signed_gate, "GET", "/v2/team-a/app/manifests/1")[1])["detail"]["reasons"] == [VULNERABLE]
    put_report(s3, report())
    assert call(signed_gate, "GET", "/v2/team-a/app/manifests/1")[0].startswith("200")


def test_a_cosign_signature_manifest_stays_served_unscanned(tmp_path: Path, s3: Any) -> None:
    gate = scan_gate(tmp_path, s3, {"team-a": {"block_severity": "HIGH", "unscanned": "deny"}}, signed=True)
    tag = cosign.signature_tag(IMAGE_DIGEST)
    for method in ("GET", "HEAD"):
        assert call(gate, method, f"/v2/team-a/app/manifests/{tag}")[0].startswith("200"), method
    # The twin: the image itself, unscanned, is refused.
    assert call(gate, "GET", "/v2/team-a/app/manifests/1")[0].startswith("403")


# --- settings: the keys and their broken inputs -------------------------------------------------------


def problems(overrides: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_with("dev", overrides)
    return [str(p) for p in info.value.problems]


def policies(value: dict[str, Any]) -> dict[str, Any]:
    return {"access": {"pullPolicies": value}}


AHEAD = (datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=30)).isoformat()
FIX = "waiting for the fix"


def allow(cve: str = "CVE-2024-1", reason: str = FIX, expires: str | None = AHEAD) -> dict[str, Any]:
    entry = {"id": cve, "reason": reason}
    return entry | {"expires": expires} if expires else entry


def blocking(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"team-b": {"blockSeverity": "HIGH", "allowVulnerabilities": list(entries)}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"team-b": {"blockSeverity": "SEVERE"}}, "access.pullPolicies.team-b.blockSeverity: \"SEVERE\""),
        ({"team-b": {"unscanned": "sometimes"}}, "access.pullPolicies.team-b.unscanned: \"sometimes\""),
        (blocking(allow("not an id")),
         "access.pullPolicies.team-b.allowVulnerabilities.0.id: \"not an id\": not a vulnerability id"),
        (blocking(allow(reason="no")),
         "access.pullPolicies.team-b.allowVulnerabilities.0.reason: \"no\": say why"),
        (blocking(allow(expires="2099-01-01")),
         "access.pullPolicies.team-b.allowVulnerabilities.0.expires: \"2099-01-01\" is more than 365 days ahead"),
        (blocking(allow(expires=None)),
         "access.pullPolicies.team-b.allowVulnerabilities.0.expires: (missing)"),
        ({"team-b": {"allowVulnerabilities": [allow()]}},
         "access.pullPolicies.team-b.allowVulnerabilities: [\"CVE-2024-1\"]: has no effect without blockSeverity"),
        (blocking(allow(), allow()),
         "access.pullPolicies.team-b.allowVulnerabilities[1].id: \"CVE-2024-1\" is listed twice"),
        ({"team-b": {"blockSeverity": "HIGH"}, "team-b/app": {"blockSeverity": "CRITICAL"}},
         "access.pullPolicies.team-b/app.blockSeverity: \"CRITICAL\": has no effect: team-b/app lies under team-b, "
         "which blocks from HIGH"),
        ({"team-b": {"blockSeverity": "HIGH"}, "team-b/app": {"unscanned": "allow"}},
         "access.pullPolicies.team-b/app.unscanned: \"allow\": has no effect: team-b/app lies under team-b, which "
         "denies unscanned images"),
    ],
)  # fmt: skip
def test_broken_scan_settings_are_refused_naming_the_key(value: dict[str, Any], expected: str) -> None:
    found = problems(policies(value))
    assert any(p.startswith(expected) for p in found), found


def test_scan_settings_resolve_unscanned_securely_and_the_gate_sees_every_blocking_namespace() -> None:
    s = settings_with("dev", policies({"team-b": {"blockSeverity": "CRITICAL"}, "team-b/tools": {"unscanned": "deny"},
                                       "team-a/open": {"blockSeverity": "LOW", "unscanned": "allow"}}))  # fmt: skip
    got = gate_policies(s)
    assert got["team-b"] == GatePolicy(block_severity="CRITICAL", unscanned="deny")  # deny: blockSeverity is set
    assert got["team-b/tools"] == GatePolicy(unscanned="deny")
    assert got["team-a/open"] == GatePolicy(block_severity="LOW", unscanned="allow")
    assert set(protected_namespaces(s)) >= {"team-b", "team-b/tools", "team-a/open", "team-a/scanned"}
    assert signed_namespaces(s) == ("team-a/release",)
    # A namespace that asks for nothing is no gate namespace.
    assert "team-b" not in protected_namespaces(settings_with("dev", policies({"team-b": {"unscanned": "allow"}})))


def test_a_child_policy_left_at_its_defaults_under_a_protected_parent_is_no_problem() -> None:
    s = settings_with("dev", policies({"team-b": {"requireSigned": True}, "team-b/scan": {"blockSeverity": "HIGH"}}))
    assert gate_policies(s)["team-b/scan"].block_severity == "HIGH"


# --- the audit: expired allow-list entries ----------------------------------------------------------


def test_an_expired_allow_list_entry_fails_the_audit_from_the_day_after(tmp_path: Path) -> None:
    import shutil

    stacks = tmp_path / "stacks"
    shutil.copytree(Path(__file__).resolve().parent.parent / "stacks", stacks)
    dev = stacks / "Pulumi.dev.yaml"
    expires = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=10)
    old = "      team-a/scanned: {blockSeverity: HIGH}\n"
    assert old in dev.read_text()
    dev.write_text(dev.read_text().replace(old, (
        "      team-a/scanned:\n        blockSeverity: HIGH\n        allowVulnerabilities:\n"
        f"          - {{id: CVE-2024-0001, reason: waiting for the base image fix, expires: \"{expires}\"}}\n"
    )))  # fmt: skip
    on_the_day = audit_stack("dev", on=expires, stacks_dir=stacks)
    assert not any("allowVulnerabilities" in e for e in on_the_day.waiver_errors), on_the_day.waiver_errors
    after = audit_stack("dev", on=expires + datetime.timedelta(days=1), stacks_dir=stacks)
    assert not after.passed
    assert (
        f"access.pullPolicies.team-a/scanned.allowVulnerabilities[0] (CVE-2024-0001) expired on {expires}"
        in "\n".join(after.waiver_errors)
    )


def test_no_stack_has_an_expired_allow_list_entry_today() -> None:
    for stack in ("dev", "staging", "prod", "payments-prod"):
        assert expired_allow_entries(load_stack_settings(stack), datetime.date.today()) == [], stack


# --- the hosts' gate config (renderer and graph) ----------------------------------------------------


def test_the_renderer_writes_only_what_is_set_and_reports_only_when_read() -> None:
    key = pem(new_key())
    signed_only = gate_config(["base"], [key], reports=ReportsLocation(BUCKET, "eu-west-1"))
    assert signed_only["namespaces"] == {"base": {"require_signed": True}} and "reports" not in signed_only
    scanned = gate_config(
        {"base": GatePolicy(require_signed=True),
         "team-a": GatePolicy(block_severity="HIGH", unscanned="deny",
                              allow_vulnerabilities=(("CVE-2024-0001", datetime.date(2027, 1, 31)),))},
        [key], reports=ReportsLocation(BUCKET, "eu-west-1"),
    )  # fmt: skip
    assert scanned["namespaces"]["team-a"] == {
        "block_severity": "HIGH", "unscanned": "deny",
        "allow_vulnerabilities": [{"id": "CVE-2024-0001", "expires": "2027-01-31"}],
    }  # fmt: skip
    assert scanned["reports"] == {"bucket": BUCKET, "region": "eu-west-1"}
    with pytest.raises(ValueError, match=r"namespaces \['team-a'\] block on scan reports"):
        gate_config({"team-a": GatePolicy(block_severity="HIGH")}, [key])
    with pytest.raises(ValueError, match="namespace team-a: a gate policy needs"):
        gate_config({"team-a": GatePolicy()}, [key])


def test_the_rendered_config_loads_in_the_gate(tmp_path: Path) -> None:
    s = load_stack_settings("dev")
    text = render_gate_config(gate_policies(s), [pem(new_key())], reports=ReportsLocation(BUCKET, s.region))
    text = text.replace("/etc/docker/registry/tls/ca.crt", str(tmp_path / "ca.crt"))
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "gate.yml").write_text(text)
    from gate.config import load_config

    loaded = load_config(tmp_path / "gate.yml")
    assert loaded.policies("team-a/scanned/app") == [NamespacePolicy(block_severity="HIGH", unscanned="deny")]
    assert loaded.reports is not None and loaded.reports.bucket == BUCKET


def test_devs_hosts_gate_config_blocks_team_a_scanned_on_the_registry_buckets_reports() -> None:
    rec = recording("dev")
    data = yaml.safe_load(written(rec)[GATE_CONFIG_FILE])
    assert data["namespaces"]["team-a/scanned"] == {"block_severity": "HIGH", "unscanned": "deny"}
    assert data["namespaces"]["team-a/release"] == {"require_signed": True}
    bucket = rec.named("storage-primary").outputs["bucket"]
    assert data["reports"] == {"bucket": bucket, "region": "eu-west-1"}


@pytest.mark.parametrize("stack", ["staging", "prod", "payments-prod"])
def test_stacks_without_scan_blocking_keep_their_gate_config(stack: str) -> None:
    data = yaml.safe_load(written(recording(stack))[GATE_CONFIG_FILE])
    assert "reports" not in data and all(entry == {"require_signed": True} for entry in data["namespaces"].values())


def test_the_load_balancer_routes_devs_scan_blocking_namespace_to_the_gate() -> None:
    rec = recording("dev")
    paths = {
        value
        for r in rec.of_type("aws:lb/listenerRule:ListenerRule")
        for cond in r.inputs.get("conditions", [])
        for value in (cond.get("pathPattern") or {}).get("values", [])
    }
    assert {"/v2/team-a/scanned/*/manifests/*", "/v2/team-a/scanned/manifests/*"} <= paths
    assert "/v2/team-b/*/manifests/*" not in paths  # the twin: an unprotected namespace is not routed


# --- the commands: usage errors exit 2 ----------------------------------------------------------------


def run_cli(*argv: str, runner: FakeRunner | None = None) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err, runner=runner)
    return code, out.getvalue() + err.getvalue()


def test_scan_report_and_gate_user_mistakes_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    no_outputs = FakeRunner({"dev": FakeStack(outputs={})})
    for argv, expected in (
        (("gate", "dev", "Team-A/app"), "is not a valid name"),
        (("scan-report", "dev", "team-a/app@sha256:12"), "is not a digest"),
        (("gate", "nosuch", "team-a/app"), "no file"),
        (("gate", "dev", "other.example.com/team-a/app"), "this stack's registry is registry.dev.example.com"),
        (("scan-report", "dev", "team-a/app", "--username", "ci"), "REGISTRY_PASSWORD"),
        (("gate", "dev", "team-a/app", "--lab", "--state-dir", str(tmp_path)), "no lab running"),
        (("scan-report", "dev", "team-a/app"), "has no output bucketName"),
        (("gate", "dev"), "the following arguments are required: image"),
    ):
        code, text = run_cli(*argv, runner=no_outputs)
        assert code == 2 and expected in text, (argv, code, text)
        assert "Traceback" not in text
    assert stack_config("dev")  # the stacks were read, not faked


def test_the_hosts_role_can_read_the_reports_and_list_the_bucket() -> None:
    """The gate runs as the host's instance role: it needs s3:GetObject on the reports' keys and s3:ListBucket
    (without it a missing report is a 403, which the gate answers 503, never `not scanned yet`)."""
    import fnmatch

    rec = recording("dev")
    bucket = rec.named("storage-primary").outputs["arn"]
    policy = json.loads(rec.named("fleet-role-policy").inputs["policy"])
    key = f"{bucket}/{latest_key(DIGEST)}"

    def allows(action: str, resource: str) -> bool:
        for st in policy["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            if st["Effect"] == "Allow" and action in actions and any(fnmatch.fnmatch(resource, r) for r in resources):
                return True
        return False

    assert allows("s3:GetObject", key) and allows("s3:ListBucket", bucket)
    assert not allows("s3:GetObject", f"{bucket}x/{latest_key(DIGEST)}")  # the twin: another bucket's keys


def test_the_lab_demo_signs_in_a_namespace_that_requires_signatures_not_a_scan_blocking_one(tmp_path: Path) -> None:
    """`make lab`'s signing demo: team-a/a-scan (scan-blocking) sorts before team-a/release; the demo skips it."""
    from types import SimpleNamespace

    from lab.demo import demo_protected_repository

    s = settings_with("dev", policies({"team-a/a-scan": {"blockSeverity": "HIGH"}}))
    (tmp_path / "settings.json").write_text(s.model_dump_json())
    state = SimpleNamespace(
        state_dir=str(tmp_path), namespace="team-a", signing={"namespaces": list(protected_namespaces(s))}
    )
    assert state.signing["namespaces"][0] == "team-a/a-scan"
    assert demo_protected_repository(state) == "team-a/release/sample"  # type: ignore[arg-type]
