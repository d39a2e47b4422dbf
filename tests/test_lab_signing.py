"""Pull-time enforcement through the lab's load balancer, as clients meet it: the dev stack protects
`team-a/release` (access.pullPolicies), the lab runs one gate per registry instance and nginx sends them what
the ALB's gate listener rules send to the gate target group (lab/nginx.py; tests/test_lab_nginx.py compares the
two rule by rule). skopeo and a plain HTTPS client pull by tag and by digest; images are signed with
`python -m fleet sign dev IMAGE --lab` (the lab's key in moto's KMS). Which upstream answered each request is
read from nginx's access log (`upstream=` the gate's or a registry instance's address).

tests/test_signing_lab.py tests the gate itself (a gate of its own in front of one registry) and cosign as the
independent verifier; this module tests the lab as `make lab` runs it. Tests run in file order: the last one
stops the gates and starts them again. A missing binary fails the lab's start (it never skips).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet import cli
from fleet.signing import lab_target
from gate.config import load_config
from host.gate_config import ReportsLocation, gate_config
from host.scan_config import SCANNER_ROBOT
from infra.gate_spec import gate_policies
from lab import supervisor
from lab.accounts import registry_token
from lab.debian_tools import foreign_program
from lab.image import build_image, skopeo_digest
from lab.lab import GATES, INSTANCES, Lab, LabState
from lab.overrides import LAB_BUCKET
from lab.scanning import SCANNER_ACCOUNT
from signing import cosign
from signing.kms import KmsSigner
from tests.helpers import settings_with
from tests.helpers.lab import host, password, push, skopeo
from tests.helpers.registry import Response, call
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

PROTECTED = "team-a/release"
DEV = "team-a-developer"  # the demo account: may push to team-a and under it
READER = "team-a-reader"
ACCEPT = f"{cosign.OCI_INDEX}, {cosign.OCI_MANIFEST}, {cosign.DOCKER_MANIFEST}"
# nginx's `lab` log format (lab/nginx.py): the request line, the status, ..., `upstream=ADDRESS`.
LOG_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) .* upstream=(?P<upstream>\S+)$'
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab-signing")
    state = Lab(settings_with("dev", {}), directory).up()  # the dev stack: team-a/release protected
    try:
        yield state
    finally:
        Lab.down(directory)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images `1` and `2` (different contents) in an OCI layout."""
    path = tmp_path_factory.mktemp("images") / "layout"
    for tag in ("1", "2"):
        build_image(path, tag, [{"small.bin": 16 * 1024}, {"payload.bin": 512 * 1024}])
    return path


# --- helpers --------------------------------------------------------------------------------------


def put(lab: LabState, layout: Path, tag: str, ref: str) -> str:
    """Push image `tag` of the layout to REPO:TAG through the load balancer; its digest."""
    proc = push(lab, f"oci:{layout}:{tag}", DEV, ref)
    assert proc.returncode == 0, proc.stderr
    return skopeo_digest(f"oci:{layout}:{tag}", "", None)


def fleet(lab: LabState, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([argv[0], "dev", *argv[1:], "--lab", "--state-dir", lab.state_dir], out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def bearer(lab: LabState, repo: str, account: str = READER) -> str:
    status, body = registry_token(
        lab.token["realm"], lab.token["service"], lab.ca_file, (account, password(lab, account)),
        [f"repository:{repo}:pull"],
    )  # fmt: skip
    assert status == 200, body
    return str(body["token"])


def via_lb(lab: LabState, method: str, path: str, repo: str, url: str | None = None) -> Response:
    """A plain HTTPS request to the load balancer (or `url`), raw path as given, a reader's token for `repo`."""
    return call(lab.ca_file, method, (url or lab.registry_url) + path, {"Accept": ACCEPT}, bearer=bearer(lab, repo))


def inspect(lab: LabState, ref: str) -> tuple[int, str]:
    proc = skopeo(
        lab, "inspect", "--raw", "--cert-dir", lab.cert_dir, "--creds", f"{READER}:{password(lab, READER)}",
        f"docker://{host(lab)}/{ref}",
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def assert_denied(resp: Response, repo: str, digest: str) -> None:
    status, _, body = resp
    assert status == 403, (status, body[:300])
    assert b"schemaVersion" not in body
    if body:  # HEAD has none
        (error,) = json.loads(body)["errors"]
        assert error["code"] == "DENIED" and f"{repo}@{digest}: no valid signature" in error["message"], error


def assert_served(resp: Response, digest: str, method: str) -> None:
    status, headers, body = resp
    assert status == 200, (status, body[:300])
    assert headers["docker-content-digest"] == digest
    if method == "GET":
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


def access_log(lab: LabState) -> list[dict[str, str]]:
    lines = (Path(lab.state_dir) / "nginx-access.log").read_text().splitlines()
    return [m.groupdict() for line in lines if (m := LOG_LINE.search(line))]


def gate_addresses(lab: LabState) -> set[str]:
    return {f"127.0.0.1:{lab.services[g]['ports']['https']}" for g in GATES}


def registry_addresses(lab: LabState) -> set[str]:
    return {f"127.0.0.1:{lab.services[i]['ports']['https']}" for i in INSTANCES}


# --- the lab's key and gates ----------------------------------------------------------------------


def test_status_names_the_signing_key_and_the_gates_are_healthy(lab: LabState) -> None:
    status = Lab.status(Path(lab.state_dir))
    signing = status["signing"]
    assert signing["protectedNamespaces"] == [PROTECTED, "team-a/scanned"]  # signed, and scan-blocking
    assert signing["alias"] == "alias/registry-fleet-dev-signing" and signing["keyId"].startswith("arn:aws:kms:")
    key_file = Path(signing["publicKeyFile"])
    assert key_file.stat().st_mode & 0o777 == 0o644
    target = lab_target(lab, None)
    assert key_file.read_text() == KmsSigner(target.kms(), "alias/registry-fleet-dev-signing").public_key_pem()
    assert KmsSigner(target.kms(), signing["keyId"]).public_key_pem() == key_file.read_text()
    health = {p["name"]: p["health"] for p in status["processes"]}
    assert {g: health[g] for g in GATES} == {g: "healthy" for g in GATES}


def test_each_gate_has_the_fleets_config_with_its_own_instance_as_upstream(lab: LabState) -> None:
    public_key = Path(lab.signing["public_key_file"]).read_text()
    settings = settings_with("dev", {})
    reports = ReportsLocation(LAB_BUCKET, settings.region)
    fleet_config = gate_config(gate_policies(settings), [public_key], reports=reports)
    for gate, instance in zip(GATES, INSTANCES, strict=True):
        path = Path(lab.state_dir) / f"{gate}.yml"
        config = yaml.safe_load(path.read_text())
        # The lab's reports live in its moto S3: the endpoint and its CA are the lab's own.
        assert config["reports"] == {**fleet_config["reports"], "endpoint_url": lab.s3_endpoint,
                                     "ca_bundle": lab.ca_file}  # fmt: skip
        # The scanner's robot is the lab's stand-in account for it (lab/scanning.py).
        assert config["scanner_accounts"] == [SCANNER_ACCOUNT] and fleet_config["scanner_accounts"] == [SCANNER_ROBOT]
        departures = {"upstream", "upstream_ca_file", "upstream_server_name", "reports", "scanner_accounts"}
        assert {k: v for k, v in config.items() if k not in departures} == {
            k: v for k, v in fleet_config.items() if k not in departures
        }
        assert config["upstream"] == f"https://127.0.0.1:{lab.services[instance]['ports']['https']}"
        assert load_config(path).protected(f"{PROTECTED}/app") and not load_config(path).protected("team-a/app")


def test_trust_policy_lab_gives_the_labs_key_for_the_protected_namespace(lab: LabState) -> None:
    code, out = fleet(lab, "trust-policy", "--format", "containers")
    assert code == 0, out
    policy = json.loads(out.split("\n", 1)[1].split("\n# /etc/containers/registries.d/", 1)[0])
    (requirement,) = policy["transports"]["docker"][f"{host(lab)}/{PROTECTED}"]
    assert base64.b64decode(requirement["keyData"]).decode() == Path(lab.signing["public_key_file"]).read_text()


# --- pulls through the load balancer ------------------------------------------------------------


def test_an_unsigned_image_is_refused_by_tag_and_by_digest(lab: LabState, layout: Path) -> None:
    repo = f"{PROTECTED}/unsigned"
    digest = put(lab, layout, "1", f"{repo}:1")
    for ref in ("1", digest):
        code, out = inspect(lab, f"{repo}{'@' if ref == digest else ':'}{ref}")
        assert code != 0 and "denied" in out and f"{repo}@{digest}: no valid signature" in out, out
        for method in ("GET", "HEAD"):
            assert_denied(via_lb(lab, method, f"/v2/{repo}/manifests/{ref}", repo), repo, digest)
    assert fleet(lab, "verify", f"{repo}:1")[0] == 1  # `verify` tells "not signed", not a failure to resolve


def test_a_signed_image_is_served_by_tag_and_by_digest(lab: LabState, layout: Path, tmp_path: Path) -> None:
    repo = f"{PROTECTED}/signed"
    digest = put(lab, layout, "1", f"{repo}:1")
    assert_denied(via_lb(lab, "GET", f"/v2/{repo}/manifests/1", repo), repo, digest)
    code, out = fleet(lab, "sign", f"{repo}:1")
    assert code == 0 and f"signed: {host(lab)}/{repo}@{digest}" in out, out
    assert fleet(lab, "verify", f"{repo}:1")[0] == 0
    for ref in ("1", digest):
        for method in ("GET", "HEAD"):
            assert_served(via_lb(lab, method, f"/v2/{repo}/manifests/{ref}", repo), digest, method)
        code, out = inspect(lab, f"{repo}{'@' if ref == digest else ':'}{ref}")
        assert code == 0 and "sha256:" + hashlib.sha256(out.encode()).hexdigest() == digest, out
    pulled = skopeo(
        lab, "copy", "--quiet", "--src-cert-dir", lab.cert_dir, "--src-creds", f"{READER}:{password(lab, READER)}",
        f"docker://{host(lab)}/{repo}:1", f"oci:{tmp_path / 'back'}:1",
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert skopeo_digest(f"oci:{tmp_path / 'back'}:1", "", None) == digest


def test_a_signed_tag_moved_to_an_unsigned_digest_is_refused_on_the_next_pull(lab: LabState, layout: Path) -> None:
    repo = f"{PROTECTED}/moving"
    signed = put(lab, layout, "1", f"{repo}:prod")
    assert fleet(lab, "sign", f"{repo}:prod")[0] == 0
    assert inspect(lab, f"{repo}:prod")[0] == 0
    unsigned = put(lab, layout, "2", f"{repo}:prod")
    code, out = inspect(lab, f"{repo}:prod")
    assert code != 0 and f"{repo}@{unsigned}: no valid signature" in out, out
    assert inspect(lab, f"{repo}@{signed}")[0] == 0  # the signed digest itself still is served


def test_percent_encoded_and_odd_paths_are_still_checked(lab: LabState, layout: Path) -> None:
    """The load balancer matches the path as sent; the registry decodes and cleans it. Every spelling of a
    protected manifest read reaches the gate (the odd-path rule) and is checked: refused unsigned, served
    signed. The twin: the same spellings sent straight to a registry instance get the unsigned manifest."""
    repo = f"{PROTECTED}/odd"
    unsigned = put(lab, layout, "1", f"{repo}:1")
    signed_repo = f"{PROTECTED}/odd-signed"
    signed = put(lab, layout, "2", f"{signed_repo}:1")
    assert fleet(lab, "sign", f"{signed_repo}:1")[0] == 0

    def spellings(name: str, ref: str) -> list[str]:
        ns, _, app = name.rpartition("/")
        return [
            f"/v2/{name.replace('/', '%2F')}/manifests/{ref}",
            f"/v2/{ns}%2F{app}/manifests/{ref}",
            f"/v2/{name}/%6Danifests/{ref}",
            f"/v2/%74eam-a/release/{app}/manifests/{ref}",
            f"/v2/{name}/manifests/{ref.replace(':', '%3A')}",
        ]

    registry_a = f"https://127.0.0.1:{lab.services[INSTANCES[0]]['ports']['https']}"
    for path in spellings(repo, "1") + spellings(repo, unsigned):
        assert_denied(via_lb(lab, "GET", path, repo), repo, unsigned)
        assert_served(via_lb(lab, "GET", path, repo, url=registry_a), unsigned, "GET")  # the twin
    for path in spellings(signed_repo, "1"):
        assert_served(via_lb(lab, "GET", path, signed_repo), signed, "GET")
    gated = [e for e in access_log(lab) if "%" in (path := e["uri"].split("?", 1)[0]) and "/odd" in path]
    assert gated and {e["upstream"] for e in gated} <= gate_addresses(lab)


def test_unprotected_namespaces_are_unaffected(lab: LabState, layout: Path) -> None:
    for repo in ("team-a/app", "team-a/releases/app", "team-a/release-candidate"):
        digest = put(lab, layout, "1", f"{repo}:1")
        code, out = inspect(lab, f"{repo}:1")
        assert code == 0, out
        for method in ("GET", "HEAD"):
            assert_served(via_lb(lab, method, f"/v2/{repo}/manifests/1", repo), digest, method)
        reads = [e for e in access_log(lab) if e["uri"].startswith(f"/v2/{repo}/manifests/")]
        assert reads and {e["upstream"] for e in reads} <= registry_addresses(lab), reads


def test_blob_downloads_and_pushes_do_not_pass_through_the_gates(lab: LabState, layout: Path) -> None:
    """nginx's access log names the upstream of every request: the gates got only manifest reads (GET, HEAD)
    of the protected namespace or odd paths; every upload and blob download went to a registry instance."""
    entries = access_log(lab)
    gates, registries = gate_addresses(lab), registry_addresses(lab)
    to_gates = [e for e in entries if e["upstream"] in gates]
    assert to_gates, "no request reached a gate: the check below would prove nothing"
    for e in to_gates:
        path = e["uri"].split("?", 1)[0]
        odd = "%" in path or "//" in path or "/./" in path or "/../" in path
        manifest_read = e["method"] in ("GET", "HEAD") and (odd or re.match(rf"^/v2/{PROTECTED}/.+/manifests/", path))
        assert manifest_read, e
    blob_reads = [e for e in entries if e["method"] in ("GET", "HEAD") and f"/v2/{PROTECTED}/" in e["uri"]
                  and "/blobs/sha256:" in e["uri"]]  # fmt: skip
    uploads = [e for e in entries if e["method"] in ("POST", "PATCH", "PUT") and f"/v2/{PROTECTED}/" in e["uri"]]
    assert blob_reads and uploads, "the module pushed and pulled in the protected namespace"
    assert {e["upstream"] for e in blob_reads + uploads} <= registries


# --- an independent verifier: skopeo 1.18 with the trust policy -------------------------------------
# Debian 12's skopeo 1.9 cannot verify sigstore signatures (Debian patched that out); Debian 13's skopeo 1.18
# can, and runs here through Debian 13's own loader and libraries (lab.debian_tools.foreign_program).
TRIXIE_SKOPEO = ("skopeo", "libc6", "libgpgme11t64", "libsqlite3-0", "libassuan9", "libgpg-error0")


@pytest.fixture(scope="module")
def skopeo_118() -> tuple[str, ...]:
    argv = foreign_program("usr/bin/skopeo", TRIXIE_SKOPEO)
    version = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "skopeo version 1.18" in version.stdout, version.stderr
    return argv


def policy_copy(lab: LabState, skopeo_argv: tuple[str, ...], policy_dir: Path, ref: str, dest: Path) -> tuple[int, str]:
    """skopeo 1.18 copies REF out of the lab under the trust policy in `policy_dir` (the policy is checked at the
    source; an OCI layout cannot hold the signatures, hence --remove-signatures)."""
    home = Path(lab.state_dir) / f"home-{dest.name}"
    home.mkdir()
    proc = subprocess.run(
        [
            *skopeo_argv,
            "--policy", str(policy_dir / "policy.json"), "--registries.d", str(policy_dir / "registries.d"),
            "copy", "--quiet", "--remove-signatures",
            "--src-cert-dir", lab.cert_dir, "--src-creds", f"{READER}:{password(lab, READER)}",
            f"docker://{host(lab)}/{ref}", f"oci:{dest}:x",
        ],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )  # fmt: skip
    return proc.returncode, proc.stderr


def test_skopeo_1_18_with_the_trust_policy_accepts_the_signed_image_and_refuses_the_unsigned_one(
    lab: LabState, layout: Path, tmp_path: Path, skopeo_118: tuple[str, ...]
) -> None:
    """`fleet trust-policy --format containers` for a namespace the gate does not protect, so that skopeo's own
    policy check, not the gate, decides: the signed tag copies, the unsigned one is refused by skopeo."""
    namespace, repo = "team-a/verified", "team-a/verified/app"
    signed, unsigned = put(lab, layout, "1", f"{repo}:signed"), put(lab, layout, "2", f"{repo}:unsigned")
    assert fleet(lab, "sign", f"{repo}:signed")[0] == 0
    policy_dir = tmp_path / "policy"
    code, out = fleet(
        lab, "trust-policy", "--format", "containers", "--namespace", namespace, "--output-dir", str(policy_dir)
    )
    assert code == 0, out
    code, err = policy_copy(lab, skopeo_118, policy_dir, f"{repo}:signed", tmp_path / "signed")
    assert code == 0, err
    assert skopeo_digest(f"oci:{tmp_path / 'signed'}:x", "", None) == signed
    code, err = policy_copy(lab, skopeo_118, policy_dir, f"{repo}:unsigned", tmp_path / "unsigned")
    assert code != 0 and "signature" in err.lower(), err
    assert unsigned != signed
    # The broken twin: the same policy with another key refuses the signed image too.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    policy = json.loads((policy_dir / "policy.json").read_text())
    for requirements in policy["transports"]["docker"].values():
        requirements[0]["keyData"] = base64.b64encode(other_pem).decode()
    (policy_dir / "policy.json").write_text(json.dumps(policy))
    code, err = policy_copy(lab, skopeo_118, policy_dir, f"{repo}:signed", tmp_path / "other-key")
    assert code != 0 and "signature" in err.lower(), err


# Last: it stops the gates.
def test_without_the_gates_pushes_and_blob_downloads_go_on_and_protected_manifests_are_not_served(
    lab: LabState, layout: Path, tmp_path: Path
) -> None:
    """The gates are on the manifest-read path only: with both stopped, a push to the protected namespace and a
    blob download from it still work, and its manifest reads fail (502): nothing is served unchecked."""
    signed_repo = f"{PROTECTED}/signed"  # signed above
    digest = skopeo_digest(f"oci:{layout}:1", "", None)
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    for gate in GATES:
        supervisor.stop(lab.service(gate))
    try:
        put(lab, layout, "2", f"{PROTECTED}/while-gates-down:1")
        status, headers, body = via_lb(lab, "GET", f"/v2/{signed_repo}/blobs/{manifest['layers'][1]['digest']}",
                                       signed_repo)  # fmt: skip
        assert status == 307 and headers["location"].startswith(lab.edge_url), (status, headers)
        status, _, body = call(lab.ca_file, "GET", headers["location"])
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == manifest["layers"][1]["digest"]
        status, _, body = via_lb(lab, "GET", f"/v2/{signed_repo}/manifests/1", signed_repo)
        assert status == 502 and b"schemaVersion" not in body, (status, body[:200])
        assert via_lb(lab, "GET", "/v2/team-a/app/manifests/1", "team-a/app")[0] == 200  # unprotected: as before
    finally:
        for gate in GATES:
            Lab.restart(Path(lab.state_dir), gate)
    lab.services.update(LabState.load(Path(lab.state_dir)).services)
    wait_for(
        lambda: via_lb(lab, "GET", f"/v2/{signed_repo}/manifests/1", signed_repo)[0] == 200, 20, "signed served again"
    )
