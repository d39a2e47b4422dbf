"""Rotating the token signing key, against the real registry: Debian's docker-registry 2.8.2 on loopback.

The fleet rotates in three runs (components/access.py): every host trusts generations 1 and 2 and signs
with 1; then signs with 2; then trusts 2 only. What only the real registry can show is that this works:
a registry whose rootcertbundle holds two self-signed signing certificates (the fleet's trust bundle,
concatenated by `components.access.trust_bundle`) verifies tokens signed by either key, refuses a token
from a key it does not trust, and once restarted with the new certificate alone refuses the old key's
tokens while accepting the new key's. Tokens are minted by the token service's own `TokenSigner` from the
files `auth.tokens.create_signing_pair` writes (the leaf certificate goes into `x5c`).

"Accepted" means the registry verified the token and looked the repository up: 404 NAME_UNKNOWN (the
storage is empty) with the token's scope; "refused" is 401 invalid_token, the reason in the registry's log.
A missing binary fails the module (it never skips).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from auth.scopes import Scope
from auth.tokens import TokenSigner, create_signing_pair
from components.access import trust_bundle
from lab import supervisor
from lab.pki import LabPki, create_pki
from tests.helpers.registry import REGISTRY_BINARY, call, status_of
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE = "registry.rotation.test"
ISSUER = "registry-fleet-rotation"
REPOSITORY = "team-a/app"
UNTRUSTED = "x509: certificate signed by unknown authority"


@dataclass
class Lab:
    directory: Path
    pki: LabPki
    port: int
    signing: dict[str, tuple[Path, Path]]  # generation -> (key, certificate), as create_signing_pair wrote them


@dataclass
class Registry:
    service: supervisor.Service
    url: str
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            supervisor.stop(self.service)
            self.stopped = True


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    assert Path(REGISTRY_BINARY).exists(), f"missing {REGISTRY_BINARY}: apt-get install -y docker-registry"
    d = tmp_path_factory.mktemp("token-rotation")
    pki = create_pki(d / "pki", ["127.0.0.1", "localhost"])
    # Same default common name for all three: the registry must tell them apart by key, not by name.
    signing = {g: create_signing_pair(d / f"signing-{g}") for g in ("g1", "g2", "untrusted")}
    return Lab(d, pki, supervisor.free_port(), signing)


@pytest.fixture
def registries(lab: Lab) -> Iterator[list[Registry]]:
    """Registries started by a test (one at a time, on the lab's port); all stopped afterwards."""
    started: list[Registry] = []
    yield started
    for registry in reversed(started):
        registry.stop()
    alive = [r.service.name for r in started if supervisor.pid_alive(r.service.pid)]
    assert not alive, f"still running: {alive}"
    # A connect can briefly succeed by itself (TCP self-connect on an ephemeral port): ask a few times.
    wait_for(lambda: not supervisor.port_open(lab.port), 5, f"port {lab.port} to close")


def start_registry(lab: Lab, started: list[Registry], phase: str, trusted: Sequence[str]) -> Registry:
    """The registry with token auth whose rootcertbundle is the trusted generations' certificates, in order."""
    for running in started:
        running.stop()  # a host replaced by the instance refresh: same port, same storage
    bundle = lab.directory / f"token-trust-{phase}.crt"
    bundle.write_text(trust_bundle([lab.signing[g][1].read_text() for g in trusted]))
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(lab.directory / "storage")}},
        "http": {
            "addr": f"127.0.0.1:{lab.port}",
            "host": f"https://127.0.0.1:{lab.port}",
            "tls": {"certificate": str(lab.pki.server_cert), "key": str(lab.pki.server_key), "minimumtls": "tls1.2"},
        },
        "auth": {
            "token": {
                # No token service here: tokens are minted in the test. The realm is only advertised.
                "realm": f"https://127.0.0.1:{lab.port}/auth",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(bundle),
            }
        },
    }
    config_file = lab.directory / f"registry-{phase}.yml"
    config_file.write_text(yaml.safe_dump(config))
    service = supervisor.Service(
        f"registry-{phase}",
        [REGISTRY_BINARY, "serve", str(config_file)],
        str(lab.directory / f"registry-{phase}.log"),
        {"https": lab.port},
        # A clean environment (never AWS_CA_BUNDLE), as the lab starts it.
        env=supervisor.clean_env({"REGISTRY_HTTP_SECRET": secrets.token_urlsafe(32)}),
    )
    supervisor.start(service, cwd=REPO_ROOT)
    registry = Registry(service, f"https://127.0.0.1:{lab.port}")
    started.append(registry)
    # 401 to an anonymous /v2/: up, and asking for a token.
    supervisor.wait_ready(service, lambda: status_of(str(lab.pki.ca_cert), f"{registry.url}/v2/") == 401)
    return registry


def mint(lab: Lab, generation: str) -> str:
    """A pull token for REPOSITORY, signed as the token service signs (TokenSigner, x5c = the leaf)."""
    key, cert = lab.signing[generation]
    signer = TokenSigner.load(key, cert, ISSUER, 300, time.time())
    return signer.mint("alice", SERVICE, [Scope("repository", REPOSITORY, ("pull",))], time.time()).token


def tags_list(lab: Lab, registry: Registry, token: str) -> tuple[int, dict[str, str], bytes]:
    return call(str(lab.pki.ca_cert), "GET", f"{registry.url}/v2/{REPOSITORY}/tags/list", bearer=token)


def assert_accepted(lab: Lab, registry: Registry, token: str, what: str) -> None:
    status, _, body = tags_list(lab, registry, token)
    # Past authentication: the registry looked the (absent) repository up.
    assert status == 404, f"{registry.service.name}: {what}: {status} {body!r}"
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN", body


def assert_refused(lab: Lab, registry: Registry, token: str, what: str) -> None:
    log = Path(registry.service.log)
    before = log.read_text().count(UNTRUSTED)
    status, headers, body = tags_list(lab, registry, token)
    assert status == 401, f"{registry.service.name}: {what}: {status} {body!r}"
    assert 'error="invalid_token"' in headers["www-authenticate"], headers
    wait_for(lambda: log.read_text().count(UNTRUSTED) > before, 5, f"{registry.service.name} logging {UNTRUSTED!r}")


def test_a_registry_trusting_both_generations_accepts_either_key_then_only_the_new_one(
    lab: Lab, registries: list[Registry]
) -> None:
    tokens = {g: mint(lab, g) for g in lab.signing}

    # Before the rotation, a host trusts generation 1 only: a token signed by 2 is refused. This is why
    # every host must trust 2 (phase a) before any host signs with it (phase b).
    before = start_registry(lab, registries, "before", ["g1"])
    assert_accepted(lab, before, tokens["g1"], "generation 1's token")
    assert_refused(lab, before, tokens["g2"], "generation 2's token, before phase a")

    # Phases a and b: the bundle holds both certificates, whichever the host signs with.
    both = start_registry(lab, registries, "both", ["g1", "g2"])
    assert Path(lab.directory / "token-trust-both.crt").read_text().count("BEGIN CERTIFICATE") == 2
    assert_accepted(lab, both, tokens["g1"], "generation 1's token")
    assert_accepted(lab, both, tokens["g2"], "generation 2's token")
    assert_refused(lab, both, tokens["untrusted"], "a key in no bundle")

    # Phase c: generation 2 alone. The token signed by 1 (still unexpired) is refused, 2's is accepted.
    after = start_registry(lab, registries, "after", ["g2"])
    assert_refused(lab, after, tokens["g1"], "generation 1's token after phase c")
    assert_accepted(lab, after, tokens["g2"], "generation 2's token")
    assert_refused(lab, after, tokens["untrusted"], "a key in no bundle")
    assert [r.service.name for r in registries] == ["registry-before", "registry-both", "registry-after"]
