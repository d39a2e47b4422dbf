"""Pull-time vulnerability blocking in the real lab: the dev stack's `team-a/scanned` has `blockSeverity: HIGH`
(unscanned: deny by default), the lab's gates run with the fleet's config (lab/overrides.py: the lab bucket in
its moto S3), and nginx sends them that namespace's manifest reads as the ALB's listener rules do.

Reports are written straight into the lab's moto S3 as the scanner worker writes them (scanner/report.py: the
dated report, then `latest.json`); this module tests what the gate and `fleet scan-report`/`fleet gate --lab`
make of them. The allow-list's expiry needs a fixed clock: those checks run a gate of their own (the same
code, the lab's config with an allow-list, a fixed clock) in front of the lab's registry instance and its S3.
A missing binary fails the lab's start (it never skips).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import cli
from gate.app import Gate
from gate.config import parse_config
from gate.reports import ReportStore
from lab import supervisor
from lab.image import build_image, skopeo_digest
from lab.lab import GATES, INSTANCES, SCANNER_SERVICE, Lab, LabState, s3_client
from lab.overrides import LAB_BUCKET, lab_gate_config
from scanner.report import Finding, Report, latest_key, report_key
from tests.helpers import settings_with
from tests.helpers.lab import push
from tests.helpers.registry import Response, call
from tests.helpers.waiting import wait_for
from tests.test_lab_signing import ACCEPT, DEV, access_log, bearer, gate_addresses

pytestmark = pytest.mark.lab

SCANNED = "team-a/scanned"
REPO = f"{SCANNED}/app"
SIGNED_REPO = "team-a/release/app"  # requireSigned only: no scan required
CVE = "CVE-2024-0001"  # HIGH, in openssl
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab-scan-gate")
    state = Lab(settings_with("dev", {}), directory).up()  # the dev stack: team-a/scanned blocks from HIGH
    # Here the tests write the reports, as the worker writes them: the lab's own worker is stopped, so it
    # cannot scan the images pushed here first (tests/test_lab_scanning.py tests the worker and the whole path).
    worker = state.service(SCANNER_SERVICE)
    os.killpg(worker.pid, signal.SIGTERM)
    wait_for(lambda: not supervisor.pid_alive(worker.pid), 15, "the lab's scan worker stopped")
    try:
        yield state
    finally:
        Lab.down(directory)


@pytest.fixture(scope="module")
def images(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tags `vulnerable`, `clean`, `medium`, `fresh` (distinct contents) pushed to REPO; tag -> digest."""
    layout = tmp_path_factory.mktemp("scan-images") / "layout"
    digests = {}
    for i, tag in enumerate(("vulnerable", "clean", "medium", "fresh", "late")):
        build_image(layout, tag, [{f"file-{i}.bin": 4096 + i}])
        proc = push(lab, f"oci:{layout}:{tag}", DEV, f"{REPO}:{tag}")
        assert proc.returncode == 0, proc.stderr
        digests[tag] = skopeo_digest(f"oci:{layout}:{tag}", "", None)
    for source, ref in (("vulnerable", "team-a/app:vulnerable"), ("clean", f"{SIGNED_REPO}:clean")):
        proc = push(lab, f"oci:{layout}:{source}", DEV, ref)
        assert proc.returncode == 0, proc.stderr
    s3 = reports_s3(lab)
    write_report(s3, digests["vulnerable"], [finding(CVE, "HIGH"), finding("CVE-2024-0002", "LOW", "zlib")])
    write_report(s3, digests["clean"], [])
    write_report(s3, digests["medium"], [finding("CVE-2024-0003", "MEDIUM")])
    return digests


# --- helpers ------------------------------------------------------------------------------------------


def reports_s3(lab: LabState) -> Any:
    settings = json.loads((Path(lab.state_dir) / "settings.json").read_text())
    return s3_client(lab.s3_endpoint, lab.ca_file, settings["region"])


def finding(cve: str, severity: str, package: str = "openssl") -> Finding:
    return Finding(id=cve, severity=severity, package=package, installed_version="3.0.11-1~deb12u1",
                   fixed_version="3.0.11-1~deb12u2", title=f"{package}: a fixture vulnerability")  # fmt: skip


def write_report(s3: Any, digest: str, findings: list[Finding]) -> Report:
    """As the worker does: the dated report first, then latest.json."""
    report = Report(digest=digest, repository=REPO, scanned_at=NOW, scanner="trivy 0.59.1",
                    database_updated_at=NOW - datetime.timedelta(hours=3), findings=tuple(findings))  # fmt: skip
    s3.put_object(Bucket=LAB_BUCKET, Key=report_key(digest, report.database_date), Body=report.to_json())
    s3.put_object(Bucket=LAB_BUCKET, Key=latest_key(digest), Body=report.to_json())
    return report


def get(lab: LabState, ref: str, method: str = "GET") -> Response:
    return call(lab.ca_file, method, f"{lab.registry_url}/v2/{REPO}/manifests/{ref}", {"Accept": ACCEPT},
                bearer=bearer(lab, REPO))  # fmt: skip


def denied_message(resp: Response) -> str:
    status, _, body = resp
    assert status == 403, (status, body[:300])
    assert b"schemaVersion" not in body
    (error,) = json.loads(body)["errors"]
    assert error["code"] == "DENIED"
    return str(error["message"])


def fleet(lab: LabState, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([argv[0], "dev", *argv[1:], "--lab", "--state-dir", lab.state_dir], out=out, err=err)
    return code, out.getvalue() + err.getvalue()


# --- through the lab's load balancer and gates ----------------------------------------------------


def test_the_labs_gates_read_reports_from_the_labs_s3(lab: LabState) -> None:
    for gate in GATES:
        config = yaml.safe_load((Path(lab.state_dir) / f"{gate}.yml").read_text())
        assert config["reports"]["bucket"] == LAB_BUCKET and config["reports"]["endpoint_url"] == lab.s3_endpoint
        assert config["namespaces"][SCANNED] == {"block_severity": "HIGH", "unscanned": "deny"}


def test_a_high_finding_is_refused_with_the_cve_named_by_tag_and_by_digest(
    lab: LabState, images: dict[str, str]
) -> None:
    digest = images["vulnerable"]
    for ref in ("vulnerable", digest):
        message = denied_message(get(lab, ref))
        assert message == f"{REPO}@{digest}: vulnerabilities at or above HIGH: HIGH {CVE}", message
    status, _, body = get(lab, "vulnerable", "HEAD")
    assert status == 403 and not body
    seen = [e for e in access_log(lab) if e["uri"].endswith(f"{REPO}/manifests/vulnerable") and e["method"] != "PUT"]
    assert seen and {e["upstream"] for e in seen} <= gate_addresses(lab)  # the gates answered


def test_a_clean_image_and_one_below_the_threshold_are_served(lab: LabState, images: dict[str, str]) -> None:
    for tag in ("clean", "medium"):
        status, headers, _ = get(lab, tag)
        assert status == 200 and headers["docker-content-digest"] == images[tag], tag


def test_an_unscanned_image_is_refused_then_served_once_its_report_is_written(
    lab: LabState, images: dict[str, str]
) -> None:
    digest = images["fresh"]
    assert denied_message(get(lab, "fresh")) == f"{REPO}@{digest}: not scanned yet"
    write_report(reports_s3(lab), digest, [finding("CVE-2024-0004", "LOW")])
    # The gates remember a report (or its absence) for at most reports.cache_seconds (5 s): seen within it.
    wait_for(lambda: get(lab, "fresh")[0] == 200, timeout=8, what="the fresh image's report reaches the gates")


def test_a_corrupt_report_is_refused(lab: LabState, images: dict[str, str]) -> None:
    reports_s3(lab).put_object(Bucket=LAB_BUCKET, Key=latest_key(images["late"]), Body=b'{"schema": 1}')
    assert "its scan report is unreadable" in denied_message(get(lab, "late"))


def test_an_unprotected_namespace_is_not_scanned_at_the_gate(lab: LabState, images: dict[str, str]) -> None:
    """The twin: the same vulnerable digest (its report says HIGH) in team-a/app, which no policy covers."""
    url = f"{lab.registry_url}/v2/team-a/app/manifests/vulnerable"
    status, headers, _ = call(lab.ca_file, "GET", url, {"Accept": ACCEPT}, bearer=bearer(lab, "team-a/app"))
    assert status == 200 and headers["docker-content-digest"] == images["vulnerable"]


# --- the allow-list, with a fixed clock: a gate of our own in front of the lab's instance -------------


def own_gate(lab: LabState, expires: datetime.date, clock: datetime.datetime, unscanned: str = "deny") -> Gate:
    entry = {"id": CVE, "reason": "waiting for the base image's fix", "expires": expires.isoformat()}
    policy = {"blockSeverity": "HIGH", "unscanned": unscanned, "allowVulnerabilities": [entry]}
    settings = settings_with("dev", {"access": {"pullPolicies": {SCANNED: policy}}})
    instance = lab.services[INSTANCES[0]]["ports"]["https"]
    key = Path(lab.signing["public_key_file"]).read_text()
    text = lab_gate_config(settings, instance, Path(lab.ca_file), key, lab.s3_endpoint)
    config = parse_config(yaml.safe_load(text), Path(lab.state_dir))
    return Gate(config, clock=lambda: clock, reports=ReportStore(reports_s3(lab), LAB_BUCKET))


def wsgi_get(gate: Gate, lab: LabState, ref: str) -> tuple[str, bytes]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/v2/{REPO}/manifests/{ref}", "QUERY_STRING": "",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_ACCEPT": ACCEPT, "HTTP_AUTHORIZATION": f"Bearer {bearer(lab, REPO)}",
               "wsgi.input": io.BytesIO()}  # fmt: skip
    status: list[str] = []
    body = b"".join(gate(environ, lambda s, h: status.append(s)))
    return status[0], body


def test_an_allow_listed_cve_is_let_through_until_its_entry_expires(lab: LabState, images: dict[str, str]) -> None:
    expires = NOW.date() + datetime.timedelta(days=10)
    last_minute = datetime.datetime.combine(expires, datetime.time(23, 59), tzinfo=datetime.UTC)
    status, body = wsgi_get(own_gate(lab, expires, last_minute), lab, "vulnerable")
    assert status.startswith("200") and b"schemaVersion" in body
    day_after = last_minute + datetime.timedelta(minutes=1)
    status, body = wsgi_get(own_gate(lab, expires, day_after), lab, "vulnerable")
    assert status.startswith("403") and f"HIGH {CVE}".encode() in body


def test_unscanned_is_served_where_the_setting_allows_it(lab: LabState, images: dict[str, str]) -> None:
    expires = NOW.date() + datetime.timedelta(days=10)
    allowing = own_gate(lab, expires, NOW, unscanned="allow")
    denying = own_gate(lab, expires, NOW, unscanned="deny")
    reports_s3(lab).delete_object(Bucket=LAB_BUCKET, Key=latest_key(images["late"]))  # `late`: unscanned again
    assert wsgi_get(allowing, lab, "late")[0].startswith("200")
    status, body = wsgi_get(denying, lab, "late")
    assert status.startswith("403") and b"not scanned yet" in body


# --- the commands on the same images ------------------------------------------------------------------


def test_fleet_scan_report_lab(lab: LabState, images: dict[str, str]) -> None:
    code, text = fleet(lab, "scan-report", f"{REPO}:vulnerable")
    assert code == 0, text
    assert f"{REPO}@{images['vulnerable']}" in text and "highest severity: HIGH" in text
    assert CVE in text and "openssl 3.0.11-1~deb12u1 (fixed in 3.0.11-1~deb12u2)" in text
    assert f"database:         {(NOW - datetime.timedelta(hours=3)).date()}" in text
    code, text = fleet(lab, "scan-report", f"{REPO}@{images['clean']}", "--json")
    doc = json.loads(text)
    assert code == 0 and doc["highestSeverity"] == "NONE" and doc["report"]["findings"] == []
    reports_s3(lab).delete_object(Bucket=LAB_BUCKET, Key=latest_key(images["late"]))
    code, text = fleet(lab, "scan-report", f"{REPO}:late")
    assert code == 1 and "no scan report yet" in text


def test_fleet_gate_lab_agrees_with_the_gate(lab: LabState, images: dict[str, str]) -> None:
    code, text = fleet(lab, "gate", f"{REPO}:vulnerable")
    assert code == 1 and f"REFUSED {lab.registry_url.removeprefix('https://')}/{REPO}@{images['vulnerable']}" in text
    assert f"vulnerabilities at or above HIGH: HIGH {CVE}" in text
    code, text = fleet(lab, "gate", f"{REPO}:clean")
    assert code == 0 and "PASS" in text, text
    reports_s3(lab).delete_object(Bucket=LAB_BUCKET, Key=latest_key(images["late"]))
    code, text = fleet(lab, "gate", f"{REPO}:late")
    assert code == 1 and "not scanned yet" in text
    code, text = fleet(lab, "gate", f"{REPO}:no-such-tag")
    assert code == 2 and "no image" in text, text


def test_fleet_gate_lab_checks_the_signature_where_the_namespace_requires_it(
    lab: LabState, images: dict[str, str]
) -> None:
    code, text = fleet(lab, "gate", f"{SIGNED_REPO}:clean")
    assert code == 1 and "no valid signature by the stack's signing key (no-signature" in text, text
    code, text = fleet(lab, "sign", f"{SIGNED_REPO}:clean")
    assert code == 0, text
    code, text = fleet(lab, "gate", f"{SIGNED_REPO}:clean")
    assert code == 0 and f"PASS {lab.registry_url.removeprefix('https://')}/{SIGNED_REPO}@{images['clean']}" in text
    # Unscanned does not matter there (team-a/release reads no reports); in team-a/app nothing is required.
    code, text = fleet(lab, "gate", "team-a/app:vulnerable")
    assert code == 0 and "lies in no protected namespace" in text, text
