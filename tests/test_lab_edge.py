"""The lab's CDN edge: CloudFront canned-policy URLs (pure) and the edge process against moto S3.

The integration half runs real processes on loopback: `moto_server` over TLS as the origin and
`python -m lab.edge` in front of it, with certificates from a throwaway CA made here. Children get
an explicit environment: this machine sets AWS_CA_BUNDLE / REQUESTS_CA_BUNDLE, which must not leak.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import selectors
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from lab.cloudfront import Verdict, canned_policy, cf_b64decode, cf_b64encode, sign_url, verify_signed_url
from lab.pki import LabPki as Pki
from lab.pki import create_pki
from lab.supervisor import free_port

REPO = Path(__file__).resolve().parent.parent
KEY = "docker/registry/v2/blobs/sha256/aa/aaaa/data"
BUCKET = "edge-test-blobs"
REGION = "us-east-1"
KPID = "K2JCJMDEHXQW5F"
BLOB_SIZE = 2 * 1024 * 1024
NOW = 1_700_000_000


# -- keys ------------------------------------------------------------------------------------------------


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes


@pytest.fixture(scope="module")
def signing_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(_pkcs1(key), _spki(key))


@pytest.fixture(scope="module")
def other_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(_pkcs1(key), _spki(key))


# -- pure: encoding and policy ---------------------------------------------------------------------------


def test_cf_b64_round_trips_without_url_unsafe_characters() -> None:
    for size in range(0, 300):
        data = os.urandom(size)
        text = cf_b64encode(data)
        assert not set(text) & set("+=/")
        assert cf_b64decode(text) == data
    # 0xfb 0xff 0xbf encodes to "+/+/" in plain base64: every replacement shows up.
    assert base64.b64encode(b"\xfb\xff\xbf\xfb") == b"+/+/+w=="
    assert cf_b64encode(b"\xfb\xff\xbf\xfb") == "-~-~-w__"
    for bad in ("+/+/+w==", "abc!", "a"):
        with pytest.raises(ValueError):
            cf_b64decode(bad)


def test_canned_policy_bytes_match_the_documented_layout() -> None:
    # aws-sdk-go service/cloudfront/sign policy_test.go (TestEncodePolicy*): 2009-11-10T23:00:00Z.
    expires = int(datetime.datetime(2009, 11, 10, 23, tzinfo=datetime.UTC).timestamp())
    assert expires == 1257894000
    policy = canned_policy("https://example.com/a", expires)
    assert policy == (
        b'{"Statement":[{"Resource":"https://example.com/a",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":1257894000}}}]}'
    )
    assert cf_b64encode(policy) == (
        "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9hIiwiQ29uZGl0aW9uIjp7IkRhdGVMZXNzVGhhbiI6"
        "eyJBV1M6RXBvY2hUaW1lIjoxMjU3ODk0MDAwfX19XX0_"
    )
    # Query strings stay literal (the SDK turns HTML escaping off: no \u0026).
    with_query = canned_policy("https://example.com/a?b=1&c=2", expires)
    assert cf_b64encode(with_query).startswith(
        "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9hP2I9MSZjPTIi"
    )
    # The developer guide's example statement, whitespace removed.
    doc = canned_policy("http://d111111abcdef8.cloudfront.net/horizon.jpg?size=large&license=yes", 1357034400)
    assert doc == (
        b'{"Statement":[{"Resource":"http://d111111abcdef8.cloudfront.net/horizon.jpg?size=large&license=yes",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":1357034400}}}]}'
    )
    assert b" " not in doc and b"\n" not in doc


# -- pure: signing and verifying -------------------------------------------------------------------------

BASE = f"https://127.0.0.1:9443/{KEY}"


def test_sign_url_has_the_sdk_layout_and_an_rsa_sha1_signature(signing_key: KeyPair) -> None:
    url = sign_url(BASE, KPID, signing_key.private_pem, NOW + 600)
    prefix = f"{BASE}?Expires={NOW + 600}&Signature="
    assert url.startswith(prefix)
    signature, tail = url[len(prefix) :].split("&")
    assert tail == f"Key-Pair-Id={KPID}"
    public = serialization.load_pem_public_key(signing_key.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    # Independent check: PKCS#1 v1.5 with SHA-1 over the canned policy for the unsigned URL.
    public.verify(cf_b64decode(signature), canned_policy(BASE, NOW + 600), padding.PKCS1v15(), hashes.SHA1())
    assert len(cf_b64decode(signature)) == 256
    # A URL that already has a query gets "&", as the SDK does; reserved names are refused.
    assert sign_url(BASE + "?a=1", KPID, signing_key.private_pem, NOW).startswith(BASE + "?a=1&Expires=")
    for bad in (BASE + "?Expires=1", BASE + "?x=1&Signature=2", "ftp://h/x", "no-scheme"):
        with pytest.raises(ValueError):
            sign_url(bad, KPID, signing_key.private_pem, NOW)


def test_signed_url_verifies_until_it_expires(signing_key: KeyPair) -> None:
    url = sign_url(BASE, KPID, signing_key.private_pem, NOW + 600)
    assert verify_signed_url(url, KPID, signing_key.public_pem, NOW).ok
    assert verify_signed_url(url, KPID, signing_key.public_pem, NOW + 599).ok
    assert verify_signed_url(url, KPID, signing_key.public_pem, NOW + 600).reason == "expired"
    expired = sign_url(BASE, KPID, signing_key.private_pem, NOW - 1)
    assert verify_signed_url(expired, KPID, signing_key.public_pem, NOW) == Verdict(False, "expired")


MISMATCH = "resource or Expires does not match the signature"


def test_tampering_is_rejected_with_the_right_reason(signing_key: KeyPair, other_key: KeyPair) -> None:
    url = sign_url(BASE, KPID, signing_key.private_pem, NOW + 600)

    def check(candidate: str, *, key: bytes = signing_key.public_pem, kpid: str = KPID) -> str:
        result = verify_signed_url(candidate, kpid, key, NOW)
        assert not result.ok
        return result.reason

    assert check(url.replace("/aa/aaaa/", "/bb/aaaa/")) == MISMATCH
    assert check(url.replace("127.0.0.1:9443", "127.0.0.1:9444")) == MISMATCH
    assert check(url.replace("https://", "http://")) == MISMATCH
    assert check(url.replace(f"Expires={NOW + 600}", f"Expires={NOW + 6000}")) == MISMATCH
    signature = url.split("Signature=")[1].split("&")[0]
    flipped = signature[:100] + ("A" if signature[100] != "A" else "B") + signature[101:]
    assert check(url.replace(signature, flipped)) == "invalid signature"
    assert check(url.replace(signature, signature[:-4])) == "invalid signature"
    assert check(url.replace(signature, "not*base64")) == "malformed Signature"
    assert check(url, kpid="APKAOTHER") == "unknown Key-Pair-Id"
    assert check(url.replace(KPID, "APKAOTHER")) == "unknown Key-Pair-Id"
    assert check(sign_url(BASE, KPID, other_key.private_pem, NOW + 600)) == "invalid signature"
    assert check(url, key=other_key.public_pem) == "invalid signature"


def test_missing_duplicate_and_unsupported_parameters(signing_key: KeyPair) -> None:
    url = sign_url(BASE, KPID, signing_key.private_pem, NOW + 600)
    base, query = url.split("?")
    params = query.split("&")
    for i, name in enumerate(("Expires", "Signature", "Key-Pair-Id")):
        without = base + "?" + "&".join(p for j, p in enumerate(params) if j != i)
        assert verify_signed_url(without, KPID, signing_key.public_pem, NOW) == Verdict(False, f"missing {name}")
    assert verify_signed_url(BASE, KPID, signing_key.public_pem, NOW) == Verdict(False, "missing Expires")
    doubled = f"{url}&Expires={NOW + 600}"
    assert verify_signed_url(doubled, KPID, signing_key.public_pem, NOW) == Verdict(False, "duplicate Expires")
    custom = url.replace(f"Expires={NOW + 600}", "Policy=eyJ9")
    assert verify_signed_url(custom, KPID, signing_key.public_pem, NOW).reason == "custom policy not supported"
    bad_expiry = url.replace(f"Expires={NOW + 600}", "Expires=+1e9")
    assert verify_signed_url(bad_expiry, KPID, signing_key.public_pem, NOW).reason == "malformed Expires"
    md5 = url + "&Hash-Algorithm=MD5"
    assert verify_signed_url(md5, KPID, signing_key.public_pem, NOW).reason == "unsupported Hash-Algorithm"


def test_own_query_parameters_are_part_of_the_resource(signing_key: KeyPair) -> None:
    url = sign_url(BASE + "?size=large&color=red", KPID, signing_key.private_pem, NOW + 600)
    assert verify_signed_url(url, KPID, signing_key.public_pem, NOW).ok
    assert verify_signed_url(url.replace("size=large&", ""), KPID, signing_key.public_pem, NOW).reason == MISMATCH
    assert verify_signed_url(url + "&extra=1", KPID, signing_key.public_pem, NOW).reason == MISMATCH
    # CloudFront also accepts own parameters after Key-Pair-Id: only the signing ones are removed.
    moved = sign_url(BASE, KPID, signing_key.private_pem, NOW + 600)
    assert verify_signed_url(moved + "&x=1", KPID, signing_key.public_pem, NOW).reason == MISMATCH
    resigned = sign_url(BASE + "?x=1", KPID, signing_key.private_pem, NOW + 600)
    sig_part = resigned.split("?x=1&")[1]
    assert verify_signed_url(f"{BASE}?{sig_part}&x=1", KPID, signing_key.public_pem, NOW).ok


def test_sha256_variant_and_percent_encoded_signature(signing_key: KeyPair) -> None:
    key = serialization.load_pem_private_key(signing_key.private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    sig = key.sign(canned_policy(BASE, NOW + 60), padding.PKCS1v15(), hashes.SHA256())
    url = f"{BASE}?Expires={NOW + 60}&Signature={cf_b64encode(sig)}&Key-Pair-Id={KPID}&Hash-Algorithm=SHA256"
    assert verify_signed_url(url, KPID, signing_key.public_pem, NOW).ok
    assert verify_signed_url(url.replace("SHA256", "SHA1"), KPID, signing_key.public_pem, NOW).reason == (
        "invalid signature"
    )
    plain = sign_url(BASE, KPID, signing_key.private_pem, NOW + 60)
    assert verify_signed_url(plain.replace("~", "%7E"), KPID, signing_key.public_pem, NOW).ok


# -- integration: a throwaway PKI, moto over TLS, the edge process -------------------------------------


def make_pki(directory: Path) -> Pki:
    """The lab's own PKI (a CA and a server certificate for 127.0.0.1): the edge is tested as the lab runs it."""
    return create_pki(directory, ["127.0.0.1", "localhost"])


def child_env(home: Path) -> dict[str, str]:
    """Built from scratch: nothing of the caller's AWS_* or *_CA_BUNDLE reaches the children."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(home / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
    }


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode is not None
    return proc.returncode


def s3_client(endpoint: str, ca: Path) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        verify=str(ca),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@dataclass
class Edge:
    proc: subprocess.Popen[bytes]
    port: int
    stats_file: Path
    log_file: Path


def start_edge(
    work: Path, pki: Pki, public_key: Path, s3_endpoint: str, *, name: str = "edge", extra: list[str] | None = None
) -> Edge:
    port = free_port()
    stats_file = work / f"{name}-stats.json"
    log_file = work / f"{name}.log"
    argv = [
        sys.executable, "-m", "lab.edge", "--host", "127.0.0.1", "--port", str(port),
        "--cert", str(pki.server_cert), "--key", str(pki.server_key),
        "--s3-endpoint", s3_endpoint, "--s3-ca-file", str(pki.ca_cert), "--bucket", BUCKET, "--region", REGION,
        "--key-pair-id", KPID, "--public-key", str(public_key), "--stats-file", str(stats_file), *(extra or []),
    ]  # fmt: skip
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=work, env=child_env(work), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
    assert proc.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                data = os.read(proc.stdout.fileno(), 1024)
                if not data:
                    break
                line += data
    if line.decode().strip() != f"edge ready on https://127.0.0.1:{port}":
        code = stop(proc)
        pytest.fail(f"edge did not start (exit {code}, said {line!r}): {log_file.read_text()}")
    return Edge(proc, port, stats_file, log_file)


@dataclass
class Lab:
    pki: Pki
    dir: Path
    edge: Edge
    s3_endpoint: str
    blob: bytes
    etag: str
    public_key: Path
    client_tls: ssl.SSLContext


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, signing_key: KeyPair) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("edge-lab")
    pki = make_pki(work)
    public_key = work / "cdn.pub.pem"
    public_key.write_bytes(signing_key.public_pem)
    moto_bin = Path(sys.executable).with_name("moto_server")
    assert moto_bin.exists(), f"moto_server not found next to {sys.executable}"
    s3_port = free_port()
    s3_endpoint = f"https://127.0.0.1:{s3_port}"
    with (work / "moto.log").open("wb") as log:
        moto = subprocess.Popen(
            [
                str(moto_bin),
                "-H",
                "127.0.0.1",
                "-p",
                str(s3_port),
                "-c",
                str(pki.server_cert),
                "-k",
                str(pki.server_key),
            ],
            cwd=work,
            env=child_env(work),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    edge: Edge | None = None
    try:
        client = s3_client(s3_endpoint, pki.ca_cert)
        deadline = time.monotonic() + 30
        while True:
            assert moto.poll() is None, f"moto_server exited: {(work / 'moto.log').read_text()}"
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.create_bucket(Bucket=BUCKET)
        blob = os.urandom(BLOB_SIZE)
        etag = client.put_object(Bucket=BUCKET, Key=KEY, Body=blob)["ETag"]
        edge = start_edge(work, pki, public_key, s3_endpoint)
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        yield Lab(pki, work, edge, s3_endpoint, blob, etag, public_key, tls)
    finally:
        edge_code = stop(edge.proc) if edge else 0
        moto_code = stop(moto)
    assert edge_code == 0, f"edge did not shut down cleanly on SIGTERM: {edge_code}"
    assert moto_code is not None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(lab: Lab, method: str, url: str, headers: dict[str, str] | None = None, port: int | None = None) -> Reply:
    target = url.split(f"127.0.0.1:{port or lab.edge.port}", 1)[1] if url.startswith("https://") else url
    conn = http.client.HTTPSConnection("127.0.0.1", port or lab.edge.port, context=lab.client_tls, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def signed(lab: Lab, key: KeyPair, path: str = KEY, expires_in: int = 300, port: int | None = None) -> str:
    return sign_url(
        f"https://127.0.0.1:{port or lab.edge.port}/{path}", KPID, key.private_pem, int(time.time()) + expires_in
    )


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_signed_get_returns_the_exact_object(lab: Lab, signing_key: KeyPair) -> None:
    reply = fetch(lab, "GET", signed(lab, signing_key))
    assert reply.status == 200
    assert reply.body == lab.blob
    assert reply.headers["content-length"] == str(BLOB_SIZE)
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["etag"] == lab.etag


def test_signed_get_through_urllib_like_a_client_following_a_redirect(lab: Lab, signing_key: KeyPair) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=lab.client_tls))
    with opener.open(signed(lab, signing_key), timeout=30) as resp:
        assert resp.status == 200
        assert resp.read() == lab.blob


def test_head_returns_the_length_without_a_body(lab: Lab, signing_key: KeyPair) -> None:
    reply = fetch(lab, "HEAD", signed(lab, signing_key))
    assert reply.status == 200
    assert reply.headers["content-length"] == str(BLOB_SIZE)
    assert reply.headers["etag"] == lab.etag
    assert reply.body == b""


def test_single_range_is_served_from_s3(lab: Lab, signing_key: KeyPair) -> None:
    reply = fetch(lab, "GET", signed(lab, signing_key), headers={"Range": "bytes=100-199"})
    assert reply.status == 206
    assert reply.body == lab.blob[100:200]
    assert reply.headers["content-range"] == f"bytes 100-199/{BLOB_SIZE}"


def test_bad_urls_are_forbidden(lab: Lab, signing_key: KeyPair, other_key: KeyPair) -> None:
    good = signed(lab, signing_key)
    signature = good.split("Signature=")[1].split("&")[0]
    flipped = signature[:50] + ("A" if signature[50] != "A" else "B") + signature[51:]
    cases = {
        good.replace("/aa/aaaa/", "/ab/aaaa/"): "forbidden: resource or Expires does not match the signature",
        good.replace(signature, flipped): "forbidden: invalid signature",
        signed(lab, signing_key, expires_in=-5): "forbidden: expired",
        signed(lab, other_key): "forbidden: invalid signature",
        good.replace(KPID, "APKAOTHERKEYPAIR"): "forbidden: unknown Key-Pair-Id",
        f"https://127.0.0.1:{lab.edge.port}/{KEY}": "forbidden: missing Expires",
    }
    for url, body in cases.items():
        reply = fetch(lab, "GET", url)
        assert (reply.status, reply.body.decode()) == (403, body), url
        assert reply.headers["content-type"].startswith("text/plain")
    assert fetch(lab, "HEAD", signed(lab, signing_key, expires_in=-5)).status == 403


def test_host_header_is_part_of_the_resource(lab: Lab, signing_key: KeyPair) -> None:
    url = signed(lab, signing_key)
    reply = fetch(lab, "GET", url, headers={"Host": "cdn.example.com"})
    assert reply.status == 403
    assert reply.body == b"forbidden: resource or Expires does not match the signature"


def test_missing_object_is_404_and_other_methods_405(lab: Lab, signing_key: KeyPair) -> None:
    missing = signed(lab, signing_key, path="docker/registry/v2/blobs/sha256/bb/bbbb/data")
    assert fetch(lab, "GET", missing).status == 404
    assert fetch(lab, "HEAD", missing).status == 404
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = fetch(lab, method, signed(lab, signing_key))
        assert reply.status == 405, method
        assert reply.headers["allow"] == "GET, HEAD"


def test_stats_file_counts_requests_forbidden_and_body_bytes(lab: Lab, signing_key: KeyPair) -> None:
    # An edge of its own: the module's edge records a request after its reply is sent, so a snapshot of its
    # counters taken right after another test may still miss that test's last request.
    edge = start_edge(lab.dir, lab.pki, lab.public_key, lab.s3_endpoint, name="edge-stats")
    try:
        assert json.loads(edge.stats_file.read_text()) == {"requests": 0, "forbidden": 0, "bytes": 0}
        assert fetch(lab, "GET", signed(lab, signing_key, port=edge.port), port=edge.port).status == 200
        assert fetch(lab, "GET", signed(lab, signing_key, expires_in=-5, port=edge.port), port=edge.port).status == 403
        assert fetch(lab, "HEAD", signed(lab, signing_key, port=edge.port), port=edge.port).status == 200
        expected = {"requests": 3, "forbidden": 1, "bytes": BLOB_SIZE}
        wait_for(lambda: json.loads(edge.stats_file.read_text()) == expected)
    finally:
        assert stop(edge.proc) == 0
    assert not [p for p in edge.stats_file.parent.iterdir() if p.name.startswith(f".{edge.stats_file.name}")]


def test_log_has_one_line_per_request_and_never_the_signature(lab: Lab, signing_key: KeyPair) -> None:
    path = f"docker/registry/v2/blobs/sha256/cc/log-{os.urandom(4).hex()}/data"
    expired, good = signed(lab, signing_key, path=path, expires_in=-5), signed(lab, signing_key, path=path)
    assert fetch(lab, "GET", expired).status == 403
    assert fetch(lab, "HEAD", good).status == 404
    wait_for(lambda: lab.edge.log_file.read_text().count(f"/{path}?") == 2)
    log = lab.edge.log_file.read_text()
    for url in (expired, good):
        assert url.split("Signature=")[1].split("&")[0] not in log
    assert "Signature" not in log
    first, second = [line for line in log.splitlines() if f"/{path}?" in line]
    assert (
        f" GET /{path}?Expires={expired.split('Expires=')[1].split('&')[0]}&Key-Pair-Id={KPID} 403 0 (expired)" in first
    )
    assert f" HEAD /{path}?Expires=" in second
    assert second.endswith(f"&Key-Pair-Id={KPID} 404 0")


def test_unreachable_s3_is_502(lab: Lab, signing_key: KeyPair) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    edge = start_edge(lab.dir, lab.pki, lab.public_key, dead, name="edge-dead-origin")
    try:
        reply = fetch(lab, "GET", signed(lab, signing_key, port=edge.port), port=edge.port)
        assert reply.status == 502
        assert reply.body.startswith(b"bad gateway")
    finally:
        assert stop(edge.proc) == 0


def test_bad_arguments_exit_2_with_a_message(lab: Lab) -> None:
    base = [sys.executable, "-m", "lab.edge", "--host", "127.0.0.1", "--cert", str(lab.pki.server_cert)]
    cases = [
        (["--port", "99999"], "port out of range"),
        (["--port", "1", "--key", "/nonexistent"], "no such file: /nonexistent"),
        (["--port", "1"], "the following arguments are required"),
    ]
    full = [
        "--key", str(lab.pki.server_key), "--s3-endpoint", lab.s3_endpoint, "--s3-ca-file", str(lab.pki.ca_cert),
        "--bucket", BUCKET, "--region", REGION, "--key-pair-id", KPID, "--stats-file", str(lab.dir / "x.json"),
    ]  # fmt: skip
    for extra, message in cases:
        done = subprocess.run(base + extra, capture_output=True, env=child_env(lab.dir), cwd=lab.dir, timeout=60)
        assert done.returncode == 2, (extra, done.stderr)
        assert message in done.stderr.decode(), done.stderr
    not_a_key = subprocess.run(
        [*base, "--port", "0", *full, "--public-key", str(lab.pki.server_cert)],
        capture_output=True,
        env=child_env(lab.dir),
        cwd=lab.dir,
        timeout=60,
    )
    assert not_a_key.returncode == 2
    assert "not an RSA public key PEM" in not_a_key.stderr.decode()
