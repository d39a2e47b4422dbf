"""The scanner's parts without processes: config validation, Trivy's JSON, the forwarder's choices and HTTP
answers, the worker's message handling (SQS, S3 and SNS in moto's in-process mock; Trivy and the registry
faked), the mirror's inputs and the CLI's errors. Trivy reading the fixture database for real:
tests/test_trivy_db.py; the whole pipeline in the lab: tests/test_lab_scanning.py."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from scanner.__main__ import main as scanner_main
from scanner.config import ConfigError, EventsConfig, parse_events_config, parse_worker_config
from scanner.events import EnvelopeError, make_handler, select
from scanner.mirror import MirrorError, handler, parse_reference
from scanner.report import Finding, Report, latest_key, parse_report, report_key, scan_body
from scanner.trivy import DbMetadata, TrivyError, parse_findings, union
from scanner.worker import Worker, platform_manifests, tagged_digests
from signing.registry import Manifest, NotFound

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TOKEN = "s3cr3t-bearer-token"
REGION = "eu-west-1"


# --- config ---------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("host.crt", "host.key", "events.token", "robot.token", "ca.crt"):
        (tmp_path / name).write_text("x\n")
    trivy = tmp_path / "trivy"
    trivy.write_text("#!/bin/sh\n")
    trivy.chmod(0o755)
    return tmp_path


def events_data(d: Path, **changes: Any) -> dict[str, Any]:
    data = {
        "listen": "127.0.0.1:5004",
        "cert_file": str(d / "host.crt"),
        "key_file": str(d / "host.key"),
        "token_file": str(d / "events.token"),
        "queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/scan",
        "region": REGION,
    }
    return {**data, **changes}


def worker_data(d: Path, **changes: Any) -> dict[str, Any]:
    data = {
        "queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/scan",
        "region": REGION,
        "bucket": "registry-bucket",
        "registry": "registry.example.com",
        "username": "registry-scanner",
        "password_file": "robot.token",  # relative: next to the config file
        "trivy": str(d / "trivy"),
        "db_repository": "registry.example.com/mirror/trivy-db:2",
        "findings_topic_arn": "arn:aws:sns:eu-west-1:123456789012:findings",
        "cache_dir": str(d / "cache"),
    }
    return {**data, **changes}


def test_configs_as_documented_are_accepted_with_their_defaults(files: Path) -> None:
    events = parse_events_config(events_data(files), files)
    assert events.address == ("127.0.0.1", 5004) and events.ignore_prefixes == ("mirror/",)
    worker = parse_worker_config(worker_data(files), files)
    assert worker.password_file == files / "robot.token"
    assert (worker.findings_threshold, worker.visibility_timeout_seconds) == ("HIGH", 900)
    assert (worker.db_repository_name, worker.db_repository_tag) == ("mirror/trivy-db", "2")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": "127.0.0.1"}, "listen: Value error, '127.0.0.1' is not HOST:PORT"),
        ({"token_file": "/nonexistent/token"}, "token_file: Value error, /nonexistent/token: no such file"),
        (
            {"queue_url": "http://sqs.example.com/q"},
            "queue_url: Value error, 'http://sqs.example.com/q': must be an https",
        ),
        ({"region": "Europe"}, "region: Value error, 'Europe' is not an AWS region"),
        ({"ignore_prefixes": ["mirror"]}, "ignore_prefixes: Value error, 'mirror': a repository path ending with /"),
        ({"tokn_file": "x"}, "tokn_file: Extra inputs are not permitted"),
    ],
)
def test_events_config_errors_name_the_key(files: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_events_config(events_data(files, **changes), files, "events.yml")
    assert str(err.value).startswith("events.yml:\n")
    assert message.replace("Value error, ", "") in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"findings_threshold": "SEVERE"}, "findings_threshold: 'SEVERE': one of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL"),
        ({"db_repository": "mirror/trivy-db"}, "db_repository: 'mirror/trivy-db': must be HOST[:PORT]/REPOSITORY:TAG"),
        ({"findings_topic_arn": "findings"}, "findings_topic_arn: 'findings' is not an SNS topic ARN"),
        ({"trivy": "/nonexistent/trivy"}, "trivy: /nonexistent/trivy: no executable Trivy there"),
        ({"registry": "https://registry.example.com"}, "registry: 'https://registry.example.com' is not a registry"),
        ({"visibility_timeout_seconds": 5}, "visibility_timeout_seconds: Input should be greater than or equal to 10"),
        ({"password_file": "missing.token"}, "password_file: "),
    ],
)
def test_worker_config_errors_name_the_key(files: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"worker\.yml:") as err:
        parse_worker_config(worker_data(files, **changes), files, "worker.yml")
    assert message in str(err.value)


def test_the_cli_reports_a_config_mistake_without_a_traceback(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = files / "worker.yml"
    config.write_text(json.dumps(worker_data(files, findings_threshold="SEVERE")))
    assert scanner_main(["worker", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "findings_threshold: 'SEVERE'" in err and "Traceback" not in err
    assert scanner_main(["rescan", "--config", str(files / "absent.yml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


# --- Trivy's JSON ------------------------------------------------------------------------------------------


def vuln(id: str = "CVE-2099-1001", pkg: str = "openssl", severity: str = "HIGH", **extra: Any) -> dict[str, Any]:
    return {
        "VulnerabilityID": id,
        "PkgName": pkg,
        "InstalledVersion": "3.0.11-1~deb12u1",
        "FixedVersion": "3.0.13-1~deb12u1",
        "Severity": severity,
        "Title": "a title",
        "DataSource": {"ID": "debian"},
        **extra,
    }


def trivy_json(*results: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "SchemaVersion": 2,
            "ArtifactName": "registry.example.com/team-a/app@" + DIGEST,
            "Results": [{"Target": f"t{i}", "Class": "os-pkgs", "Vulnerabilities": v} for i, v in enumerate(results)]
            + [{"Target": "no vulnerabilities", "Class": "lang-pkgs"}],
        }
    )


def test_trivy_findings_carry_id_severity_package_versions_and_title_once_each() -> None:
    findings = parse_findings(trivy_json([vuln(), vuln(pkg="libssl3", severity="LOW")], [vuln()]))
    assert [(f.id, f.package, f.severity) for f in findings] == [
        ("CVE-2099-1001", "libssl3", "LOW"),
        ("CVE-2099-1001", "openssl", "HIGH"),
    ]
    assert findings[1].installed_version == "3.0.11-1~deb12u1" and findings[1].fixed_version == "3.0.13-1~deb12u1"
    assert findings[1].title == "a title"
    assert parse_findings(json.dumps({"SchemaVersion": 2, "ArtifactName": "x"})) == ()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("not json", "not JSON"),
        (json.dumps({"SchemaVersion": 1}), "not a schema 2 report"),
        (trivy_json([vuln(severity="SEVERE")]), r"Results\[0\].Vulnerabilities\[0\]: severity: Value error, unknown"),
        (trivy_json([vuln(id="openSUSE-SU-2024:1-1")]), r"Results\[0\].Vulnerabilities\[0\]: id: "),
        (trivy_json([{**vuln(), "PkgName": None}]), r"Vulnerabilities\[0\]: package: "),
    ],
)
def test_unreadable_trivy_output_is_an_error_never_a_dropped_finding(output: str, message: str) -> None:
    with pytest.raises(TrivyError, match=message):
        parse_findings(output)


def test_an_index_report_is_the_union_of_its_platforms() -> None:
    amd = parse_findings(trivy_json([vuln(), vuln("CVE-2099-1002", severity="LOW")]))
    arm = parse_findings(trivy_json([vuln(), vuln("CVE-2099-3000", pkg="zlib1g", severity="CRITICAL")]))
    assert [f.id for f in union([amd, arm])] == ["CVE-2099-1001", "CVE-2099-1002", "CVE-2099-3000"]
    index = {
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": OTHER, "platform": {"os": "linux", "architecture": "arm64"}},
            {
                "mediaType": OCI_MANIFEST,
                "digest": "sha256:" + "ee" * 32,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
        ]
    }
    assert platform_manifests(json.dumps(index).encode()) == [DIGEST, OTHER]


# --- the forwarder ----------------------------------------------------------------------------------------


def push(repository: str = "team-a/app", digest: str = DIGEST, **target: Any) -> dict[str, Any]:
    return {
        "action": "push",
        "target": {"mediaType": OCI_MANIFEST, "repository": repository, "digest": digest, **target},
    }


def test_the_forwarder_keeps_manifest_pushes_only() -> None:
    envelope = {
        "events": [
            push(tag="1"),
            push(tag="latest"),  # the same digest again: one message
            push("team-a/other", OTHER, mediaType=OCI_INDEX),
            push(mediaType="application/octet-stream"),  # a blob
            {**push(), "action": "pull"},
            {**push(), "action": "delete"},
            push(tag="sha256-" + "ab" * 32 + ".sig"),  # a cosign signature
            push("mirror/trivy-db"),  # the Trivy database mirror
            push("Team-A/App"),  # not a repository name
            push(digest="sha256:../../x"),
            {"action": "push"},
        ]
    }
    selection = select(envelope, ("mirror/",))
    assert selection.scans == [("team-a/app", DIGEST), ("team-a/other", OTHER)]
    assert selection.ignored == 8
    bad: object
    for bad in ({}, {"events": {}}, [], {"events": ["x"]}):
        with pytest.raises(EnvelopeError):
            select(bad, ())


class FakeSqs:
    def __init__(self, fail: str | None = None) -> None:
        self.bodies: list[str] = []
        self.fail = fail

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        if self.fail == "raise":
            raise ConnectionError("SQS unreachable")
        if self.fail == "partial":
            return {"Successful": [], "Failed": [{"Id": e["Id"], "Code": "InternalError"} for e in Entries]}
        self.bodies += [e["MessageBody"] for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


@pytest.fixture
def forwarder(files: Path) -> Iterator[tuple[int, FakeSqs, list[str]]]:
    """The forwarder's handler on plain HTTP (TLS is the lab's to test), with a fake SQS and its log lines."""
    config = EventsConfig.model_validate(events_data(files, max_body_bytes=4096))
    sqs, lines = FakeSqs(), list[str]()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(TOKEN, config, sqs, lines.append))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], sqs, lines
    finally:
        server.shutdown()
        server.server_close()


def post(port: int, body: bytes, token: str | None = TOKEN) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/events", body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def announce(port: int, length: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/events")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_the_forwarder_answers_200_only_once_the_queue_took_the_scans(
    forwarder: tuple[int, FakeSqs, list[str]],
) -> None:
    port, sqs, lines = forwarder
    envelope = json.dumps({"events": [push(tag="1")]}).encode()
    assert post(port, envelope) == 200
    assert sqs.bodies == [scan_body("team-a/app", DIGEST)]
    sqs.fail = "partial"
    assert post(port, envelope) == 503, "a message SQS did not take: the registry must retry"
    sqs.fail = "raise"
    assert post(port, envelope) == 503
    assert any("queue unavailable" in line for line in lines)


def test_the_forwarder_refuses_what_is_not_the_registrys(forwarder: tuple[int, FakeSqs, list[str]]) -> None:
    port, sqs, lines = forwarder
    envelope = json.dumps({"events": [push()]}).encode()
    assert post(port, envelope, token=None) == 401
    assert post(port, envelope, token="forged-token-9") == 401
    assert post(port, envelope, token=TOKEN[:-1]) == 401
    assert post(port, b"{not json") == 400
    assert post(port, b'{"events": "x"}') == 400
    assert announce(port, 5000) == 413  # refused on its Content-Length, before the body is read
    assert sqs.bodies == []
    assert [line.split(" from ")[0] for line in lines] == ["refused 401"] * 3 + ["refused 400"] * 2 + ["refused 413"]
    assert not any(TOKEN in line or "forged-token-9" in line for line in lines), "the log never holds a token"


# --- the worker ---------------------------------------------------------------------------------------------

DB = DbMetadata(version=2, updated_at=datetime(2026, 12, 1, 6, 0, tzinfo=UTC), next_update=None)
HIGH = Finding(id="CVE-2099-1001", severity="HIGH", package="openssl", installedVersion="3.0.11-1~deb12u1")
LOW = Finding(id="CVE-2099-1002", severity="LOW", package="openssl", installedVersion="3.0.11-1~deb12u1")


class FakeTrivy:
    def __init__(self) -> None:
        self.scans: list[str] = []
        self.findings: dict[str, tuple[Finding, ...]] = {}
        self.db = DB
        self.downloads = 0

    def version(self) -> str:
        return "trivy 0.59.1"

    def db_metadata(self) -> DbMetadata:
        return self.db

    def download_db(self, repository: str) -> DbMetadata:
        self.downloads += 1
        return self.db

    def scan(self, image: str, on_start: Any = None) -> tuple[Finding, ...]:
        self.scans.append(image)
        return self.findings.get(image.rpartition("@")[2], (HIGH, LOW))


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {
            DIGEST: Manifest(b"{}", OCI_MANIFEST, DIGEST),
            "2": Manifest(b"{}", OCI_MANIFEST, "sha256:" + "db" * 32),  # mirror/trivy-db:2
        }

    def get_manifest(self, repository: str, reference: str, accept: str = "") -> Manifest:
        if reference not in self.manifests:
            raise NotFound(f"manifest {repository}@{reference}: HTTP 404", 404)
        return self.manifests[reference]


@pytest.fixture
def aws(files: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        sqs, s3, sns = (boto3.client(s, region_name=REGION) for s in ("sqs", "s3", "sns"))
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
        queue = sqs.create_queue(QueueName="scan", Attributes={"RedrivePolicy": redrive})["QueueUrl"]
        s3.create_bucket(Bucket="registry-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket="registry-bucket", VersioningConfiguration={"Status": "Enabled"})
        topic = sns.create_topic(Name="findings")["TopicArn"]
        inbox = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
        config = parse_worker_config(
            worker_data(files, queue_url=queue, findings_topic_arn=topic, retry_delay_seconds=0, wait_seconds=0),
            files,
        )
        trivy, registry = FakeTrivy(), FakeRegistry()
        lines: list[str] = []
        worker = Worker(config, sqs, s3, sns, trivy, registry, lines.append)  # type: ignore[arg-type]
        yield {"worker": worker, "sqs": sqs, "s3": s3, "queue": queue, "dlq": dlq, "inbox": inbox, "trivy": trivy,
               "registry": registry, "lines": lines}  # fmt: skip


def versions(s3: Any, key: str) -> int:
    return len(s3.list_object_versions(Bucket="registry-bucket", Prefix=key).get("Versions", []))


def receive(sqs: Any, url: str) -> list[dict[str, Any]]:
    return list(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []))


def test_a_scan_stores_the_dated_report_then_latest_publishes_and_deletes(aws: dict[str, Any]) -> None:
    worker, sqs, s3 = aws["worker"], aws["sqs"], aws["s3"]
    sqs.send_message(QueueUrl=aws["queue"], MessageBody=scan_body("team-a/app", DIGEST))
    outcome = worker.poll_once()
    assert outcome is not None and outcome.deleted and outcome.written == 1, aws["lines"]
    report = parse_report(s3.get_object(Bucket="registry-bucket", Key=latest_key(DIGEST))["Body"].read())
    assert report.findings == (HIGH, LOW) and report.database_updated_at == DB.updated_at
    assert report.repository == "team-a/app" and report.scanner == "trivy 0.59.1"
    assert versions(s3, report_key(DIGEST, "2026-12-01")) == 1
    (note,) = receive(sqs, aws["inbox"])
    assert json.loads(note["Body"])["vulnerabilities"] == ["CVE-2099-1001"], "only findings at or above HIGH"
    assert aws["trivy"].scans == [f"registry.example.com/team-a/app@{DIGEST}"]
    assert receive(sqs, aws["queue"]) == [], "deleted after the report was stored"


def test_a_message_delivered_twice_writes_one_report(aws: dict[str, Any]) -> None:
    worker, sqs, s3 = aws["worker"], aws["sqs"], aws["s3"]
    for _ in range(2):
        sqs.send_message(QueueUrl=aws["queue"], MessageBody=scan_body("team-a/app", DIGEST))
        assert worker.poll_once().deleted
    assert len(aws["trivy"].scans) == 1
    assert versions(s3, report_key(DIGEST, "2026-12-01")) == 1 and versions(s3, latest_key(DIGEST)) == 1
    # A newer database (a later UpdatedAt): scanned again, a new dated report, latest replaced.
    aws["trivy"].db = DbMetadata(2, datetime(2026, 12, 2, 6, 0, tzinfo=UTC), None)
    aws["registry"].manifests["2"] = Manifest(b"{}", OCI_MANIFEST, "sha256:" + "dc" * 32)
    worker.ensure_db(force=True)
    sqs.send_message(QueueUrl=aws["queue"], MessageBody=scan_body("team-a/app", DIGEST))
    assert worker.poll_once().written == 1
    assert versions(s3, report_key(DIGEST, "2026-12-02")) == 1 and versions(s3, latest_key(DIGEST)) == 2


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"kind": "delete"}',
        scan_body("team-a/app", OTHER),  # the registry has no such manifest
    ],
)
def test_a_message_that_always_fails_ends_in_the_dead_letter_queue(aws: dict[str, Any], body: str) -> None:
    worker, sqs = aws["worker"], aws["sqs"]
    sqs.send_message(QueueUrl=aws["queue"], MessageBody=body)
    for _ in range(2):
        outcome = worker.poll_once()
        assert outcome is not None and not outcome.deleted
    assert worker.poll_once() is None, "after maxReceiveCount receives SQS moves it"
    (dead,) = receive(sqs, aws["dlq"])
    assert dead["Body"] == body
    assert aws["trivy"].scans == []


def test_an_index_gets_the_union_of_its_platforms_and_each_platform_its_own(aws: dict[str, Any]) -> None:
    worker, sqs, s3 = aws["worker"], aws["sqs"], aws["s3"]
    index = json.dumps(
        {"manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "platform": {"os": "linux"}} for d in (DIGEST, OTHER)]}
    ).encode()
    index_digest = "sha256:" + "ff" * 32
    aws["registry"].manifests[index_digest] = Manifest(index, OCI_INDEX, index_digest)
    critical = Finding(id="CVE-2099-3000", severity="CRITICAL", package="zlib1g", installedVersion="1")
    aws["trivy"].findings = {DIGEST: (HIGH,), OTHER: (critical,)}
    sqs.send_message(QueueUrl=aws["queue"], MessageBody=scan_body("team-a/app", index_digest))
    assert worker.poll_once().written == 3
    stored = {d: parse_report(s3.get_object(Bucket="registry-bucket", Key=latest_key(d))["Body"].read())
              for d in (index_digest, DIGEST, OTHER)}  # fmt: skip
    assert [f.id for f in stored[index_digest].findings] == ["CVE-2099-1001", "CVE-2099-3000"]
    assert stored[index_digest].highest_severity == "CRITICAL" and stored[OTHER].findings == (critical,)


def test_rescan_all_queues_every_tagged_digest_once(aws: dict[str, Any]) -> None:
    worker, sqs, s3 = aws["worker"], aws["sqs"], aws["s3"]
    root = "docker/registry/v2/repositories/"
    links = {
        "team-a/app": {"1": DIGEST, "latest": DIGEST, "sha256-" + "ab" * 32 + ".sig": OTHER},
        "team-b/deep/tool": {"v2": OTHER},
        "mirror/trivy-db": {"2": "sha256:" + "db" * 32},
    }
    for repository, tags in links.items():
        for tag, digest in tags.items():
            s3.put_object(Bucket="registry-bucket", Key=f"{root}{repository}/_manifests/tags/{tag}/current/link",
                          Body=digest.encode())  # fmt: skip
        s3.put_object(Bucket="registry-bucket", Key=f"{root}{repository}/_layers/sha256/{'00' * 32}/link", Body=b"x")
    assert len(list(tagged_digests(s3, "registry-bucket"))) == 5
    sqs.send_message(QueueUrl=aws["queue"], MessageBody='{"kind": "rescan-all"}')
    assert worker.poll_once().deleted
    bodies = sorted(json.loads(m["Body"])["repository"] + "@" + json.loads(m["Body"])["digest"]
                    for m in receive(sqs, aws["queue"]))  # fmt: skip
    assert bodies == [f"team-a/app@{DIGEST}", f"team-b/deep/tool@{OTHER}"]
    assert aws["trivy"].downloads == 1, "rescan-all looks for a newer database first"


# --- the mirror -------------------------------------------------------------------------------------------


def test_mirror_references_and_the_lambda_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = parse_reference("registry.example.com:8443/mirror/trivy-db:2", "target")
    assert (ref.host, ref.repository, ref.tag) == ("registry.example.com:8443", "mirror/trivy-db", "2")
    for bad in ("ghcr.io/aquasecurity/trivy-db", "trivy-db:2", "ghcr.io/Aqua/trivy-db:2"):
        with pytest.raises(MirrorError, match="HOST\\[:PORT\\]/REPOSITORY:TAG"):
            parse_reference(bad, "source")
    for name in ("MIRROR_SOURCE", "MIRROR_TARGET", "MIRROR_CREDENTIALS_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIRROR_SOURCE", "ghcr.io/aquasecurity/trivy-db:2")
    with pytest.raises(MirrorError, match="MIRROR_TARGET, MIRROR_CREDENTIALS_SECRET_ARN not set"):
        handler({}, None)


# --- the registry client (signing/registry.py) against an htpasswd registry ------------------------------


class BasicRegistry:
    """Stands in for a Transport to a registry in htpasswd mode: 401 with a Basic challenge without credentials."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def request(
        self, method: str, path: str, headers: Any, body: Any = None, max_bytes: int = 0, follow: bool = False
    ) -> Any:
        from signing.registry import Response

        self.seen.append(headers.get("Authorization"))
        if not headers.get("Authorization", "").startswith("Basic "):
            return Response(401, {"WWW-Authenticate": 'Basic realm="registry"'}, b"")
        return Response(200, {"Content-Type": OCI_MANIFEST}, b"{}")


def test_a_basic_challenge_is_answered_with_the_account_and_kept() -> None:
    from signing.registry import RegistryClient, Unauthorized

    transport = BasicRegistry()
    client = RegistryClient(transport, ("lab", "pw"))  # type: ignore[arg-type]
    client.get_manifest("lab/app", "1")
    client.get_manifest("lab/other", "1")
    basic = "Basic bGFiOnB3"
    assert transport.seen == [None, basic, basic], "asked once, then sent on every request"
    anonymous = RegistryClient(BasicRegistry())  # type: ignore[arg-type]
    with pytest.raises(Unauthorized, match="401 without a Bearer challenge"):
        anonymous.get_manifest("lab/app", "1")


def test_the_host_artifact_ships_the_scanner() -> None:
    """Registry hosts run the events forwarder and scanner hosts the worker from the same artifact."""
    from host.artifact import artifact_files, shipped_packages

    assert "scanner" in shipped_packages()
    names = {name for name, _ in artifact_files()}
    assert {"scanner/events.py", "scanner/worker.py", "scanner/report.py", "signing/registry.py"} <= names


def test_the_mirror_cli_names_what_is_wrong(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["mirror", "--source", "oci:/nonexistent:2", "--username", "registry-mirror"]
    assert scanner_main([*base, "--target", "reg/mirror:2", "--password-file", str(files / "absent")]) == 2
    assert "--password-file: " in capsys.readouterr().err
    assert scanner_main([*base, "--target", "mirror/trivy-db", "--password-file", str(files / "robot.token")]) == 1
    assert "--target 'mirror/trivy-db': must be HOST[:PORT]/REPOSITORY:TAG" in capsys.readouterr().err
    target = "127.0.0.1:9/mirror/trivy-db:2"
    assert scanner_main([*base, "--target", target, "--password-file", str(files / "robot.token")]) == 1
    assert "source oci:/nonexistent:2: no readable index.json" in capsys.readouterr().err


def test_a_worker_with_an_older_database_never_moves_latest_back(aws: dict[str, Any]) -> None:
    worker, sqs, s3 = aws["worker"], aws["sqs"], aws["s3"]
    newer = DbMetadata(2, datetime(2026, 12, 2, 6, 0, tzinfo=UTC), None)
    when = newer.updated_at
    report = Report(
        digest=DIGEST, repository="team-a/app", scannedAt=when, databaseUpdatedAt=when, scanner="trivy 0.59.1"
    )
    s3.put_object(Bucket="registry-bucket", Key=latest_key(DIGEST), Body=report.to_json())
    sqs.send_message(QueueUrl=aws["queue"], MessageBody=scan_body("team-a/app", DIGEST))
    assert worker.poll_once().written == 1  # its own dated report (2026-12-01)
    assert versions(s3, report_key(DIGEST, "2026-12-01")) == 1
    kept = parse_report(s3.get_object(Bucket="registry-bucket", Key=latest_key(DIGEST))["Body"].read())
    assert kept.database_updated_at == newer.updated_at


def test_the_mirror_imports_only_the_standard_library_urllib3_and_boto3() -> None:
    """What lets it run as a Lambda function with nothing but boto3 (the runtime's) and urllib3 packaged."""
    import subprocess
    import sys

    probe = (
        "import sys, scanner.mirror; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True).stdout
    # (`_distutils_hack` is setuptools' import hook in any venv's site-packages, not an import of the mirror.)
    assert set(json.loads(out.replace("'", '"'))) <= {"__main__", "_distutils_hack", "scanner", "signing", "urllib3"}
