"""Signed images for real: `fleet sign`/`verify` against the dev stack's lab (Debian's docker-registry with
token auth, the token service, moto KMS), cosign 2.5.0 as the independent verifier, and the pull-time gate
(`python -m gate`, gunicorn, TLS) in front of one of the lab's registries, with skopeo and a plain HTTPS
client talking to the gate directly (the lab's nginx does not route to it yet).

cosign is Debian 13's package, fetched with `apt-get download` into .cache/debian/trixie without touching
the machine's apt sources (lab/debian_tools.py) and run with a throwaway DOCKER_CONFIG holding the lab
account, trusting the lab CA through SSL_CERT_FILE. The lab has no signing key of its own yet: the module
makes `alias/registry-fleet-dev-signing` (ECC_NIST_P256, SIGN_VERIFY) in the lab's moto KMS when it is
missing. A missing binary fails the module.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fleet import cli
from fleet.signing import Target, attach, lab_target, signing_key_alias
from gate.app import Gate
from gate.config import parse_config
from lab import supervisor
from lab.accounts import registry_token
from lab.debian_tools import fetch
from lab.image import build_image
from lab.lab import STATE_FILE, Lab, LabState
from signing import cosign
from signing.kms import KmsSigner
from tests.helpers import settings_with
from tests.helpers.lab import host, password, push, skopeo
from tests.helpers.registry import Response, call, status_of
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV = "team-a-developer"  # may push to team-a (protected in these tests)
READER = "team-a-reader"
B_DEV = "team-b-developer"  # team-b stays unprotected
MANIFEST_ACCEPT = f"{cosign.OCI_INDEX}, {cosign.OCI_MANIFEST}, {cosign.DOCKER_MANIFEST}"


@dataclass
class Env:
    lab: LabState
    public_key: Path  # the stack key's PEM
    gate_url: str
    gate_log: str
    gate: supervisor.Service
    gate_config: Path
    layout: Path
    digests: dict[str, str]  # image tag in the layout -> manifest digest once pushed

    @property
    def gate_host(self) -> str:
        return self.gate_url.removeprefix("https://")


def ensure_signing_key(state: LabState) -> Target:
    """The stack's signing key in the lab's moto KMS (made here until the lab makes its own)."""
    target = lab_target(state, DEV)
    kms = target.kms()
    try:
        kms.describe_key(KeyId=target.key_id)
    except kms.exceptions.NotFoundException:
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=signing_key_alias(state.stack), TargetKeyId=key_id)
    return target


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory = tmp_path_factory.mktemp("signing-lab")
    state = Lab(settings_with("dev", {}), directory / "lab").up()
    gate: supervisor.Service | None = None
    try:
        target = ensure_signing_key(state)
        public_key = directory / "stack.pub"
        public_key.write_text(KmsSigner(target.kms(), target.key_id).public_key_pem())
        layout = directory / "layout"
        for tag in ("1", "2", "3"):
            build_image(layout, tag, [{"a.bin": 24 * 1024}])
        upstream = state.services["registry-a"]["ports"]["https"]
        config = directory / "gate.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "upstream": f"https://127.0.0.1:{upstream}",
                    "upstream_ca_file": state.ca_file,
                    "upstream_server_name": "localhost",  # the lab certificate's other name: SNI and check
                    "public_keys": [public_key.read_text()],
                    "namespaces": {"team-a": {"require_signed": True}},
                    "cache_seconds": 300,
                }
            )
        )
        port = supervisor.free_port()
        pki = Path(state.state_dir) / "pki"
        gate = supervisor.Service(
            "gate",
            [
                sys.executable, "-m", "gate", "--config", str(config), "--bind", f"127.0.0.1:{port}",
                "--certfile", str(pki / "server.crt"), "--keyfile", str(pki / "server.key"),
                "--workers", "1", "--threads", "8",
            ],
            str(directory / "gate.log"),
            {"https": port},
            env=supervisor.clean_env({}),
        )  # fmt: skip
        supervisor.start(gate, cwd=REPO_ROOT)
        url = f"https://127.0.0.1:{port}"
        supervisor.wait_ready(gate, lambda: status_of(state.ca_file, f"{url}/healthz") == 200)
        yield Env(state, public_key, url, gate.log, gate, config, layout, {})
    finally:
        if gate is not None:
            supervisor.stop(gate)
        if (Path(state.state_dir) / STATE_FILE).exists():
            Lab.down(Path(state.state_dir))


# --- helpers --------------------------------------------------------------------------------------


def fleet(env: Env, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([*argv[:1], "dev", *argv[1:], "--lab", "--state-dir", env.lab.state_dir], out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def put(env: Env, tag: str, repo: str, account: str = DEV) -> str:
    """Push image `tag` of the layout to `repo` (REPO:TAG) through the lab's nginx; its digest."""
    proc = push(env.lab, f"oci:{env.layout}:{tag}", account, repo)
    assert proc.returncode == 0, proc.stderr
    client = lab_target(env.lab, account).client()
    name, _, ref = repo.partition(":")
    return client.get_manifest(name, ref).digest


def bearer(env: Env, account: str, repo: str, actions: str = "pull") -> str:
    status, body = registry_token(
        env.lab.token["realm"], env.lab.token["service"], env.lab.ca_file,
        (account, password(env.lab, account)), [f"repository:{repo}:{actions}"],
    )  # fmt: skip
    assert status == 200, body
    return str(body["token"])


def via_gate(env: Env, method: str, repo: str, ref: str, account: str | None = READER, **headers: str) -> Response:
    token = bearer(env, account, repo) if account else None
    url = f"{env.gate_url}/v2/{repo}/manifests/{ref}"
    return call(env.lab.ca_file, method, url, {"Accept": MANIFEST_ACCEPT, **headers}, bearer=token)


def assert_denied(resp: Response, digest: str) -> None:
    status, headers, body = resp
    assert status == 403, (status, body[:300])
    if body:  # HEAD has none
        error = json.loads(body)["errors"][0]
        assert error["code"] == "DENIED" and digest in error["message"] and "no valid signature" in error["message"]
        assert error["detail"]["digest"] == digest
    assert "docker-content-digest" not in headers or headers["docker-content-digest"] == digest
    assert b"schemaVersion" not in body


def skopeo_inspect(env: Env, ref: str, account: str = READER) -> subprocess.CompletedProcess[str]:
    creds = f"{account}:{password(env.lab, account)}"
    return skopeo(env.lab, "inspect", "--raw", "--cert-dir", env.lab.cert_dir, "--creds", creds, f"docker://{ref}")


def cosign_bin() -> Path:
    binary = fetch("cosign") / "usr" / "bin" / "cosign"
    assert binary.exists(), f"{binary}: the cosign package holds no binary there"
    return binary


def run_cosign(env: Env, *args: str, account: str = DEV, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """cosign with a throwaway HOME and DOCKER_CONFIG (the lab account for the lab registry and the gate),
    trusting the lab CA only, none of the caller's environment."""
    home = Path(env.lab.state_dir) / f"cosign-{secrets.token_hex(4)}"
    (home / "docker").mkdir(parents=True)
    auth = base64.b64encode(f"{account}:{password(env.lab, account)}".encode()).decode()
    auths = {h: {"auth": auth} for h in (host(env.lab), env.gate_host)}
    (home / "docker" / "config.json").write_text(json.dumps({"auths": auths}))
    run_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / "docker"),
        "SSL_CERT_FILE": env.lab.ca_file,
        "COSIGN_PASSWORD": "lab-only",
        "COSIGN_YES": "true",
    }
    return subprocess.run(
        [str(cosign_bin()), *args], capture_output=True, text=True, env=run_env, cwd=cwd or home, timeout=120
    )


def cosign_verify(env: Env, image: str, key: Path, registry: str | None = None) -> subprocess.CompletedProcess[str]:
    # --insecure-ignore-tlog skips the Rekor transparency log lookup (the stack uploads none), not TLS:
    # cosign still verifies the registry's certificate against the lab CA (SSL_CERT_FILE above).
    return run_cosign(
        env, "verify", "--key", str(key), "--insecure-ignore-tlog", f"{registry or host(env.lab)}/{image}"
    )


def attach_signature(env: Env, repo: str, digest: str, payload: bytes, der: bytes) -> None:
    attach(lab_target(env.lab, DEV).client(), repo, digest, cosign.Signature(payload, cosign.encode_signature(der)))


def kms_sign(env: Env, payload: bytes) -> bytes:
    target = lab_target(env.lab, DEV)
    return KmsSigner(target.kms(), target.key_id).sign(payload)


def reference(env: Env, repo: str) -> str:
    return f"{host(env.lab)}/{repo}"


# --- fleet sign / verify ----------------------------------------------------------------------------


def test_fleet_sign_then_verify(env: Env) -> None:
    digest = put(env, "1", "team-a/app:signed")
    code, text = fleet(env, "verify", "team-a/app:signed")
    assert code == 1 and "no-signature" in text, text
    code, text = fleet(env, "sign", "team-a/app:signed")
    assert code == 0 and f"signed: {reference(env, 'team-a/app')}@{digest}" in text, text
    code, text = fleet(env, "verify", "team-a/app:signed")
    assert code == 0 and "valid" in text, text
    code, text = fleet(env, "verify", f"team-a/app@{digest}")
    assert code == 0, text
    # Once more: nothing added (one layer in the .sig manifest).
    code, text = fleet(env, "sign", "team-a/app:signed")
    assert code == 0 and "already signed" in text, text
    sig = lab_target(env.lab, DEV).client().get_manifest("team-a/app", cosign.signature_tag(digest))
    assert len(json.loads(sig.body)["layers"]) == 1


def test_fleet_user_mistakes_and_missing_images(env: Env) -> None:
    code, text = fleet(env, "verify", "team-a/app:no-such-tag")
    assert code == 2 and "no image team-a/app:no-such-tag" in text, text
    code, text = fleet(env, "sign", "team-a/nothing-here:1")
    assert code == 2 and "no image" in text, text
    code, text = fleet(env, "sign", "team-a/app:signed", "--username", "nobody")
    assert code == 2 and "no such lab account" in text, text


def test_fleet_sign_without_push_rights_is_a_clear_error(env: Env) -> None:
    put(env, "2", "team-a/readonly:1")
    code, text = fleet(env, "sign", "team-a/readonly:1", "--username", READER)
    assert code == 2 and f"account {READER} may not push to team-a/readonly" in text, text


def test_fleet_sign_without_kms_sign_permission_is_a_clear_error(env: Env) -> None:
    """moto does not enforce key policies: a key that does not exist stands in for a denied one here;
    the AccessDenied message itself is checked in tests/test_signing_unit.py."""
    put(env, "2", "team-a/nokey:1")
    target = lab_target(env.lab, DEV)
    target.key_id = "alias/registry-fleet-missing-signing"
    from fleet.signing import SignError, sign
    from signing.references import parse_image

    with pytest.raises(SignError, match="alias/registry-fleet-missing-signing not found"):
        sign(target, parse_image("team-a/nokey:1"), False, io.StringIO())


# --- cosign, the independent verifier ----------------------------------------------------------------


def test_cosign_accepts_the_fleet_signature(env: Env) -> None:
    digest = put(env, "1", "team-a/cosign-ok:1")
    assert fleet(env, "sign", "team-a/cosign-ok:1")[0] == 0
    proc = cosign_verify(env, f"team-a/cosign-ok@{digest}", env.public_key)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == digest


def test_cosign_refuses_an_unsigned_image(env: Env) -> None:
    digest = put(env, "1", "team-a/cosign-unsigned:1")
    proc = cosign_verify(env, f"team-a/cosign-unsigned@{digest}", env.public_key)
    assert proc.returncode != 0 and "no signatures found" in proc.stderr, proc.stderr


def test_cosign_refuses_a_tampered_payload(env: Env) -> None:
    digest = put(env, "1", "team-a/cosign-tampered:1")
    signed_payload = cosign.payload(reference(env, "team-a/cosign-tampered"), digest)
    der = kms_sign(env, signed_payload)
    tampered = cosign.payload(reference(env, "team-a/cosign-tampered"), digest, {"note": "changed after signing"})
    attach_signature(env, "team-a/cosign-tampered", digest, tampered, der)
    proc = cosign_verify(env, f"team-a/cosign-tampered@{digest}", env.public_key)
    assert proc.returncode != 0 and "invalid signature" in proc.stderr.lower(), proc.stderr
    code, text = fleet(env, "verify", "team-a/cosign-tampered:1")
    assert code == 1 and "bad-signature" in text, text
    # The twin: the same payload as signed verifies with both.
    attach_signature(env, "team-a/cosign-tampered", digest, signed_payload, der)
    assert cosign_verify(env, f"team-a/cosign-tampered@{digest}", env.public_key).returncode == 0
    assert fleet(env, "verify", "team-a/cosign-tampered:1")[0] == 0


def test_cosign_refuses_another_keys_signature(env: Env) -> None:
    digest = put(env, "1", "team-a/cosign-otherkey:1")
    body = cosign.payload(reference(env, "team-a/cosign-otherkey"), digest)
    other = ec.generate_private_key(ec.SECP256R1())
    attach_signature(env, "team-a/cosign-otherkey", digest, body, other.sign(body, ec.ECDSA(hashes.SHA256())))
    proc = cosign_verify(env, f"team-a/cosign-otherkey@{digest}", env.public_key)
    assert proc.returncode != 0, proc.stdout
    code, text = fleet(env, "verify", "team-a/cosign-otherkey:1")
    assert code == 1 and "bad-signature" in text, text


def test_cosign_made_signatures_verify_with_ours_and_both_are_kept(env: Env) -> None:
    digest = put(env, "2", "team-a/by-cosign:1")
    key_dir = Path(env.lab.state_dir) / "cosign-keys"
    key_dir.mkdir()
    keys = run_cosign(env, "generate-key-pair", cwd=key_dir)
    assert keys.returncode == 0, keys.stderr
    signed = run_cosign(
        env,
        "sign",
        "--key",
        str(key_dir / "cosign.key"),
        "--tlog-upload=false",
        f"{reference(env, 'team-a/by-cosign')}@{digest}",
    )
    assert signed.returncode == 0, signed.stderr
    code, text = fleet(env, "verify", "team-a/by-cosign:1", "--public-key", str(key_dir / "cosign.pub"))
    assert code == 0 and "valid" in text, text
    code, text = fleet(env, "verify", "team-a/by-cosign:1")  # the stack's key did not sign it
    assert code == 1 and "bad-signature" in text, text
    # fleet sign adds its layer beside cosign's: both keys verify, with cosign and with ours.
    assert fleet(env, "sign", "team-a/by-cosign:1")[0] == 0
    assert fleet(env, "verify", "team-a/by-cosign:1", "--public-key", str(key_dir / "cosign.pub"))[0] == 0
    assert fleet(env, "verify", "team-a/by-cosign:1")[0] == 0
    image = f"team-a/by-cosign@{digest}"
    assert cosign_verify(env, image, key_dir / "cosign.pub").returncode == 0
    assert cosign_verify(env, image, env.public_key).returncode == 0


# --- the gate -------------------------------------------------------------------------------------


def test_gate_serves_a_signed_image_to_skopeo_and_http(env: Env) -> None:
    digest = put(env, "1", "team-a/served:1")
    assert fleet(env, "sign", "team-a/served:1")[0] == 0
    proc = skopeo_inspect(env, f"{env.gate_host}/team-a/served:1")
    assert proc.returncode == 0, proc.stderr
    assert "sha256:" + hashlib.sha256(proc.stdout.encode()).hexdigest() == digest
    layout = Path(env.lab.state_dir) / "pulled"
    creds = f"{READER}:{password(env.lab, READER)}"
    copy = skopeo(env.lab, "copy", "--quiet", "--src-cert-dir", env.lab.cert_dir, "--src-creds", creds,
                  f"docker://{env.gate_host}/team-a/served:1", f"oci:{layout}:1")  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    for ref in ("1", digest):
        status, headers, body = via_gate(env, "GET", "team-a/served", ref)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert headers["docker-content-digest"] == digest
        status, headers, body = via_gate(env, "HEAD", "team-a/served", ref)
        assert status == 200 and headers["docker-content-digest"] == digest and body == b""


def test_gate_refuses_an_unsigned_image_by_tag_and_by_digest(env: Env) -> None:
    digest = put(env, "3", "team-a/unsigned:1")
    for ref in ("1", digest):
        proc = skopeo_inspect(env, f"{env.gate_host}/team-a/unsigned{'@' if ':' in ref else ':'}{ref}")
        assert proc.returncode != 0 and "denied" in proc.stderr and digest in proc.stderr, proc.stderr
        assert_denied(via_gate(env, "GET", "team-a/unsigned", ref), digest)
        assert_denied(via_gate(env, "HEAD", "team-a/unsigned", ref), digest)
    layout = Path(env.lab.state_dir) / "refused"
    creds = f"{READER}:{password(env.lab, READER)}"
    copy = skopeo(env.lab, "copy", "--quiet", "--src-cert-dir", env.lab.cert_dir, "--src-creds", creds,
                  f"docker://{env.gate_host}/team-a/unsigned:1", f"oci:{layout}:1")  # fmt: skip
    assert copy.returncode != 0 and "denied" in copy.stderr, copy.stderr
    refusal = [json.loads(line) for line in Path(env.gate_log).read_text().splitlines() if "pull_refused" in line]
    assert any(r["repository"] == "team-a/unsigned" and r["digest"] == digest for r in refusal)


def test_gate_refuses_a_signed_tag_moved_to_an_unsigned_digest(env: Env) -> None:
    signed = put(env, "1", "team-a/moving:prod")
    assert fleet(env, "sign", "team-a/moving:prod")[0] == 0
    assert via_gate(env, "GET", "team-a/moving", "prod")[0] == 200
    unsigned = put(env, "3", "team-a/moving:prod")
    assert unsigned != signed
    assert_denied(via_gate(env, "GET", "team-a/moving", "prod"), unsigned)
    assert skopeo_inspect(env, f"{env.gate_host}/team-a/moving:prod").returncode != 0
    assert via_gate(env, "GET", "team-a/moving", signed)[0] == 200  # the signed digest itself still is


def test_gate_leaves_unprotected_namespaces_alone(env: Env) -> None:
    digest = put(env, "3", "team-b/free:1", account=B_DEV)
    proc = skopeo_inspect(env, f"{env.gate_host}/team-b/free:1", account=B_DEV)
    assert proc.returncode == 0, proc.stderr
    status, _, body = via_gate(env, "GET", "team-b/free", "1", account=B_DEV)
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_gate_passes_the_registry_challenge_through(env: Env) -> None:
    status, headers, body = via_gate(env, "GET", "team-a/unsigned", "1", account=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer realm=")
    assert b"schemaVersion" not in body


def test_cosign_verifies_through_the_gate(env: Env) -> None:
    """The `.sig` manifest itself carries no signature: the gate serves it (it has nothing to run), or no
    verifier could read signatures in a protected namespace."""
    digest = put(env, "1", "team-a/through:1")
    assert fleet(env, "sign", "team-a/through:1")[0] == 0
    proc = cosign_verify(env, f"team-a/through@{digest}", env.public_key, registry=env.gate_host)
    assert proc.returncode == 0, proc.stderr
    for method in ("GET", "HEAD"):
        status, headers, _ = via_gate(env, method, "team-a/through", cosign.signature_tag(digest))
        assert status == 200 and headers["docker-content-digest"].startswith("sha256:")


def test_gate_signs_and_serves_a_multi_arch_index_only_when_signed_recursively(env: Env) -> None:
    first = put(env, "1", "team-a/multi:amd64")
    second = put(env, "2", "team-a/multi:arm64")
    client = lab_target(env.lab, DEV).client()
    entries = []
    for digest, arch in ((first, "amd64"), (second, "arm64")):
        body = client.get_manifest("team-a/multi", digest).body
        entries.append({"mediaType": cosign.OCI_MANIFEST, "digest": digest, "size": len(body),
                        "platform": {"architecture": arch, "os": "linux"}})  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "mediaType": cosign.OCI_INDEX, "manifests": entries}).encode()
    client.put_manifest("team-a/multi", "1", index, cosign.OCI_INDEX)
    code, text = fleet(env, "sign", "team-a/multi:1")
    assert code == 0 and "--recursive" in text, text
    assert via_gate(env, "GET", "team-a/multi", "1")[0] == 200
    assert_denied(via_gate(env, "GET", "team-a/multi", first), first)
    code, text = fleet(env, "sign", "team-a/multi:1", "--recursive")
    lines = text.splitlines()
    assert code == 0 and sum(line.startswith("signed: ") for line in lines) == 2 and "already signed" in text, text
    assert via_gate(env, "GET", "team-a/multi", first)[0] == 200
    assert via_gate(env, "GET", "team-a/multi", second)[0] == 200


# --- hostile input: 4xx, never a manifest -------------------------------------------------------------


def test_gate_refuses_malformed_references(env: Env) -> None:
    token = bearer(env, READER, "team-a/served")
    for path in (
        "/v2/team-a/served/manifests/sha256:zz",
        "/v2/team-a/served/manifests/sha512:" + "0" * 128,
        "/v2/Team-A/served/manifests/1",
        "/v2/team-a/served/manifests/%2e%2e",
        "/v2/team-a/%2e%2e/served/manifests/1",
        "/v2/team-a/served/manifests/" + "x" * 200,
    ):
        status, _, body = call(env.lab.ca_file, "GET", env.gate_url + path, bearer=token)
        assert 400 <= status < 500 and b"schemaVersion" not in body, (path, status, body[:200])


def test_gate_refuses_huge_headers(env: Env) -> None:
    put(env, "1", "team-a/served:1")
    assert fleet(env, "sign", "team-a/served:1")[0] == 0
    token = bearer(env, READER, "team-a/served")
    status, _, body = via_gate(env, "GET", "team-a/served", "1", **{"X-Big": "a" * 9000})
    assert status in (400, 431) and b"schemaVersion" not in body, status
    many = {f"X-Many-{i}": "1" for i in range(40)}
    status, _, body = call(env.lab.ca_file, "GET", f"{env.gate_url}/v2/team-a/served/manifests/1", many, bearer=token)
    assert status in (400, 431) and b"schemaVersion" not in body, status
    long_path = "/v2/team-a/served/manifests/1?" + "q" * 9000
    status, _, body = call(env.lab.ca_file, "GET", env.gate_url + long_path, bearer=token)
    assert 400 <= status < 500 and b"schemaVersion" not in body
    assert via_gate(env, "GET", "team-a/served", "1")[0] == 200  # the twin: the same request, small


def push_sig_manifest(env: Env, repo: str, digest: str, payload: bytes, signature_b64: str) -> None:
    """Write a `.sig` manifest by hand (no merging, no checks): what an attacker with push rights can do."""
    client = lab_target(env.lab, DEV).client()
    sig = cosign.signature_manifest([cosign.Signature(payload, signature_b64).layer()])
    client.push_blob(repo, payload)
    client.push_blob(repo, sig.config)
    client.put_manifest(repo, cosign.signature_tag(digest), sig.manifest, cosign.OCI_MANIFEST)


def test_gate_refuses_a_sig_manifest_full_of_garbage(env: Env) -> None:
    digest = put(env, "3", "team-a/garbage:1")
    push_sig_manifest(env, "team-a/garbage", digest, b"\x00\xffnot a payload", "%%%not base64")
    assert_denied(via_gate(env, "GET", "team-a/garbage", "1"), digest)
    push_sig_manifest(env, "team-a/garbage", digest, b"\x00\xffnot a payload", base64.b64encode(b"junk").decode())
    status, _, body = via_gate(env, "GET", "team-a/garbage", "1")
    assert_denied((status, {}, body), digest)
    assert "bad-signature" in json.loads(body)["errors"][0]["detail"]["reason"]


def test_gate_refuses_a_signature_over_another_digest_or_repository(env: Env) -> None:
    signed = put(env, "1", "team-a/swap:signed")
    target = put(env, "3", "team-a/swap:target")
    # The stack key's genuine signature of another digest, copied under the target's `.sig` tag.
    body = cosign.payload(reference(env, "team-a/swap"), signed)
    push_sig_manifest(env, "team-a/swap", target, body, cosign.encode_signature(kms_sign(env, body)))
    status, _, answer = via_gate(env, "GET", "team-a/swap", "target")
    assert_denied((status, {}, answer), target)
    assert json.loads(answer)["errors"][0]["detail"]["reason"] == "other-digest"
    # A genuine signature of the same digest, made for another repository.
    body = cosign.payload(reference(env, "team-a/elsewhere"), target)
    push_sig_manifest(env, "team-a/swap", target, body, cosign.encode_signature(kms_sign(env, body)))
    status, _, answer = via_gate(env, "GET", "team-a/swap", "target")
    assert_denied((status, {}, answer), target)
    assert json.loads(answer)["errors"][0]["detail"]["reason"] == "other-repository"
    # The twin: the right repository and digest are served.
    body = cosign.payload(reference(env, "team-a/swap"), target)
    push_sig_manifest(env, "team-a/swap", target, body, cosign.encode_signature(kms_sign(env, body)))
    assert via_gate(env, "GET", "team-a/swap", "target")[0] == 200


def test_a_runnable_image_under_a_sig_tag_is_not_waved_through(env: Env) -> None:
    """Only what is really a signature manifest is served unsigned, whatever its tag says."""
    digest = put(env, "3", "team-a/sigtag:1")
    fake = put(env, "3", f"team-a/sigtag:{cosign.signature_tag('sha256:' + '0' * 64)}")
    assert_denied(via_gate(env, "GET", "team-a/sigtag", cosign.signature_tag("sha256:" + "0" * 64)), fake)
    assert fake == digest


# --- the cache ------------------------------------------------------------------------------------


def test_gate_caches_valid_signatures_only(env: Env) -> None:
    """In process, against the lab's registry: a valid result is remembered (a second pull reads no
    signature), a refusal is not (the next pull checks again, so signing takes effect at once)."""
    signed = put(env, "1", "team-a/cached:1")
    assert fleet(env, "sign", "team-a/cached:1")[0] == 0
    unsigned = put(env, "3", "team-a/cached:2")
    config = parse_config(yaml.safe_load((Path(env.gate_log).parent / "gate.yml").read_text()), Path("/"))
    gate = Gate(config)
    checks: list[str] = []
    real_verify = gate.verify

    def counting(name: str, digest: str, authorization: str | None) -> Any:
        checks.append(digest)
        return real_verify(name, digest, authorization)

    gate.verify = counting  # type: ignore[method-assign]
    token = bearer(env, READER, "team-a/cached")

    def get(ref: str) -> str:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/v2/team-a/cached/manifests/{ref}",
                   "HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_ACCEPT": MANIFEST_ACCEPT,
                   "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO()}  # fmt: skip
        status: list[str] = []
        b"".join(gate(environ, lambda s, h: status.append(s)))
        return status[0]

    assert get("1").startswith("200") and get("1").startswith("200") and get(signed).startswith("200")
    assert checks == [signed]
    assert get("2").startswith("403") and get("2").startswith("403")
    assert checks == [signed, unsigned, unsigned]
    assert fleet(env, "sign", "team-a/cached:2")[0] == 0
    assert get("2").startswith("200")


def test_gate_reloads_its_configuration_on_sighup_and_keeps_it_when_invalid(env: Env) -> None:
    digest = put(env, "3", "team-b/later:1", account=B_DEV)
    assert via_gate(env, "GET", "team-b/later", "1", account=B_DEV)[0] == 200
    original = env.gate_config.read_text()
    try:
        config = yaml.safe_load(original)
        config["namespaces"]["team-b"] = {"require_signed": True}
        env.gate_config.write_text(yaml.safe_dump(config))
        os.kill(env.gate.pid, signal.SIGHUP)
        wait_for(lambda: via_gate(env, "GET", "team-b/later", "1", account=B_DEV)[0] == 403, 30, "team-b protected")
        assert_denied(via_gate(env, "GET", "team-b/later", "1", account=B_DEV), digest)
        # An invalid file is refused: the running configuration (team-b protected) stays.
        env.gate_config.write_text("upstream: http://nowhere\n")
        os.kill(env.gate.pid, signal.SIGHUP)
        wait_for(lambda: "configuration reload refused" in Path(env.gate_log).read_text(), 30, "the refusal")
        assert via_gate(env, "GET", "team-b/later", "1", account=B_DEV)[0] == 403
    finally:
        env.gate_config.write_text(original)
        os.kill(env.gate.pid, signal.SIGHUP)
    wait_for(lambda: via_gate(env, "GET", "team-b/later", "1", account=B_DEV)[0] == 200, 30, "team-b free again")


def test_sign_without_a_running_lab_after_down(env: Env) -> None:
    """Last: `lab down`, then --lab commands say no lab runs (exit 2)."""
    Lab.down(Path(env.lab.state_dir))
    code, text = fleet(env, "verify", "team-a/app:signed")
    assert code == 2 and "no lab running" in text, text
