"""`python -m fleet trust-policy`: each consumer's policy for the stack's registry host and protected
namespaces, with the stack's public key.

The documents are checked against the formats' documented shapes (containers-policy.json(5) and
containers-registries.d(5), Kyverno's ClusterPolicy verifyImages, policy-controller's ClusterImagePolicy):
no cluster runs here. The containers policy is also loaded by the real skopeo (`lab` tier), which
validates every requirement in it: Debian 12's skopeo 1.9 parses `sigstoreSigned` but, patched by
Debian, rejects every sigstore signature, so it cannot show that a signed image passes (the lab's
cosign and, on Debian 13, skopeo 1.18 do: issue 13 item 8).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import cli
from fleet.runner import FakeRunner, FakeStack
from tests.helpers import recording, stacks_with_unprotected_dev

PROD_OUTPUTS = {"signingPublicKeyPem": recording("prod").outputs["signingPublicKeyPem"], "registryHost": "x"}
PEM = PROD_OUTPUTS["signingPublicKeyPem"]


def run(
    *argv: str,
    outputs: dict[str, Any] | None = None,
    stacks: dict[str, FakeStack] | None = None,
    stacks_dir: Path | None = None,
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    runner = FakeRunner(stacks if stacks is not None else {"prod": FakeStack(outputs=outputs or PROD_OUTPUTS)})
    where = {"stacks_dir": stacks_dir} if stacks_dir is not None else {}
    code = cli.main(["trust-policy", *argv], out=out, err=err, runner=runner, **where)
    return code, out.getvalue(), err.getvalue()


def containers(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The policy.json and the registries.d document of the containers format's text."""
    head, policy_and_rest = text.split("\n", 1)
    assert head.startswith("# /etc/containers/policy.json")
    policy_text, registries_text = policy_and_rest.split("\n# /etc/containers/registries.d/registry-fleet-prod.yaml\n")
    return json.loads(policy_text), yaml.safe_load(registries_text)


# --- containers ------------------------------------------------------------------------------------


def test_containers_requires_the_keys_signature_for_the_protected_namespaces_only() -> None:
    code, out, err = run("prod", "--format", "containers")
    assert (code, err) == (0, "")
    policy, registries = containers(out)
    assert policy["default"] == [{"type": "insecureAcceptAnything"}]  # other registries: as the host had them
    assert list(policy["transports"]) == ["docker"]
    (scope,) = policy["transports"]["docker"]
    assert scope == "registry.example.com/base"  # prod protects base: base and base/... only
    (requirement,) = policy["transports"]["docker"][scope]
    assert set(requirement) == {"type", "keyData", "signedIdentity"}
    assert requirement["type"] == "sigstoreSigned"
    assert base64.b64decode(requirement["keyData"]).decode() == PEM
    assert requirement["signedIdentity"] == {"type": "matchRepository"}
    assert registries == {"docker": {"registry.example.com": {"use-sigstore-attachments": True}}}


def test_namespaces_can_be_named_when_a_stack_protects_none(tmp_path: Path) -> None:
    dev = {"dev": FakeStack(outputs=PROD_OUTPUTS)}
    unprotected = stacks_with_unprotected_dev(tmp_path / "unprotected")
    code, _, err = run("dev", "--format", "kyverno", stacks=dev, stacks_dir=unprotected)
    assert code == 2 and "stack dev protects no namespace" in err and "--namespace" in err
    code, out, _ = run("dev", "--format", "kyverno", stacks=dev)  # dev itself protects team-a/release
    assert code == 0 and "registry.dev.example.com/team-a/release" in out
    named = ("--namespace", "team-a", "--namespace", "base")
    code, _, _ = run("dev", "--format", "containers", *named, "--output-dir", str(tmp_path), stacks=dev)
    assert code == 0
    assert list(json.loads((tmp_path / "policy.json").read_text())["transports"]["docker"]) == [
        "registry.dev.example.com/base",
        "registry.dev.example.com/team-a",
    ]
    code, _, err = run("dev", "--format", "containers", "--namespace", "team-c", stacks=dev)
    assert code == 2 and "--namespace team-c: no team of stack dev owns it" in err


def test_output_dir_writes_what_skopeo_reads(tmp_path: Path) -> None:
    code, out, _ = run("prod", "--format", "containers", "--output-dir", str(tmp_path))
    assert code == 0
    policy = json.loads((tmp_path / "policy.json").read_text())
    registries = yaml.safe_load((tmp_path / "registries.d" / "registry-fleet-prod.yaml").read_text())
    assert list(policy["transports"]["docker"]) == ["registry.example.com/base"]
    assert registries["docker"]["registry.example.com"] == {"use-sigstore-attachments": True}
    assert out.splitlines() == [
        f"wrote {tmp_path / 'policy.json'}",
        f"wrote {tmp_path / 'registries.d' / 'registry-fleet-prod.yaml'}",
    ]
    code, _, err = run("prod", "--format", "kyverno", "--output-dir", str(tmp_path))
    assert code == 2 and "--output-dir writes the containers files" in err


# --- Kyverno and policy-controller -----------------------------------------------------------------


def test_kyverno_verifies_the_protected_namespaces_with_the_key_and_no_transparency_log() -> None:
    code, out, _ = run("prod", "--format", "kyverno")
    assert code == 0
    doc = yaml.safe_load(out)
    assert (doc["apiVersion"], doc["kind"]) == ("kyverno.io/v1", "ClusterPolicy")
    assert doc["metadata"]["name"] == "registry-fleet-prod-signed-images"
    (rule,) = doc["spec"]["rules"]
    assert rule["match"] == {"any": [{"resources": {"kinds": ["Pod"]}}]}
    (verify,) = rule["verifyImages"]
    assert verify["imageReferences"] == [
        "registry.example.com/base:*",
        "registry.example.com/base@*",
        "registry.example.com/base/*",
    ]
    assert (verify["mutateDigest"], verify["verifyDigest"], verify["required"]) == (True, True, True)
    assert verify["failureAction"] == "Enforce"
    (attestor,) = verify["attestors"]
    (entry,) = attestor["entries"]
    assert entry["keys"] == {
        "publicKeys": PEM,
        "signatureAlgorithm": "sha256",
        "rekor": {"ignoreTlog": True},
        "ctlog": {"ignoreSCT": True},
    }
    assert "-----BEGIN PUBLIC KEY-----\n" in out and "|" in out  # the PEM as a block, as kubectl shows it


def test_policy_controller_matches_the_namespaces_repositories_with_a_key_authority() -> None:
    code, out, _ = run("prod", "--format", "policy-controller")
    assert code == 0
    doc = yaml.safe_load(out)
    assert (doc["apiVersion"], doc["kind"]) == ("policy.sigstore.dev/v1beta1", "ClusterImagePolicy")
    assert doc["spec"]["images"] == [{"glob": "registry.example.com/base"}, {"glob": "registry.example.com/base/**"}]
    (authority,) = doc["spec"]["authorities"]
    assert authority == {"name": "registry-fleet-prod", "key": {"data": PEM, "hashAlgorithm": "sha256"}}
    assert "ctlog" not in authority  # no transparency log: the signatures are not in Rekor


# --- where the key comes from ----------------------------------------------------------------------


def test_the_key_comes_from_the_deployed_stacks_output() -> None:
    runner = FakeRunner({"prod": FakeStack(outputs=PROD_OUTPUTS)})
    assert (
        cli.main(["trust-policy", "prod", "--format", "kyverno"], out=io.StringIO(), err=io.StringIO(), runner=runner)
        == 0
    )
    assert runner.calls == [("stack_outputs", "prod")]


def test_a_stack_never_deployed_or_deployed_without_a_key_is_a_user_error() -> None:
    code, _, err = run("prod", "--format", "kyverno", stacks={})
    assert code == 2 and "stack prod does not exist" in err and "--public-key FILE" in err
    code, _, err = run("prod", "--format", "kyverno", outputs={"registryUrl": "https://registry.example.com"})
    assert code == 2 and "has no output signingPublicKeyPem" in err


def test_a_public_key_file_replaces_the_output(tmp_path: Path) -> None:
    key = tmp_path / "cosign.pub"
    key.write_text(PEM)
    code, out, _ = run("prod", "--format", "policy-controller", "--public-key", str(key), stacks={})
    assert code == 0 and yaml.safe_load(out)["spec"]["authorities"][0]["key"]["data"] == PEM


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n", "holds a private key"),
        ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "one PEM block -----BEGIN PUBLIC KEY-----"),
        (None, "cannot read the public key file"),
    ],
)
def test_a_bad_public_key_file_is_a_user_error(tmp_path: Path, content: str | None, says: str) -> None:
    key = tmp_path / "key.pem"
    if content is not None:
        key.write_text(content)
    code, _, err = run("prod", "--format", "kyverno", "--public-key", str(key), stacks={})
    assert code == 2 and says in err and "Traceback" not in err


def test_lab_reads_the_labs_key_and_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "signing.pub"
    key.write_text(PEM)
    status = {"registry_url": "https://127.0.0.1:15443", "signing": {"publicKeyFile": str(key)}}
    monkeypatch.setattr("lab.lab.Lab.status", staticmethod(lambda _dir: status))
    code, out, _ = run("prod", "--format", "policy-controller", "--lab", stacks={})
    assert code == 0
    assert yaml.safe_load(out)["spec"]["images"][0] == {"glob": "127.0.0.1:15443/base"}
    monkeypatch.setattr("lab.lab.Lab.status", staticmethod(lambda _dir: {"registry_url": "https://x"}))
    code, _, err = run("prod", "--format", "kyverno", "--lab", stacks={})
    assert code == 2 and "reports no signing.publicKeyFile" in err
    code, _, err = run("prod", "--format", "kyverno", "--lab", "--public-key", str(key), stacks={})
    assert code == 2 and "leave out --public-key" in err


# --- the containers policy in the real skopeo (its parser validates every requirement) --------------


def dir_image(path: Path) -> Path:
    """A one-layer image in skopeo's `dir:` format (a transport the policy leaves to its default)."""
    path.mkdir(parents=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w"):
        pass
    layer = raw.getvalue()

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (path / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    layer_digest, layer_size = blob(layer)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": layer_digest, "size": layer_size}
        ],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    return path


def skopeo_copy(policy_dir: Path, source: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed (make test-packages installs it)"
    return subprocess.run(
        [skopeo, "--policy", str(policy_dir / "policy.json"), "--registries.d", str(policy_dir / "registries.d"),
         "copy", f"dir:{source}", f"dir:{dest}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.lab
def test_skopeo_loads_the_containers_policy_and_refuses_a_broken_one(tmp_path: Path) -> None:
    code, _, _ = run("prod", "--format", "containers", "--output-dir", str(tmp_path / "policy"))
    assert code == 0
    source = dir_image(tmp_path / "image")
    done = skopeo_copy(tmp_path / "policy", source, tmp_path / "copy")
    assert done.returncode == 0, done.stderr
    # Broken twins: the same file with a requirement skopeo cannot use is refused as an invalid policy.
    policy = json.loads((tmp_path / "policy" / "policy.json").read_text())
    for field, value in (("keyData", "not base64!"), ("signedIdentity", {"type": "matchRepo"})):
        broken = json.loads(json.dumps(policy))
        broken["transports"]["docker"]["registry.example.com/base"][0][field] = value
        (tmp_path / "policy" / "policy.json").write_text(json.dumps(broken))
        done = skopeo_copy(tmp_path / "policy", source, tmp_path / f"copy-{field}")
        assert done.returncode != 0 and "invalid policy" in done.stderr, (field, done.stderr)
