"""The signature format, the merge, the verifier's every reason (each with its broken twin), image
references, the KMS signer's errors, the gate's configuration, cache and request checks: no processes.

The format tests compare with bytes cosign 2.5.0 itself wrote (a payload and the config of a two-layer
`.sig` image, read back from a lab registry); tests/test_signing_lab.py has cosign verify ours and ours
verify cosign's.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from moto import mock_aws

from fleet import cli
from gate.app import Gate, VerifiedCache
from gate.config import ConfigError, parse_config
from gate.scan import Refusal
from signing import cosign
from signing.kms import KmsSigner, SigningError
from signing.references import ImageReferenceError, parse_image
from signing.verify import (
    BAD_SIGNATURE,
    MALFORMED,
    MAX_SIGNATURE_LAYERS,
    NO_SIGNATURE,
    OTHER_DIGEST,
    OTHER_REPOSITORY,
    load_public_keys,
    verify_signatures,
)

DIGEST = "sha256:d4409caa2f2797aefae5a3178d1a64ffd6a1a284045065b4f4b230367b291d00"
OTHER = "sha256:" + "ab" * 32
HOST = "127.0.0.1:16004"
REPO = "team-a/sample"
# What cosign 2.5.0 wrote for `cosign sign --key k 127.0.0.1:16004/team-a/sample@DIGEST`.
COSIGN_PAYLOAD = (
    b'{"critical":{"identity":{"docker-reference":"127.0.0.1:16004/team-a/sample"},"image":{"docker-manifest-digest":'
    b'"sha256:d4409caa2f2797aefae5a3178d1a64ffd6a1a284045065b4f4b230367b291d00"},"type":"cosign container image '
    b'signature"},"optional":null}'
)
COSIGN_PAYLOAD_DIGEST = "sha256:08043b21d704426a43fde00ebb7bb4a2c982c364acad14c800867040dc8f84a3"
# The config blob of that `.sig` image once it held two signatures (ours and cosign's) of that payload.
COSIGN_CONFIG = (
    (
        '{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"},'
        '{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["D","D"]},"config":{}}'
    )
    .replace('"D"', f'"{COSIGN_PAYLOAD_DIGEST}"')
    .encode()
)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signed(key: ec.EllipticCurvePrivateKey, body: bytes) -> cosign.Signature:
    return cosign.Signature(body, cosign.encode_signature(key.sign(body, ec.ECDSA(hashes.SHA256()))))


def check(
    signatures: list[cosign.Signature] | bytes | None,
    keys: list[ec.EllipticCurvePrivateKey],
    digest: str = DIGEST,
    repository: str = REPO,
    registry_host: str | None = None,
    blobs: dict[str, bytes] | None = None,
) -> Any:
    """Verify a `.sig` manifest made of `signatures` (or given as bytes) as the gate and fleet verify do."""
    store = dict(blobs or {})
    if isinstance(signatures, list):
        for s in signatures:
            store[s.digest] = s.payload
        manifest: bytes | None = cosign.signature_manifest([s.layer() for s in signatures]).manifest
    else:
        manifest = signatures

    def fetch(layer: dict[str, Any]) -> bytes:
        if layer["digest"] not in store:
            raise cosign.FormatError(f"payload blob {layer['digest']} is missing")
        return store[layer["digest"]]

    return verify_signatures(
        manifest, fetch, digest, repository, load_public_keys([pem(k) for k in keys]), registry_host
    )


# --- format ------------------------------------------------------------------------------------------


def test_payload_is_byte_for_byte_what_cosign_writes() -> None:
    assert cosign.payload(f"{HOST}/{REPO}", DIGEST) == COSIGN_PAYLOAD
    assert cosign.sha256_digest(COSIGN_PAYLOAD) == COSIGN_PAYLOAD_DIGEST


def test_payload_optional_claims_are_an_object_and_html_characters_escaped_as_go_does() -> None:
    body = cosign.payload(f"{HOST}/{REPO}", DIGEST, {"ci": "run<1>&"})
    assert body.endswith(b'"optional":{"ci":"run\\u003c1\\u003e\\u0026"}}')
    assert json.loads(body)["optional"] == {"ci": "run<1>&"}


def test_payload_refuses_what_is_not_a_sha256_digest() -> None:
    with pytest.raises(cosign.FormatError, match="not a sha256 digest"):
        cosign.payload(f"{HOST}/{REPO}", "sha512:" + "a" * 128)


def test_signature_tag() -> None:
    assert cosign.signature_tag(DIGEST) == "sha256-" + DIGEST[7:] + ".sig"
    with pytest.raises(cosign.FormatError):
        cosign.signature_tag("sha256:ABC")


def test_signature_manifest_has_cosign_layout_and_config() -> None:
    key = new_key()
    first, second = signed(key, COSIGN_PAYLOAD), signed(key, COSIGN_PAYLOAD)
    sig = cosign.signature_manifest([first.layer(), second.layer()])
    assert sig.config == COSIGN_CONFIG
    doc = json.loads(sig.manifest)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert doc["mediaType"] == cosign.OCI_MANIFEST and doc["config"]["mediaType"] == cosign.OCI_CONFIG
    assert doc["config"]["digest"] == cosign.sha256_digest(COSIGN_CONFIG)
    layer = doc["layers"][0]
    assert layer == {
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "size": len(COSIGN_PAYLOAD),
        "digest": COSIGN_PAYLOAD_DIGEST,
        "annotations": {"dev.cosignproject.cosign/signature": first.signature_b64},
    }
    assert cosign.is_signature_manifest(sig.manifest)


def test_re_signing_adds_a_layer_and_keeps_every_other_signature() -> None:
    key = new_key()
    foreign = {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": 3, "digest": OTHER,
               "annotations": {cosign.SIGNATURE_ANNOTATION: "c2ln", "dev.sigstore.cosign/bundle": "{}"}}  # fmt: skip
    existing = cosign.signature_manifest([foreign]).manifest
    ours = signed(key, COSIGN_PAYLOAD)
    merged = cosign.add_signature(existing, ours)
    assert merged is not None
    assert list(merged.layers) == [foreign, ours.layer()]
    # The same payload and signature again: nothing to add (no duplicate layer).
    assert cosign.add_signature(merged.manifest, ours) is None
    # A fresh signature of the same payload (ECDSA is randomised) is another layer.
    again = cosign.add_signature(merged.manifest, signed(key, COSIGN_PAYLOAD))
    assert again is not None and len(again.layers) == 3


def test_merge_refuses_to_overwrite_what_is_not_a_signature_manifest() -> None:
    with pytest.raises(cosign.FormatError, match="not JSON"):
        cosign.add_signature(b"garbage", signed(new_key(), COSIGN_PAYLOAD))
    index = json.dumps({"schemaVersion": 2, "mediaType": cosign.OCI_INDEX, "manifests": []}).encode()
    with pytest.raises(cosign.FormatError, match="not an image manifest"):
        cosign.add_signature(index, signed(new_key(), COSIGN_PAYLOAD))


def test_a_runnable_image_is_not_a_signature_manifest() -> None:
    image = cosign.signature_manifest([{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 1,
                                        "digest": OTHER}]).manifest  # fmt: skip
    assert not cosign.is_signature_manifest(image)
    assert not cosign.is_signature_manifest(cosign.signature_manifest([]).manifest)
    assert not cosign.is_signature_manifest(b"\xff")


def test_child_manifests_of_an_index() -> None:
    index = {"schemaVersion": 2, "mediaType": cosign.OCI_INDEX, "manifests": [{"digest": DIGEST}, {"digest": OTHER}]}
    assert cosign.child_manifests(json.dumps(index).encode()) == [DIGEST, OTHER]
    assert cosign.child_manifests(cosign.signature_manifest([]).manifest) == []
    index["manifests"] = [{"digest": "sha256:short"}]
    with pytest.raises(cosign.FormatError):
        cosign.child_manifests(json.dumps(index).encode())


# --- the verifier: each reason, each with the valid twin beside it -------------------------------------


def test_valid_signature() -> None:
    key = new_key()
    result = check([signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))], [key])
    assert result.valid and result.reason is None


def test_no_signature_manifest() -> None:
    result = check(None, [new_key()])
    assert not result.valid and result.reason == NO_SIGNATURE
    assert "no signature manifest" in result.message and DIGEST in result.message


def test_a_sig_manifest_without_signature_layers_is_no_signature() -> None:
    other_layer = {"mediaType": "application/octet-stream", "size": 1, "digest": OTHER}
    result = check(cosign.signature_manifest([other_layer]).manifest, [new_key()])
    assert result.reason == NO_SIGNATURE


def test_signed_for_another_repository() -> None:
    key = new_key()
    assert check([signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))], [key]).valid
    result = check([signed(key, cosign.payload(f"{HOST}/team-a/other", DIGEST))], [key])
    assert result.reason == OTHER_REPOSITORY and "team-a/other" in result.message


def test_a_repository_is_compared_whole_not_as_a_prefix() -> None:
    key = new_key()
    result = check([signed(key, cosign.payload(f"{HOST}/{REPO}-evil", DIGEST))], [key])
    assert result.reason == OTHER_REPOSITORY


def test_registry_host_is_compared_when_known() -> None:
    key = new_key()
    sig = signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    assert check([sig], [key], registry_host=HOST).valid
    assert check([sig], [key], registry_host="127.0.0.1:16005").reason == OTHER_REPOSITORY
    # Without a known host (the gate), the path decides.
    assert check([sig], [key]).valid


def test_a_reference_without_a_host_names_docker_hub_not_us() -> None:
    key = new_key()
    result = check([signed(key, cosign.payload(REPO, DIGEST))], [key])
    assert result.reason == OTHER_REPOSITORY


def test_signed_for_another_digest() -> None:
    key = new_key()
    result = check([signed(key, cosign.payload(f"{HOST}/{REPO}", OTHER))], [key])
    assert result.reason == OTHER_DIGEST and OTHER in result.message


def test_tampered_payload_is_a_bad_signature() -> None:
    key = new_key()
    good = signed(key, cosign.payload(f"{HOST}/{REPO}", OTHER))
    tampered = cosign.Signature(cosign.payload(f"{HOST}/{REPO}", DIGEST), good.signature_b64)
    result = check([tampered], [key])
    assert result.reason == BAD_SIGNATURE


def test_another_keys_signature_is_a_bad_signature() -> None:
    ours, theirs = new_key(), new_key()
    sig = signed(theirs, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    assert check([sig], [ours]).reason == BAD_SIGNATURE
    assert check([sig], [ours, theirs]).valid  # any of the configured keys (rotation)


def test_signed_garbage_is_malformed() -> None:
    key = new_key()
    for body, expected in (
        (b"not json", "not UTF-8 JSON"),
        (b'{"critical":{}}', "must hold exactly"),
        (b"[]", "object of critical and optional"),
    ):
        result = check([signed(key, body)], [key])
        assert result.reason == MALFORMED and expected in result.message, result.message


def test_a_key_given_twice_is_malformed() -> None:
    """Two parsers must not read two different digests out of one payload."""
    key = new_key()
    good = cosign.payload(f"{HOST}/{REPO}", DIGEST)
    doubled = good.replace(b'"image":{', b'"image":{"docker-manifest-digest":"' + OTHER.encode() + b'",')
    result = check([signed(key, doubled)], [key])
    assert result.reason == MALFORMED and "appears twice" in result.message


def test_another_payload_type_is_malformed() -> None:
    key = new_key()
    body = cosign.payload(f"{HOST}/{REPO}", DIGEST).replace(b"cosign container image signature", b"atomic container")
    assert check([signed(key, body)], [key]).reason == MALFORMED


def test_signature_annotation_missing_or_not_base64_is_malformed() -> None:
    key = new_key()
    sig = signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    for broken in ({}, {cosign.SIGNATURE_ANNOTATION: "!!not base64!!"}):
        layer = {**sig.layer(), "annotations": broken}
        result = check(cosign.signature_manifest([layer]).manifest, [key], blobs={sig.digest: sig.payload})
        assert result.reason == MALFORMED


def test_garbage_sig_manifest_is_malformed() -> None:
    assert check(b"\x00garbage", [new_key()]).reason == MALFORMED
    assert check(b'{"schemaVersion":2,"layers":"x"}', [new_key()]).reason == MALFORMED
    nested = b"[" * 200_000 + b"]" * 200_000  # deeper than any JSON parser's recursion
    assert check(nested, [new_key()]).reason == MALFORMED
    assert not cosign.is_signature_manifest(nested)
    layer = {"mediaType": cosign.PAYLOAD_MEDIA_TYPE, "size": 3, "digest": OTHER, "annotations": ["x"]}
    assert check(cosign.signature_manifest([layer]).manifest, [new_key()]).reason == MALFORMED


def test_a_signed_payload_nested_too_deep_is_malformed() -> None:
    key = new_key()
    result = check([signed(key, b"[" * 30_000 + b"]" * 30_000)], [key])
    assert result.reason == MALFORMED


def test_missing_or_oversized_payload_blob_is_malformed() -> None:
    key = new_key()
    sig = signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    manifest = cosign.signature_manifest([sig.layer()]).manifest
    assert check(manifest, [key], blobs={}).reason == MALFORMED
    big = {**sig.layer(), "size": 10**9}
    assert check(cosign.signature_manifest([big]).manifest, [key], blobs={sig.digest: sig.payload}).reason == MALFORMED


def test_too_many_signature_layers_are_refused_whole() -> None:
    key = new_key()
    sig = signed(key, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    assert check([sig] * MAX_SIGNATURE_LAYERS, [key]).valid
    assert check([sig] * (MAX_SIGNATURE_LAYERS + 1), [key]).reason == MALFORMED


def test_one_valid_signature_among_bad_ones_is_enough_and_the_best_reason_is_reported() -> None:
    ours, theirs = new_key(), new_key()
    bad = signed(theirs, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    wrong_repo = signed(ours, cosign.payload(f"{HOST}/team-b/x", DIGEST))
    good = signed(ours, cosign.payload(f"{HOST}/{REPO}", DIGEST))
    assert check([bad, wrong_repo, good], [ours]).valid
    result = check([bad, wrong_repo], [ours])
    assert result.reason == OTHER_REPOSITORY and len(result.findings) == 2


def test_public_keys_must_be_p256() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_keys(["nope"])
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="not an ECDSA P-256 key"):
        load_public_keys([pem(p384)])
    with pytest.raises(ValueError, match="no public key"):
        load_public_keys([])


# --- image references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repository", "reference"),
    [
        ("team-a/app", "team-a/app", "latest"),
        ("team-a/app:1.2", "team-a/app", "1.2"),
        (f"team-a/app@{DIGEST}", "team-a/app", DIGEST),
        (f"team-a/app:1@{DIGEST}", "team-a/app", DIGEST),
        ("registry.dev.example.com/team-a/app:1", "team-a/app", "1"),
    ],
)
def test_image_references(text: str, repository: str, reference: str) -> None:
    ref = parse_image(text, "registry.dev.example.com")
    assert (ref.repository, ref.reference) == (repository, reference)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Team-A/app", "not a valid name"),
        ("team-a/app:bad tag", "tag"),
        ("team-a/app@sha256:abc", "not a digest"),
        ("other.example.com/team-a/app", "names the registry other.example.com"),
        ("team-a//app", "not a valid name"),
        ("", "not a valid name"),
    ],
)
def test_bad_image_references(text: str, message: str) -> None:
    with pytest.raises(ImageReferenceError, match=message):
        parse_image(text, "registry.dev.example.com")


# --- KMS -----------------------------------------------------------------------------------------------


@pytest.fixture
def kms() -> Any:
    with mock_aws():
        yield boto3.client("kms", region_name="eu-west-1")


def test_kms_signs_the_raw_payload_and_the_public_key_verifies_it(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/registry-fleet-dev-signing", TargetKeyId=key_id)
    signer = KmsSigner(kms, "alias/registry-fleet-dev-signing")
    der = signer.sign(COSIGN_PAYLOAD)
    public = serialization.load_pem_public_key(signer.public_key_pem().encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, COSIGN_PAYLOAD, ec.ECDSA(hashes.SHA256()))  # raises when it does not verify
    result = verify_signatures(
        cosign.signature_manifest([cosign.Signature(COSIGN_PAYLOAD, cosign.encode_signature(der)).layer()]).manifest,
        lambda layer: COSIGN_PAYLOAD,
        DIGEST,
        REPO,
        load_public_keys([signer.public_key_pem()]),
        HOST,
    )
    assert result.valid


def test_kms_key_not_found(kms: Any) -> None:
    with pytest.raises(SigningError, match="alias/nope not found"):
        KmsSigner(kms, "alias/nope").sign(b"x")


def test_kms_key_of_another_spec_is_refused(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(SigningError, match="must be ECC_NIST_P256 SIGN_VERIFY"):
        KmsSigner(kms, key_id).public_key_pem()


def test_kms_access_denied_names_the_permission_and_the_key() -> None:
    client = boto3.client("kms", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_client_error("sign", service_error_code="AccessDeniedException", http_status_code=400)
        with pytest.raises(SigningError, match=r"lack the kms:Sign permission on that key") as err:
            KmsSigner(client, "alias/registry-fleet-dev-signing").sign(b"x")
    assert "alias/registry-fleet-dev-signing" in str(err.value)


def test_kms_refuses_a_payload_over_the_raw_limit() -> None:
    with pytest.raises(SigningError, match="4096-byte RAW limit"):
        KmsSigner(None, "k").sign(b"x" * 4097)


# --- the gate: configuration, cache, requests refused before the registry ------------------------------


def gate_config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "upstream": "https://127.0.0.1:1",  # nothing listens: a request that reached it would be a 502
        "public_keys": [pem(new_key())],
        "namespaces": {"team-a": {"require_signed": True}, "team-b": {"require_signed": False}},
        "cache_seconds": 300,
    }
    data.update(changes)
    return data


def test_gate_config_errors_name_the_key(tmp_path: Path) -> None:
    for changes, expected in (
        ({"upstream": "http://127.0.0.1:5000"}, "upstream: 'http://127.0.0.1:5000': must be https"),
        ({"public_keys": ["x"]}, "public_keys: public key 1: not a PEM public key"),
        ({"public_keys": []}, "public_keys: Tuple should have at least 1 item"),
        ({"namespaces": {"Team-A": {"require_signed": True}}}, "Team-A: not a repository path"),
        ({"cache_seconds": -1}, "cache_seconds: Input should be greater than or equal to 0"),
        ({"upstream_ca_file": "missing.crt"}, "no such file"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config(gate_config(**changes), tmp_path, "gate.yml")
        assert expected in str(err.value), str(err.value)


def test_protected_namespaces_are_the_namespace_and_below_it(tmp_path: Path) -> None:
    config = parse_config(gate_config(), tmp_path)
    assert config.protected("team-a") and config.protected("team-a/app") and config.protected("team-a/x/y")
    assert not config.protected("team-ab/app")  # a prefix of the name is not the namespace
    assert not config.protected("team-b/app")  # require_signed false
    assert not config.protected("other/app")


def test_cache_remembers_for_ttl_and_is_bounded() -> None:
    now = [0.0]
    cache = VerifiedCache(ttl=10, size=2, now=lambda: now[0])
    cache.add(("a", "1"))
    assert ("a", "1") in cache
    now[0] = 10.5
    assert ("a", "1") not in cache  # expired
    cache.add(("a", "1"))
    cache.add(("b", "2"))
    cache.add(("c", "3"))
    assert ("a", "1") not in cache and ("b", "2") in cache and ("c", "3") in cache and len(cache) == 2
    never = VerifiedCache(ttl=0, size=2)
    never.add(("a", "1"))
    assert ("a", "1") not in never


def call(app: Callable[..., Any], method: str, path: str, headers: dict[str, str] | None = None) -> tuple[str, bytes]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.9",
               "wsgi.input": io.BytesIO(b"")}  # fmt: skip
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h: status.append(s)))
    return status[0], body


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Team-A/app/manifests/1", "NAME_INVALID"),
        ("/v2/team-a//app/manifests/1", "NAME_INVALID"),
        ("/v2/team-a/../x/manifests/1", "NAME_INVALID"),
        ("/v2/team-a/app/manifests/sha256:abc", "DIGEST_INVALID"),
        ("/v2/team-a/app/manifests/sha512:" + "a" * 128, "DIGEST_INVALID"),
        ("/v2/team-a/app/manifests/" + "t" * 129, "TAG_INVALID"),
        ("/v2/team-a/app/manifests/-x", "TAG_INVALID"),
        ("/v2/team-a/app/manifests/", "TAG_INVALID"),
    ],
)
def test_malformed_manifest_requests_are_400_and_never_reach_the_registry(tmp_path: Path, path: str, code: str) -> None:
    gate = Gate(parse_config(gate_config(), tmp_path))
    status, body = call(gate, "GET", path)
    assert status.startswith("400"), (status, body)
    assert json.loads(body)["errors"][0]["code"] == code


def test_a_well_formed_request_does_reach_the_registry(tmp_path: Path) -> None:
    """The twin of the test above: the same gate sends a good request on (nothing listens: 502)."""
    gate = Gate(parse_config(gate_config(), tmp_path))
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("502") and b"did not answer" in body
    assert call(gate, "GET", "/healthz")[0].startswith("200")
    assert call(gate, "GET", "/other")[0].startswith("404")


# --- the commands: user mistakes exit 2 with a message ------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def test_sign_and_verify_user_mistakes_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    for argv, expected in (
        (("verify", "dev", "Team-A/app"), "is not a valid name"),
        (("sign", "dev", "team-a/app@sha256:12"), "is not a digest"),
        (("verify", "nosuch", "team-a/app"), "no file"),
        (("sign", "dev", "other.example.com/team-a/app"), "this stack's registry is registry.dev.example.com"),
        (("sign", "dev", "team-a/app", "--username", "ci"), "REGISTRY_PASSWORD"),
        (("verify", "dev", "team-a/app", "--lab", "--state-dir", str(tmp_path)), "no lab running"),
        (("sign", "dev", "team-a/app", "--annotation", "novalue"), "KEY=VALUE"),
    ):
        code, text = run_cli(*argv)
        assert code == 2 and expected in text, (argv, code, text)
        assert "Traceback" not in text


def test_the_key_alias_is_the_stacks() -> None:
    from fleet.signing import signing_key_alias

    assert signing_key_alias("payments-prod") == "alias/registry-fleet-payments-prod-signing"


def test_signature_b64_round_trip() -> None:
    key = new_key()
    sig = signed(key, b"x")
    key.public_key().verify(base64.b64decode(sig.signature_b64), b"x", ec.ECDSA(hashes.SHA256()))


# --- the registry client's redirects: the token never leaves the registry -------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]]  # (server, path, Authorization)
    name = ""
    redirect_to = ""

    def do_GET(self) -> None:
        self.seen.append((self.name, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/v2/") and self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to + self.path.rsplit("/", 1)[-1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"blob"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(pki: Any, name: str, redirect_to: str, seen: list[tuple[str, str, str | None]]) -> Any:
    handler = type(f"H{name}", (_Recorder,), {"name": name, "redirect_to": redirect_to, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_blob_redirects_to_another_host_drop_the_authorization(tmp_path: Path, scheme: str) -> None:
    from lab.pki import create_pki
    from signing.registry import RegistryClient, RegistryError, Transport

    pki = create_pki(tmp_path, ["127.0.0.1", "localhost"])
    seen: list[tuple[str, str, str | None]] = []
    cdn = _serve(pki, "cdn", "", seen)
    blob = b"blob"
    digest = cosign.sha256_digest(blob)
    # The registry at 127.0.0.1 redirects to the CDN at localhost: another host.
    registry = _serve(pki, "registry", f"{scheme}://localhost:{cdn.server_port}/cdn/", seen)
    try:
        transport = Transport(f"https://127.0.0.1:{registry.server_port}", str(pki.ca_cert))
        client = RegistryClient(transport, fixed_authorization=True, authorization="Bearer secret-token")
        if scheme == "http":
            with pytest.raises(RegistryError, match="HTTPS only"):
                client.get_blob("team-a/app", digest, 100)
            assert [s[0] for s in seen] == ["registry"]
            return
        assert client.get_blob("team-a/app", digest, 100) == blob
        assert seen == [
            ("registry", f"/v2/team-a/app/blobs/{digest}", "Bearer secret-token"),
            ("cdn", f"/cdn/{digest}", None),
        ]
    finally:
        registry.shutdown()
        cdn.shutdown()


def test_a_redirect_to_the_same_registry_keeps_the_authorization(tmp_path: Path) -> None:
    """The twin: the registry's own redirect (same origin) carries the token, as a client's does."""
    from lab.pki import create_pki
    from signing.registry import RegistryClient, Transport

    pki = create_pki(tmp_path, ["127.0.0.1", "localhost"])
    seen: list[tuple[str, str, str | None]] = []
    registry = _serve(pki, "registry", "/local/", seen)
    blob = b"blob"
    try:
        transport = Transport(f"https://127.0.0.1:{registry.server_port}", str(pki.ca_cert))
        client = RegistryClient(transport, fixed_authorization=True, authorization="Bearer secret-token")
        assert client.get_blob("team-a/app", cosign.sha256_digest(blob), 100) == blob
        assert [s[2] for s in seen] == ["Bearer secret-token", "Bearer secret-token"]
    finally:
        registry.shutdown()


# --- the gate's decisions against a scripted registry ---------------------------------------------------


class ScriptedRegistry:
    """Stands in for the gate's Transport: answers by path from a dict; a path mapped to an exception raises it."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, str]]] = []

    def request(
        self, method: str, path: str, headers: Any, body: Any = None, max_bytes: int = 0, follow: bool = False
    ) -> Any:
        from signing.registry import Response

        self.asked.append((method, path, dict(headers)))
        answer = self.answers.get(path)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return Response(404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')
        status, headers_out, data = answer
        return Response(status, headers_out, b"" if method == "HEAD" else data)


def scripted_gate(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, answers: dict[str, Any]
) -> tuple[Gate, ScriptedRegistry]:
    gate = Gate(parse_config(gate_config(public_keys=[pem(key)]), tmp_path))
    registry = ScriptedRegistry(answers)
    gate.transport = registry  # type: ignore[assignment]
    return gate, registry


REGISTRY = "registry.dev.example.com"
IMAGE = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
IMAGE_DIGEST = cosign.sha256_digest(IMAGE)


def signed_answers(key: ec.EllipticCurvePrivateKey, repo: str = "team-a/app") -> dict[str, Any]:
    sig = signed(key, cosign.payload(f"{REGISTRY}/{repo}", IMAGE_DIGEST))
    manifest = cosign.signature_manifest([sig.layer()]).manifest
    return {
        f"/v2/{repo}/manifests/1": (
            200,
            {"Content-Type": cosign.OCI_MANIFEST, "Docker-Content-Digest": IMAGE_DIGEST},
            IMAGE,
        ),
        f"/v2/{repo}/manifests/{cosign.signature_tag(IMAGE_DIGEST)}": (200, {}, manifest),
        f"/v2/{repo}/blobs/{sig.digest}": (200, {}, sig.payload),
    }


def test_gate_serves_the_exact_bytes_it_checked_and_forwards_the_clients_credentials(tmp_path: Path) -> None:
    key = new_key()
    gate, registry = scripted_gate(tmp_path, key, signed_answers(key))
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1", {"Authorization": "Bearer client", "Accept": "x"})
    assert status.startswith("200") and body == IMAGE
    assert [a[1] for a in registry.asked] == [
        "/v2/team-a/app/manifests/1",
        f"/v2/team-a/app/manifests/{cosign.signature_tag(IMAGE_DIGEST)}",
        f"/v2/team-a/app/blobs/{cosign.sha256_digest(cosign.payload(f'{REGISTRY}/team-a/app', IMAGE_DIGEST))}",
    ]
    assert all(a[2].get("Authorization") == "Bearer client" for a in registry.asked)
    assert registry.asked[0][2]["Accept"] == "x" and "If-None-Match" not in registry.asked[0][2]
    # Cached: the next GET asks the registry for the manifest only.
    assert call(gate, "GET", "/v2/team-a/app/manifests/1")[0].startswith("200") and len(registry.asked) == 4


def test_gate_never_serves_another_digest_than_the_one_asked_for(tmp_path: Path) -> None:
    key = new_key()
    answers = signed_answers(key)
    answers[f"/v2/team-a/app/manifests/{OTHER}"] = answers["/v2/team-a/app/manifests/1"]
    gate, _ = scripted_gate(tmp_path, key, answers)
    status, body = call(gate, "GET", f"/v2/team-a/app/manifests/{OTHER}")
    assert status.startswith("502") and body != IMAGE and b"another digest" in body
    assert call(gate, "GET", f"/v2/team-a/app/manifests/{IMAGE_DIGEST}")[0].startswith("404")  # not scripted


def test_gate_answers_503_when_the_signatures_cannot_be_read_and_serves_nothing(tmp_path: Path) -> None:
    key = new_key()
    answers = signed_answers(key)
    answers[f"/v2/team-a/app/manifests/{cosign.signature_tag(IMAGE_DIGEST)}"] = OSError("connection reset")
    gate, _ = scripted_gate(tmp_path, key, answers)
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("503") and b"UNAVAILABLE" in body and body != IMAGE
    answers[f"/v2/team-a/app/manifests/{cosign.signature_tag(IMAGE_DIGEST)}"] = (401, {}, b"{}")
    status, body = call(gate, "GET", "/v2/team-a/app/manifests/1")
    assert status.startswith("403") and b"unverifiable" in body


def test_gate_head_needs_the_registrys_digest(tmp_path: Path) -> None:
    key = new_key()
    answers = signed_answers(key)
    gate, _ = scripted_gate(tmp_path, key, answers)
    assert call(gate, "HEAD", "/v2/team-a/app/manifests/1")[0].startswith("200")
    answers["/v2/team-a/app/manifests/1"] = (200, {"Content-Type": cosign.OCI_MANIFEST}, IMAGE)
    gate, _ = scripted_gate(tmp_path, key, answers)
    assert call(gate, "HEAD", "/v2/team-a/app/manifests/1")[0].startswith("502")


def test_gate_passes_a_401_through_unchanged(tmp_path: Path) -> None:
    challenge = 'Bearer realm="https://r/auth",service="s",scope="repository:team-a/app:pull"'
    gate, _ = scripted_gate(
        tmp_path, new_key(), {"/v2/team-a/app/manifests/1": (401, {"WWW-Authenticate": challenge}, b"{}")}
    )
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/team-a/app/manifests/1", "wsgi.input": io.BytesIO()}
    seen: list[Any] = []
    b"".join(gate(environ, lambda s, h: seen.append((s, dict(h)))))
    assert seen[0][0].startswith("401") and seen[0][1]["WWW-Authenticate"] == challenge


# --- a signer facing the gate: the refusal names the digest ---------------------------------------


def test_the_gates_refusal_names_the_digest_a_signer_needs(tmp_path: Path) -> None:
    from signing.registry import Response, gate_refusal

    digest = "sha256:" + "b" * 64
    gate = Gate(parse_config(gate_config(), tmp_path))
    refusal = gate.refuse({"REMOTE_ADDR": "127.0.0.1"}, "team-a/app", digest, [Refusal("no-signature", "none")])
    answer = Response(refusal.status, {}, refusal.body)
    assert gate_refusal(answer, "team-a/app") == digest
    # Anything else is no refusal by the gate: another repository's, the registry's own DENIED, a 401.
    assert gate_refusal(answer, "team-a/other") is None
    registry_denied = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
    assert gate_refusal(Response(403, {}, registry_denied), "team-a/app") is None
    assert gate_refusal(Response(401, {}, refusal.body), "team-a/app") is None
    forged = refusal.body.replace(digest.encode(), b"sha256:../../etc")
    assert gate_refusal(Response(403, {}, forged), "team-a/app") is None
    assert gate_refusal(Response(403, {}, b"not json"), "team-a/app") is None
