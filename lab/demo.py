"""What `make lab` shows a user: a sample image pushed, pulled back through the CDN edge, checked.

In token mode the demo signs in as an account that may push (lab/accounts.demo_account: a team's
developer, e.g. `team-a-developer`) and pushes to its team's namespace (`team-a/sample`): skopeo
gets its token from the realm through nginx, as a client of the fleet does.

On a stack that protects a namespace the demo account may push to (dev: `team-a/release`), `signed_pull`
copies the sample there, shows skopeo's pull of it refused by the signature gate (DENIED, unsigned), signs
it as `python -m fleet sign STACK IMAGE --lab` does (the lab's KMS key) and shows the same pull served.

`scanned_push` pushes a sample whose package database holds a vulnerable openssl (lab/scan_images.py) to
`<namespace>/vulnerable:1` and waits for the scanner's report (the registry's notification, the queue, the
worker's Trivy and the fixture database). Where the demo account may push to a namespace with a
`blockSeverity` (dev: `team-a/scanned`, HIGH), it pushes there and shows skopeo's pull of the image refused
by the gate (DENIED, naming the digest, HIGH and the CVE): what `make lab` shows of practice 5.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.image import build_image, layer_digests, skopeo_copy, skopeo_digest
from lab.lab import LabState, aws_client
from lab.oci_layout import read_blob, read_tagged
from lab.scan_images import VULNERABLE, debian_image


@dataclass(frozen=True)
class DemoResult:
    image: str
    digest: str
    layers: int
    edge_bytes: int


def edge_bytes(state: LabState) -> int:
    try:
        return int(json.loads(Path(state.edge_stats_file).read_text())["bytes"])
    except (OSError, ValueError, KeyError):
        return 0


def push_and_pull(state: LabState, tag: str = "1") -> DemoResult:
    creds = f"{state.username}:{state.password}"
    host = state.registry_url.removeprefix("https://")
    remote = f"docker://{host}/{state.sample_repo}:{tag}"
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        layout = Path(tmp) / "sample"
        source = build_image(layout, tag, [{"hello.txt": 4096}, {"payload.bin": 2 * 1024 * 1024}])
        pushed = skopeo_digest(source, state.cert_dir, None)
        skopeo_copy(source, remote, state.cert_dir, creds)
        before = edge_bytes(state)
        back = Path(tmp) / "pulled"
        skopeo_copy(remote, f"oci:{back}:{tag}", state.cert_dir, creds)
        pulled = skopeo_digest(f"oci:{back}:{tag}", state.cert_dir, None)
        if pulled != pushed or layer_digests(back, tag) != layer_digests(layout, tag):
            raise RuntimeError(f"pulled image differs: pushed {pushed}, pulled {pulled}")
        return DemoResult(
            f"{host}/{state.sample_repo}:{tag}", pushed, len(layer_digests(layout, tag)), edge_bytes(state) - before
        )


@dataclass(frozen=True)
class SignedPullResult:
    image: str  # HOST/REPO:TAG in the protected namespace
    digest: str
    refused: str  # skopeo's error for the unsigned pull (the gate's DENIED message)
    signed: str  # what signing printed


def demo_protected_repository(state: LabState) -> str | None:
    """`<ns>/sample` in the first namespace requiring signatures the demo account may push to (its namespace or
    under it); None when the lab protects none of those."""
    from infra.settings import Settings, signed_namespaces

    settings = Settings.model_validate_json((Path(state.state_dir) / "settings.json").read_text())
    signed = signed_namespaces(settings)
    for ns in state.signing.get("namespaces", []) if state.signing else []:
        if ns in signed and (ns == state.namespace or ns.startswith(state.namespace + "/")):
            return f"{ns}/sample"
    return None


def signed_pull(state: LabState, repository: str, tag: str = "1") -> SignedPullResult:
    """Copy the demo's sample (`push_and_pull` first) into `repository`, pull it unsigned (refused), sign
    it with the lab's key, pull it again (served). RuntimeError when the gate does not behave so."""
    from fleet.signing import lab_target, sign
    from signing.references import ImageRef

    creds = f"{state.username}:{state.password}"
    host = state.registry_url.removeprefix("https://")
    remote = f"docker://{host}/{repository}:{tag}"
    skopeo_copy(f"docker://{host}/{state.sample_repo}:{tag}", remote, state.cert_dir, creds)
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        try:
            skopeo_copy(remote, f"oci:{Path(tmp) / 'unsigned'}:{tag}", state.cert_dir, creds)
        except RuntimeError as err:
            refused = str(err)
        else:
            raise RuntimeError(f"{repository}:{tag} is unsigned, yet its pull was served: the gate is not in the way")
        if "denied" not in refused.lower() or "no valid signature" not in refused:
            raise RuntimeError(
                f"the unsigned pull of {repository}:{tag} failed, but not with the gate's DENIED: {refused}"
            )
        out = io.StringIO()
        (digest,) = sign(lab_target(state, None), ImageRef(repository, tag, None), recursive=True, out=out)[:1]
        back = Path(tmp) / "signed"
        skopeo_copy(remote, f"oci:{back}:{tag}", state.cert_dir, creds)
        pulled = skopeo_digest(f"oci:{back}:{tag}", state.cert_dir, None)
    if pulled != digest:
        raise RuntimeError(f"signed {digest}, pulled {pulled}")
    refusal = refused[refused.lower().find("denied") :].strip().rstrip('"')
    return SignedPullResult(f"{host}/{repository}:{tag}", digest, refusal, out.getvalue().strip())


@dataclass(frozen=True)
class ScanResult:
    image: str  # HOST/REPO:TAG
    digest: str
    seconds: float  # from the push's last request to the report in the bucket
    report_uri: str
    highest: str
    findings: list[str]  # "CVE-... SEVERITY package installed -> fixed"
    refused: str | None = None  # skopeo's error for the pull from a blocking namespace (the gate's DENIED)

    def describe(self) -> str:
        lines = [
            f"  scanned    {self.image}  {self.digest}",
            f"             report after {self.seconds:.1f}s: {self.report_uri}",
            f"             highest severity {self.highest}:",
            *(f"               {f}" for f in self.findings),
        ]
        if self.refused:
            lines.append(f"             pull refused by the gate: {self.refused}")
        return "\n".join(lines)


def demo_blocking_namespace(state: LabState) -> str | None:
    """The first namespace with a `blockSeverity` the demo account may push to (its namespace or under it);
    None when the stack blocks none of those (or has no pull policies: htpasswd mode)."""
    from infra.settings import Settings

    settings = Settings.model_validate_json((Path(state.state_dir) / "settings.json").read_text())
    policies = getattr(settings.access, "pull_policies", {})
    for ns, policy in sorted(policies.items()):
        if policy.block_severity is not None and (ns == state.namespace or ns.startswith(state.namespace + "/")):
            return str(ns)
    return None


def refused_pull(state: LabState, image: str, must_name: tuple[str, ...], timeout: float = 15.0) -> str:
    """skopeo's pull of `image` (HOST/REPO:TAG) refused by the gate with a DENIED naming every `must_name`: the
    refusal. RuntimeError when it is served (after `timeout`: the gates cache a report's absence for 5 s)."""
    import time

    creds = f"{state.username}:{state.password}"
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        while True:
            try:
                skopeo_copy(f"docker://{image}", f"oci:{Path(tmp) / 'pulled'}:1", state.cert_dir, creds)
            except RuntimeError as err:
                refused = str(err)
                if "denied" not in refused.lower() or not all(n in refused for n in must_name):
                    raise RuntimeError(
                        f"the pull of {image} failed, but not with the gate's DENIED: {refused}"
                    ) from None
                return refused[refused.lower().find("denied") :].strip().rstrip('"')
            if time.monotonic() > deadline:
                raise RuntimeError(f"{image} has findings at or above its namespace's threshold, yet it was served")
            time.sleep(1)


def scanned_push(state: LabState, tag: str = "1", timeout: float = 120.0) -> ScanResult:
    """Push the vulnerable sample as the demo account and wait for its report; RuntimeError without one."""
    import time

    from scanner.report import latest_key, parse_report
    from signing.registry import RegistryClient, Transport

    blocking = demo_blocking_namespace(state)
    repository = f"{blocking or state.namespace}/vulnerable"
    client = RegistryClient(Transport(state.registry_url, ca_file=state.ca_file), (state.username, state.password))
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        layout = Path(tmp) / "vulnerable"
        debian_image(layout, tag, VULNERABLE)
        body, media_type = read_tagged(layout, tag)
        doc = json.loads(body)
        for descriptor in (doc["config"], *doc["layers"]):
            client.push_blob(repository, read_blob(layout, descriptor["digest"]))
        digest = client.put_manifest(repository, tag, body, media_type)
    pushed = time.monotonic()
    s3 = aws_client("s3", state.s3_endpoint, state.ca_file, "eu-west-1")
    key = latest_key(digest)
    while True:
        try:
            report = parse_report(s3.get_object(Bucket=state.bucket, Key=key)["Body"].read())
            break
        except s3.exceptions.NoSuchKey:
            if time.monotonic() - pushed > timeout:
                raise RuntimeError(
                    f"no scan report of {repository}@{digest} after {timeout:.0f}s: see the lab's events.log and "
                    "scanner.log"
                ) from None
            time.sleep(0.25)
    host = state.registry_url.removeprefix("https://")
    findings = [
        f"{f.id} {f.severity} {f.package} {f.installed_version} -> {f.fixed_version or 'no fix'}"
        for f in report.findings
    ]
    seconds = time.monotonic() - pushed
    image = f"{host}/{repository}:{tag}"
    refused = None
    if blocking is not None:  # the gate refuses it: the digest, the highest severity and the CVE named
        refused = refused_pull(state, image, (digest, report.highest_severity, *(f.id for f in report.findings[:1])))
    return ScanResult(
        image, digest, seconds, f"s3://{state.bucket}/{key}", report.highest_severity, findings, refused
    )  # fmt: skip
