"""The token service in front of the real registry: Debian's docker-registry 2.8.2, skopeo, on loopback.

One token service (`python -m auth` under gunicorn, TLS) and one registry (token auth, filesystem
storage, TLS) serve the whole module. Clients trust only the throwaway CA (skopeo's `--dest-cert-dir`;
certificate checks stay on). What matters is that the REGISTRY refuses: pushes denied by the policy
fail at the registry, and tokens we forge ourselves (expired, another key, another audience or issuer)
get a 401 from the registry. A missing binary fails the module (it never skips).

Tests run in file order: the robot test reloads the service with the robot expired.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth.certificates import Issuer, certificate, distinguished_name
from auth.local import hash_secret
from auth.tokens import create_signing_pair
from lab import supervisor
from lab.image import build_image, layer_digests
from lab.pki import create_pki
from tests.helpers.registry import REGISTRY_BINARY, Response, call, status_of
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE = "registry.lab.test"
ISSUER = "registry-fleet-token"
ACCOUNTS = ("alice", "bob", "carol", "dave", "root", "mallory")
ROBOT = "robot-ci-a"


@dataclass
class Stack:
    directory: Path
    ca_file: str
    cert_dir: str
    auth_url: str
    registry_url: str
    config_file: Path
    config: dict[str, Any]
    passwords: dict[str, str]
    signing_key: rsa.RSAPrivateKey
    signing_cert: x509.Certificate
    auth_service: supervisor.Service
    registry: supervisor.Service
    image: str  # oci:<layout>:<tag>, a two-layer image built with umoci
    layout: Path

    @property
    def host(self) -> str:
        return self.registry_url.removeprefix("https://")

    def creds(self, account: str) -> str:
        return f"{account}:{self.passwords[account]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [b for b in (REGISTRY_BINARY, "/usr/bin/skopeo", "/usr/bin/umoci") if not Path(b).exists()]
    assert not missing, f"missing {missing}: apt-get install -y docker-registry skopeo umoci"
    d = tmp_path_factory.mktemp("auth-stack")
    pki = create_pki(d / "pki", ["127.0.0.1", "localhost"])
    cert_dir = d / "certs"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    key_file, cert_file = create_signing_pair(d / "signing")
    auth_port, registry_port = supervisor.free_port(), supervisor.free_port()
    passwords = {a: secrets.token_urlsafe(12) for a in (*ACCOUNTS, ROBOT)}
    config = {
        "issuer": ISSUER,
        "service": SERVICE,
        "token_lifetime_seconds": 300,
        "signing_key": str(key_file),
        "signing_cert": str(cert_file),
        "bcrypt_min_cost": 4,  # tests only: production keeps the default minimum of 10
        "users": {a: {"password_hash": hash_secret(passwords[a], 4)} for a in ACCOUNTS},
        "policy": {
            "teams": {
                "team-a": {
                    "namespaces": ["team-a"],
                    "members": {"alice": "reader", "bob": "developer", "carol": "maintainer"},
                },
                "team-b": {"namespaces": ["team-b"], "members": {"dave": "developer"}},
            },
            "robots": {
                ROBOT: {
                    "namespace": "team-a/ci",
                    "actions": ["pull", "push"],
                    "expires": (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat(),
                    "token_hash": hash_secret(passwords[ROBOT], 4),
                }
            },
            "admins": ["root"],
        },
    }
    config_file = d / "auth.yml"
    config_file.write_text(yaml.safe_dump(config))
    started: list[supervisor.Service] = []

    def launch(name: str, argv: list[str], env: dict[str, str], port: int) -> supervisor.Service:
        service = supervisor.Service(name, argv, str(d / f"{name}.log"), {"https": port}, env=supervisor.clean_env(env))
        supervisor.start(service, cwd=REPO_ROOT)
        started.append(service)
        return service

    registry_config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(d / "storage")}, "delete": {"enabled": True}},
        "http": {
            "addr": f"127.0.0.1:{registry_port}",
            "host": f"https://127.0.0.1:{registry_port}",
            "tls": {"certificate": str(pki.server_cert), "key": str(pki.server_key), "minimumtls": "tls1.2"},
        },
        "auth": {
            "token": {
                "realm": f"https://127.0.0.1:{auth_port}/auth",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(cert_file),
            }
        },
    }
    (d / "registry.yml").write_text(yaml.safe_dump(registry_config))
    try:
        auth_service = launch(
            "auth",
            [
                sys.executable, "-m", "auth", "--config", str(config_file), "--bind", f"127.0.0.1:{auth_port}",
                "--certfile", str(pki.server_cert), "--keyfile", str(pki.server_key),
                # No DynamoDB table here: one worker keeps the lockout's counts in one process.
                "--workers", "1",
            ],
            {},
            auth_port,
        )  # fmt: skip
        registry = launch(
            "registry",
            [REGISTRY_BINARY, "serve", str(d / "registry.yml")],
            # A clean environment (never AWS_CA_BUNDLE); the realm is trusted through the lab CA.
            {"SSL_CERT_FILE": str(pki.ca_cert), "REGISTRY_HTTP_SECRET": secrets.token_urlsafe(32)},
            registry_port,
        )
        ca = str(pki.ca_cert)
        supervisor.wait_ready(auth_service, lambda: status_of(ca, f"https://127.0.0.1:{auth_port}/healthz") == 200)
        supervisor.wait_ready(registry, lambda: status_of(ca, f"https://127.0.0.1:{registry_port}/") == 200)
        layout = d / "layout"
        image = build_image(layout, "1", [{"a.bin": 64 * 1024}, {"b.bin": 32 * 1024}])
        yield Stack(
            directory=d,
            ca_file=ca,
            cert_dir=str(cert_dir),
            auth_url=f"https://127.0.0.1:{auth_port}",
            registry_url=f"https://127.0.0.1:{registry_port}",
            config_file=config_file,
            config=config,
            passwords=passwords,
            signing_key=load_key(key_file),
            signing_cert=x509.load_pem_x509_certificate(cert_file.read_bytes()),
            auth_service=auth_service,
            registry=registry,
            image=image,
            layout=layout,
        )
    finally:
        for service in reversed(started):
            supervisor.stop(service)
        assert [s.name for s in started if supervisor.port_open(s.ports["https"])] == []


# --- helpers --------------------------------------------------------------------------------------


def load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def token_for(stack: Stack, account: str | None, *scopes: str, password: str | None = None) -> Response:
    query = urllib.parse.urlencode([("service", SERVICE), *(("scope", s) for s in scopes)])
    basic = None if account is None else (account, password if password is not None else stack.passwords[account])
    return call(stack.ca_file, "GET", f"{stack.auth_url}/auth?{query}", basic=basic)


def bearer(stack: Stack, account: str, *scopes: str) -> str:
    status, _, body = token_for(stack, account, *scopes)
    assert status == 200, body
    return str(json.loads(body)["token"])


def skopeo(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """skopeo with a throwaway HOME (no blob-info cache shared between calls) and no caller env."""
    home = stack.directory / f"home-{secrets.token_hex(4)}"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=60)


def push(stack: Stack, account: str | None, repo: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    creds = (
        ["--dest-no-creds"]
        if account is None
        else ["--dest-creds", f"{account}:{password or stack.passwords[account]}"]
    )
    dest = f"docker://{stack.host}/{repo}"
    return skopeo(stack, "copy", "--quiet", "--dest-cert-dir", stack.cert_dir, *creds, stack.image, dest)


def pull(stack: Stack, account: str | None, repo: str, layout: Path, tag: str) -> subprocess.CompletedProcess[str]:
    creds = ["--src-no-creds"] if account is None else ["--src-creds", stack.creds(account)]
    src = f"docker://{stack.host}/{repo}"
    return skopeo(stack, "copy", "--quiet", "--src-cert-dir", stack.cert_dir, *creds, src, f"oci:{layout}:{tag}")


def assert_denied(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, "expected the registry to refuse"
    assert any(w in proc.stderr.lower() for w in ("unauthorized", "denied", "authentication required")), proc.stderr


INSUFFICIENT = "error authorizing context: insufficient scope"


def assert_refused_by_the_registry(stack: Stack, action: Callable[[], subprocess.CompletedProcess[str]]) -> None:
    """The client held a valid token, and the registry itself refused it for lack of scope."""
    before = Path(stack.registry.log).read_text().count(INSUFFICIENT)
    assert_denied(action())
    assert Path(stack.registry.log).read_text().count(INSUFFICIENT) > before


def manifest_digest(stack: Stack, repo: str, tag: str, token: str) -> str:
    status, headers, body = call(
        stack.ca_file,
        "HEAD",
        f"{stack.registry_url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        bearer=token,
    )
    assert status == 200, body
    return headers["docker-content-digest"]


# --- roles, enforced by the registry ----------------------------------------------------------------


def test_developer_pushes_to_own_team_namespace_only(stack: Stack) -> None:
    done = push(stack, "bob", "team-a/app:1")
    assert done.returncode == 0, done.stderr
    assert_refused_by_the_registry(stack, lambda: push(stack, "bob", "team-b/app:1"))
    assert_denied(push(stack, "bob", "team-abc/app:1"))  # `team-a` does not cover `team-abc`
    done = push(stack, "dave", "team-b/app:1")
    assert done.returncode == 0, done.stderr


def test_reader_pulls_and_cannot_push(stack: Stack) -> None:
    back = stack.directory / "pulled-by-reader"
    done = pull(stack, "alice", "team-a/app:1", back, "1")
    assert done.returncode == 0, done.stderr
    assert layer_digests(back, "1") == layer_digests(stack.layout, "1")
    assert_refused_by_the_registry(stack, lambda: push(stack, "alice", "team-a/app:2"))
    assert_denied(pull(stack, "alice", "team-b/app:1", stack.directory / "not-hers", "1"))


def test_maintainer_deletes_a_manifest_and_a_developer_cannot(stack: Stack) -> None:
    assert push(stack, "bob", "team-a/app:doomed").returncode == 0
    scope = "repository:team-a/app:pull,delete"
    digest = manifest_digest(stack, "team-a/app", "doomed", bearer(stack, "bob", scope))
    url = f"{stack.registry_url}/v2/team-a/app/manifests/{digest}"
    developer = bearer(stack, "bob", scope)
    assert jwt.decode(developer, options={"verify_signature": False})["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull"]}
    ]
    status, headers, _ = call(stack.ca_file, "DELETE", url, bearer=developer)
    assert status == 401 and 'error="insufficient_scope"' in headers["www-authenticate"]
    status, _, body = call(stack.ca_file, "DELETE", url, bearer=bearer(stack, "carol", scope))
    assert status == 202, body
    status, _, _ = call(stack.ca_file, "HEAD", url, bearer=bearer(stack, "carol", scope))
    assert status == 404


def test_admin_reads_the_catalog_and_a_developer_cannot(stack: Stack) -> None:
    url = f"{stack.registry_url}/v2/_catalog"
    status, _, body = call(stack.ca_file, "GET", url, bearer=bearer(stack, "root", "registry:catalog:*"))
    assert status == 200, body
    assert {"team-a/app", "team-b/app"} <= set(json.loads(body)["repositories"])
    status, _, _ = call(stack.ca_file, "GET", url, bearer=bearer(stack, "bob", "registry:catalog:*"))
    assert status == 401


def test_robot_pushes_only_to_its_namespace_and_stops_when_expired(stack: Stack) -> None:
    done = push(stack, ROBOT, "team-a/ci/app:1")
    assert done.returncode == 0, done.stderr
    assert_refused_by_the_registry(stack, lambda: push(stack, ROBOT, "team-a/app:robot"))
    # Expire the robot and reload the service (SIGHUP: gunicorn re-reads the file, new worker).
    expired = json.loads(json.dumps(stack.config))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    expired["policy"]["robots"][ROBOT]["expires"] = past.isoformat()
    stack.config_file.write_text(yaml.safe_dump(expired))
    os.kill(stack.auth_service.pid, signal.SIGHUP)
    wait_for(lambda: token_for(stack, ROBOT, "repository:team-a/ci/app:pull")[0] == 401, 20, "the robot refused")
    assert_denied(push(stack, ROBOT, "team-a/ci/app:2"))
    log = Path(stack.auth_service.log).read_text()
    assert f"robot '{ROBOT}' refused: expired" in log
    assert token_for(stack, "bob", "repository:team-a/app:pull")[0] == 200, "the others still work after reload"
    # A broken file on reload is refused; the running configuration stays.
    stack.config_file.write_text("issuer: [")
    os.kill(stack.auth_service.pid, signal.SIGHUP)
    wait_for(lambda: "configuration reload refused" in Path(stack.auth_service.log).read_text(), 20, "the refusal")
    assert token_for(stack, "bob", "repository:team-a/app:pull")[0] == 200
    assert supervisor.pid_alive(stack.auth_service.pid)


# --- who is refused -------------------------------------------------------------------------------------


def test_anonymous_gets_nothing(stack: Stack) -> None:
    status, headers, _ = call(stack.ca_file, "GET", f"{stack.registry_url}/v2/")
    assert status == 401
    assert headers["www-authenticate"] == f'Bearer realm="{stack.auth_url}/auth",service="{SERVICE}"'
    status, _, body = token_for(stack, None, "repository:team-a/app:pull,push")
    assert status == 200
    assert jwt.decode(json.loads(body)["token"], options={"verify_signature": False})["access"] == []
    assert_denied(pull(stack, None, "team-a/app:1", stack.directory / "anon", "1"))
    assert_refused_by_the_registry(stack, lambda: push(stack, None, "team-a/anon:1"))


def test_wrong_password_is_refused_by_the_token_service(stack: Stack) -> None:
    status, headers, body = token_for(stack, "dave", "repository:team-b/app:pull", password="wrong")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="registry-fleet"'
    assert b"token" not in body
    assert_denied(push(stack, "dave", "team-b/app:2", password="wrong"))


# --- forged tokens: the registry refuses them -----------------------------------------------------------


def other_ca_signer() -> tuple[rsa.RSAPrivateKey, list[str]]:
    """A signing key with a certificate from another CA, and the x5c chain (leaf, CA) to present it."""
    ca = Issuer(ec.generate_private_key(ec.SECP256R1()), distinguished_name("someone else's CA"))
    ca_cert = certificate(ca.key, ca.name, 1, "ca")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = certificate(key, distinguished_name("registry-fleet token signer"), 1, "signing", issuer=ca)
    return key, [der_b64(leaf), der_b64(ca_cert)]


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def forge(stack: Stack, case: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "root",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": secrets.token_hex(8),
        "access": [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}],
    }
    key: rsa.RSAPrivateKey = stack.signing_key
    headers: dict[str, Any] = {"x5c": [der_b64(stack.signing_cert)]}
    if case == "expired":
        claims.update(iat=now - 600, nbf=now - 600, exp=now - 120)  # beyond the registry's 60 s leeway
    elif case == "expired_within_leeway":
        claims.update(iat=now - 330, nbf=now - 330, exp=now - 30)
    elif case == "other_ca":
        key, headers["x5c"] = other_ca_signer()
    elif case == "other_key_our_x5c":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif case == "wrong_audience":
        claims["aud"] = "registry.elsewhere.test"
    elif case == "audience_list":
        claims["aud"] = [SERVICE]
    elif case == "wrong_issuer":
        claims["iss"] = "someone-else"
    elif case == "kid_not_x5c":
        headers = {"kid": "token-signer"}
    elif case != "good":
        raise AssertionError(case)
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


def registry_status(stack: Stack, token: str) -> int:
    return call(stack.ca_file, "GET", f"{stack.registry_url}/v2/team-a/app/tags/list", bearer=token)[0]


def test_the_registry_accepts_our_own_forgery_as_a_control(stack: Stack) -> None:
    assert registry_status(stack, forge(stack, "good")) == 200
    # 2.8.2 allows 60 s of clock skew after exp (measured): the real lifetime is exp + 60 s.
    assert registry_status(stack, forge(stack, "expired_within_leeway")) == 200


@pytest.mark.parametrize(
    ("case", "logged"),
    [
        ("expired", "token not to be used after"),
        ("other_ca", "x509: certificate signed by unknown authority"),
        ("other_key_our_x5c", "unable to verify token signature"),
        ("wrong_audience", "token intended for another audience"),
        ("audience_list", "cannot unmarshal array into Go struct field ClaimSet.aud of type string"),
        ("wrong_issuer", "token from untrusted issuer"),
        ("kid_not_x5c", "token signed by untrusted key"),
    ],
)
def test_the_registry_refuses_forged_tokens(stack: Stack, case: str, logged: str | None) -> None:
    status, headers, _ = call(
        stack.ca_file, "GET", f"{stack.registry_url}/v2/team-a/app/tags/list", bearer=forge(stack, case)
    )
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"]
    if logged:
        wait_for(lambda: logged in Path(stack.registry.log).read_text(), 5, f"registry log line {logged!r}")


# --- hostile and malformed requests ---------------------------------------------------------------------


def test_malformed_and_hostile_requests_get_a_clear_4xx_and_no_token(stack: Stack) -> None:
    bad = {
        "repository:team-a/app": "not of the form type:name:actions",
        "repository:Team-A/app:pull": "is not a repository name",
        "repository:team-a/../etc:pull": "is not a repository name",
        "repository:team-a/app:pull;rm": "action 'pull;rm'",
        "blob:team-a/app:pull": "unknown resource type",
    }
    for scope, words in bad.items():
        status, _, body = token_for(stack, "bob", scope)
        assert status == 400 and words in body.decode() and scope in body.decode(), (scope, body)
    status, _, body = call(stack.ca_file, "GET", f"{stack.auth_url}/auth?service=elsewhere", basic=("bob", "x"))
    assert status == 400 and b"unknown service" in body
    many = urllib.parse.urlencode(
        [("service", SERVICE)] + [("scope", f"repository:team-a/r{i}:pull") for i in range(21)]
    )
    status, _, body = call(stack.ca_file, "GET", f"{stack.auth_url}/auth?{many}", basic=("bob", stack.passwords["bob"]))
    assert status == 400 and b"at most 20" in body
    status, _, body = call(
        stack.ca_file,
        "GET",
        f"{stack.auth_url}/auth?service={SERVICE}&account=root",
        basic=("bob", stack.passwords["bob"]),
    )
    assert status == 400 and b"account must be" in body
    # LDAP filter metacharacters as a user name: the local backend just does not know that account.
    status, _, body = token_for(stack, "*)(uid=*", "repository:team-a/app:pull", password="*")
    assert status == 401 and b"token" not in body
    # Huge headers: gunicorn refuses them before the app sees them.
    status, _, body = call(
        stack.ca_file, "GET", f"{stack.auth_url}/auth?service={SERVICE}", headers={"X-Big": "a" * 20_000}
    )
    assert status == 431 and b"token" not in body
    many_headers = {f"X-H{i}": "1" for i in range(64)}
    status, _, body = call(stack.ca_file, "GET", f"{stack.auth_url}/auth?service={SERVICE}", headers=many_headers)
    assert status == 431 and b"token" not in body
    status, _, body = call(stack.ca_file, "GET", f"{stack.auth_url}/auth?service={SERVICE}&{'x' * 9000}=1")
    assert status == 414 and b"token" not in body
    # A GET takes no body; a POST is an OAuth2 form of at most 16 KiB; other methods are refused.
    status, _, body = call(stack.ca_file, "GET", f"{stack.auth_url}/auth?service={SERVICE}", body=b"x" * 4096)
    assert status == 413 and b"token" not in body
    status, _, body = call(stack.ca_file, "POST", f"{stack.auth_url}/auth", body=b"grant_type=password")
    assert status == 400 and b"application/x-www-form-urlencoded" in body
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = call(stack.ca_file, "POST", f"{stack.auth_url}/auth", headers=form, body=b"x" * 20_000)
    assert status == 413
    status, _, _ = call(stack.ca_file, "PUT", f"{stack.auth_url}/auth?service={SERVICE}")
    assert status == 405


def test_repeated_failures_back_off_with_429(stack: Stack) -> None:
    for i in range(5):
        assert token_for(stack, "mallory", password=f"guess-{i}")[0] == 401
    status, headers, body = token_for(stack, "mallory", password="guess-5")
    assert status == 429 and 0 < int(headers["retry-after"]) <= 32, body
    status, headers, _ = token_for(stack, "mallory")  # even the right password waits
    assert status == 429 and int(headers["retry-after"]) > 0
    assert token_for(stack, "bob", "repository:team-a/app:pull")[0] == 200, "other accounts are not affected"


def test_audit_lines_are_json_and_hold_no_secret(stack: Stack) -> None:
    text = Path(stack.auth_service.log).read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"event": "token"')]
    outcomes = {line["outcome"] for line in lines}
    assert {"granted", "denied", "unauthenticated", "locked", "bad_request"} <= outcomes
    for password in stack.passwords.values():
        assert password not in text
    assert "eyJ" not in text, "no JWT in the log"
    pushes = [
        line for line in lines if line["account"] == "bob" and "repository:team-b/app:pull,push" in line["requested"]
    ]
    assert pushes and all(line["granted"] == [] and line["outcome"] == "denied" for line in pushes)
