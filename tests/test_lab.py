"""The lab, for real: Debian's docker-registry, nginx, moto (S3), the CDN edge, skopeo, on loopback.

One lab (two registry instances behind nginx, the dev stack's token auth: slapd and the token
service) serves the whole module; a second lab with two different `http.secret`s and a third in
htpasswd mode run beside it for one test each. Clients sign in as the lab's demo account (a team's
developer) and, where they need more, as another seeded account; roles themselves are tested in
tests/test_lab_access.py. Tests run in file order: the ones that kill an instance restore it,
and the one that stops S3 runs last. A missing binary fails the lab's start (it never skips): CI
installs the Debian packages first.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host.contract import REGISTRY_HEALTH_CODES
from infra.settings import Settings, settings_from_config
from lab import supervisor
from lab.accounts import registry_token
from lab.cloudfront import sign_url, verify_signed_url
from lab.demo import edge_bytes, push_and_pull
from lab.image import build_image, layer_digests, skopeo_copy, skopeo_digest
from lab.lab import DIRECTORY_SERVICE, GATES, INSTANCES, SCANNER_SERVICE, TOKEN_SERVICE, Lab, LabState, https_get
from lab.overrides import LAB_USER
from tests.helpers import settings_with, stack_config
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

Response = tuple[int, dict[str, str], bytes]
# htpasswd mode has no key but `mode` (the settings model refuses token mode's keys).
HTPASSWD_ACCESS: dict[str, Any] = {"mode": "htpasswd"}


def htpasswd_settings() -> Settings:
    """The dev stack with access mode htpasswd (the whole access object replaced, not merged)."""
    config = stack_config("dev")
    config["access"] = HTPASSWD_ACCESS
    return settings_from_config("dev", config)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab")
    state = Lab(settings_with("dev", {}), directory).up()  # the dev stack: token mode
    try:
        yield state
    finally:
        services = [state.service(name) for name in state.services]
        Lab.down(directory)
        # lab down leaves no process and no port behind.
        assert [s.name for s in services if supervisor.pid_alive(s.pid)] == []
        open_ports = [p for s in services for p in s.ports.values() if supervisor.port_open(p)]
        assert open_ports == []


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def call(
    state: LabState,
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    port: int | None = None,
) -> Response:
    """One HTTPS request trusting only the lab CA; redirects are returned, not followed."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=state.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", port or parts.port, context=context, timeout=30)
    hdrs = dict(headers or {})
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def authorization(state: LabState, *scopes: str, account: str | None = None) -> dict[str, str]:
    """What a client sends to a registry: Basic in htpasswd mode, else a bearer token from the realm
    for `scopes` (as the demo account, or `account`, with its lab-only password)."""
    name = account or state.username
    password = state.account(name)["password"]
    if state.auth_mode == "htpasswd":
        return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}
    status, body = registry_token(
        state.token["realm"], state.token["service"], state.ca_file, (name, password), list(scopes)
    )
    assert status == 200, body
    return {"Authorization": f"Bearer {body['token']}"}


def pull_auth(state: LabState, repo: str) -> dict[str, str]:
    return authorization(state, f"repository:{repo}:pull")


def deleter(state: LabState) -> str:
    """An account that may delete in the demo's namespace (a maintainer; htpasswd: the lab user)."""
    if state.auth_mode == "htpasswd":
        return state.username
    for entry in state.accounts:
        for grant in entry["teams"]:
            if state.namespace in grant["namespaces"] and "delete" in grant["actions"]:
                return str(entry["name"])
    raise AssertionError(f"no account may delete in {state.namespace}")


# --- push, pull, CDN --------------------------------------------------------------------------


def test_status_lists_url_ca_credentials_and_every_healthy_process(lab: LabState) -> None:
    status = Lab.status(Path(lab.state_dir))
    assert status["registry_url"] == lab.registry_url and Path(status["ca_file"]).exists()
    assert status["credentials"] == {"username": lab.username, "password": lab.password}
    assert lab.username == "team-a-developer" and lab.sample_repo == "team-a/sample", "the dev stack's demo account"
    assert status["auth"]["mode"] == "token" and status["auth"]["realm"] == f"{lab.registry_url}/auth"
    names = {p["name"]: p["health"] for p in status["processes"]}
    expected = ("s3", "events", "edge", DIRECTORY_SERVICE, TOKEN_SERVICE, *INSTANCES, *GATES, "lb", SCANNER_SERVICE)
    assert names == {n: "healthy" for n in expected}  # dev protects a namespace: the gates run
    assert all(p["pid"] > 0 and (p["ports"] or p["name"] == SCANNER_SERVICE) for p in status["processes"])
    assert (Path(lab.state_dir) / "state.json").stat().st_mode & 0o077 == 0, "holds every lab-only password"


def test_registry_config_is_the_fleets_renderer_with_lab_endpoints(lab: LabState) -> None:
    import yaml

    config = yaml.safe_load((Path(lab.state_dir) / f"{INSTANCES[0]}.yml").read_text())
    assert config["storage"]["s3"]["encrypt"] is True and config["storage"]["s3"]["keyid"].startswith("arn:aws:kms:")
    assert config["storage"]["s3"]["regionendpoint"] == lab.s3_endpoint
    assert config["middleware"]["storage"][0]["options"]["keypairid"] == lab.key_pair_id
    assert config["http"]["host"] == lab.registry_url and "secret" not in config["http"]
    assert (Path(lab.state_dir) / f"{INSTANCES[0]}.yml").stat().st_mode & 0o077 == 0, "holds the events token"


def test_push_and_pull_a_multi_layer_image_through_the_load_balancer(lab: LabState) -> None:
    result = push_and_pull(lab)  # raises if the pulled digests differ from the pushed ones
    assert result.layers >= 2
    assert result.edge_bytes > 2 * 1024 * 1024, "the pull's blob bytes came through the CDN edge"


def test_blob_get_redirects_to_the_edge_with_a_url_signed_for_the_stack_key(lab: LabState) -> None:
    layer = first_layer(lab)
    url = f"{lab.registry_url}/v2/{lab.sample_repo}/blobs/{layer}"
    status, headers, _ = call(lab, "GET", url, headers=pull_auth(lab, lab.sample_repo))
    assert status == 307
    location = headers["location"]
    assert location.startswith(lab.edge_url)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["Key-Pair-Id"] == [lab.key_pair_id]
    public_key = Path(lab.cdn_public_key).read_bytes()
    verdict = verify_signed_url(location, lab.key_pair_id, public_key, int(time.time()))
    assert verdict.ok, verdict.reason
    status, _, body = call(lab, "GET", location)
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer


def test_edge_refuses_tampered_and_expired_urls(lab: LabState) -> None:
    layer = first_layer(lab)
    url = f"{lab.registry_url}/v2/{lab.sample_repo}/blobs/{layer}"
    _, headers, _ = call(lab, "GET", url, headers=pull_auth(lab, lab.sample_repo))
    location = headers["location"]
    tampered = location.replace("/data?", "/dat4?") if "/data?" in location else location + "x"
    assert call(lab, "GET", tampered)[0] == 403
    bad_signature = location.replace("Signature=", "Signature=AAAA")
    assert call(lab, "GET", bad_signature)[0] == 403
    private_key = (Path(lab.state_dir) / "pki" / "cdn-signing.pem").read_bytes()
    resource = location.split("?", 1)[0]
    expired = sign_url(resource, lab.key_pair_id, private_key, expires=int(time.time()) - 5)
    status, _, body = call(lab, "GET", expired)
    assert status == 403, body
    fresh = sign_url(resource, lab.key_pair_id, private_key, expires=int(time.time()) + 60)
    assert call(lab, "GET", fresh)[0] == 200, "the same key signing a live URL is accepted"


def first_layer(state: LabState) -> str:
    status, _, body = call(
        state,
        "GET",
        f"{state.registry_url}/v2/{state.sample_repo}/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json", **pull_auth(state, state.sample_repo)},
    )
    assert status == 200, body
    return str(json.loads(body)["layers"][-1]["digest"])


# --- TLS and access -----------------------------------------------------------------------------


def test_tls_1_1_is_refused_and_tls_1_2_accepted(lab: LabState) -> None:
    port = port_of(lab.registry_url)

    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.create_default_context(cafile=lab.ca_file)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1: the server must refuse it
        context.minimum_version = context.maximum_version = version
        with (
            socket.create_connection(("127.0.0.1", port)) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            return str(tls.version())

    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"), pytest.warns(DeprecationWarning):
        handshake(ssl.TLSVersion.TLSv1_1)
    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_plain_http_is_redirected_to_https(lab: LabState) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(lab.http_url), timeout=10)
    conn.request("GET", "/v2/", headers={"Host": "127.0.0.1"})
    resp = conn.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://127.0.0.1:{port_of(lab.registry_url)}/v2/"


def test_anonymous_push_is_refused_and_sent_to_the_realm(lab: LabState) -> None:
    status, headers, _ = call(lab, "POST", f"{lab.registry_url}/v2/{lab.namespace}/anon/blobs/uploads/")
    assert status == 401
    challenge = headers.get("www-authenticate", "")
    assert challenge.startswith(f'Bearer realm="{lab.registry_url}/auth",service="{lab.token["service"]}"')


# --- two instances, one secret ------------------------------------------------------------------


def chunked_upload_across_instances(state: LabState, repo: str) -> tuple[int, bytes]:
    """POST on instance A, PATCH chunk 1 on A, PATCH chunk 2 on B, PUT on A. Returns (status, body)."""
    a = state.service(INSTANCES[0]).ports["https"]
    b = state.service(INSTANCES[1]).ports["https"]
    blob = os.urandom(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    auth = authorization(state, f"repository:{repo}:pull,push")  # one token, good on both instances
    status, headers, body = call(state, "POST", f"{state.registry_url}/v2/{repo}/blobs/uploads/", headers=auth, port=a)
    assert status == 202, body
    location = headers["location"]
    half = len(blob) // 2
    for port, chunk, start in ((a, blob[:half], 0), (b, blob[half:], half)):
        status, headers, body = call(
            state,
            "PATCH",
            location,
            body=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
                **auth,
            },
            port=port,
        )
        if status != 202:
            return status, body
        location = headers["location"]
    sep = "&" if "?" in location else "?"
    status, _, body = call(state, "PUT", f"{location}{sep}digest={digest}", headers=auth, port=a)
    if status == 201:
        got = call(state, "GET", f"{state.registry_url}/v2/{repo}/blobs/{digest}", headers=auth)
        assert got[0] in (200, 307)
    return status, body


def test_chunked_upload_alternating_between_instances_completes(lab: LabState) -> None:
    status, body = chunked_upload_across_instances(lab, f"{lab.namespace}/chunked")
    assert status == 201, body


def test_the_same_upload_fails_when_instances_have_different_secrets(tmp_path: Path) -> None:
    """Why the fleet shares one http.secret: a second lab beside the first, one secret per instance.
    (In htpasswd mode, which starts faster: the secret, not the auth, is what this shows.)"""
    directory = tmp_path / "two-secrets"
    state = Lab(htpasswd_settings(), directory, http_secrets=("a" * 64, "b" * 64)).up()
    try:
        status, body = chunked_upload_across_instances(state, f"{state.namespace}/chunked")
    finally:
        Lab.down(directory)
    assert status in (400, 404), (status, body)
    assert b"BLOB_UPLOAD_INVALID" in body or b"BLOB_UPLOAD_UNKNOWN" in body


def test_pushes_and_pulls_go_on_when_an_instance_dies(lab: LabState, tmp_path: Path) -> None:
    victim = lab.service(INSTANCES[0])
    user = f"{lab.username}:{lab.password}"
    host = lab.registry_url.removeprefix("https://")
    layout = tmp_path / "series"
    pushed = {}
    for i in range(4):
        tag = f"s{i}"
        source = build_image(layout, tag, [{"f.bin": 256 * 1024 + i}])
        if i == 2:
            os.killpg(victim.pid, signal.SIGKILL)
            wait_for(lambda: not supervisor.pid_alive(victim.pid), 10, "the killed instance exiting", interval=0.5)
        skopeo_copy(source, f"docker://{host}/{lab.namespace}/series:{tag}", lab.cert_dir, user)
        pushed[tag] = layer_digests(layout, tag)
    # The supervisor reports the dead instance, with the tail of its log.
    status = {p["name"]: p for p in Lab.status(Path(lab.state_dir))["processes"]}
    assert status[INSTANCES[0]]["health"] == "dead" and "log_tail" in status[INSTANCES[0]]
    assert status[INSTANCES[1]]["health"] == "healthy"
    for tag, layers in pushed.items():
        back = tmp_path / f"back-{tag}"
        skopeo_copy(f"docker://{host}/{lab.namespace}/series:{tag}", f"oci:{back}:{tag}", lab.cert_dir, user)
        assert layer_digests(back, tag) == layers
    Lab.restart(Path(lab.state_dir), INSTANCES[0])
    restarted = LabState.load(Path(lab.state_dir)).service(INSTANCES[0])
    wait_for(
        lambda: https_get(f"https://127.0.0.1:{restarted.ports['https']}/", lab.ca_file) == 200,
        20,
        "restart",
        interval=0.5,
    )
    lab.services[INSTANCES[0]] = restarted.describe()


# --- htpasswd mode ---------------------------------------------------------------------------------


def test_htpasswd_mode_pushes_and_pulls_with_the_lab_user(tmp_path: Path) -> None:
    """A stack in htpasswd mode: one lab user, no directory, no token service, no realm."""
    directory = tmp_path / "htpasswd"
    state = Lab(htpasswd_settings(), directory).up()
    try:
        assert state.auth_mode == "htpasswd" and state.username == LAB_USER and state.sample_repo == "lab/sample"
        assert set(state.services) == {"s3", "events", "edge", *INSTANCES, "lb", SCANNER_SERVICE}
        assert "location = /auth" not in (directory / "nginx.conf").read_text()
        assert [a["name"] for a in Lab.status(directory)["accounts"]] == [LAB_USER]
        result = push_and_pull(state)  # raises if the pulled digests differ from the pushed ones
        assert result.image.endswith("/lab/sample:1") and result.edge_bytes > 0
        status, headers, _ = call(state, "POST", f"{state.registry_url}/v2/lab/anon/blobs/uploads/")
        assert status == 401 and headers.get("www-authenticate", "").lower().startswith("basic")
        wrong = {"Authorization": "Basic " + base64.b64encode(f"{LAB_USER}:wrong".encode()).decode()}
        assert call(state, "POST", f"{state.registry_url}/v2/lab/x/blobs/uploads/", headers=wrong)[0] == 401
    finally:
        Lab.down(directory)


# --- notifications ------------------------------------------------------------------------------
# The registries notify the scanner's events forwarder (scanner/events.py); tests/test_lab_scanning.py follows
# a push from there to its report. Here: the registry's events arrive with the token, forged ones are refused.


def forwarder_log(state: LabState) -> str:
    return Path(state.service("events").log).read_text()


def test_push_events_reach_the_forwarder_with_the_token(lab: LabState) -> None:
    status, headers, _ = call(
        lab,
        "HEAD",
        f"{lab.registry_url}/v2/{lab.sample_repo}/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json", **pull_auth(lab, lab.sample_repo)},
    )
    assert status == 200
    digest = headers["docker-content-digest"]
    wait_for(lambda: f"queued {lab.sample_repo}@{digest}" in forwarder_log(lab), 15, "the push event queued")


def test_the_forwarder_refuses_events_without_the_token(lab: LabState) -> None:
    url = f"https://127.0.0.1:{lab.service('events').ports['https']}/events"
    digest = "sha256:" + "f0" * 32
    forged = json.dumps(
        {
            "events": [
                {
                    "action": "push",
                    "target": {
                        "repository": "team-a/forged",
                        "digest": digest,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    },
                }
            ]
        }
    ).encode()
    status, _, _ = call(lab, "POST", url, body=forged, headers={"Authorization": "Bearer not-the-token"})
    assert status == 401
    assert call(lab, "POST", url, body=forged)[0] == 401
    log = forwarder_log(lab)
    assert "refused 401" in log and f"team-a/forged@{digest}" not in log
    assert "not-the-token" not in log


# --- health: what the load balancer checks, and what replaces a host --------------------------------
# The ALB health-checks each registry's `/` (and the token service's /healthz); the Auto Scaling group
# replaces a host that fails them. `/` must fail for a dead registry, never for S3: while S3 is unreachable
# it answers 503, which the registry's target group counts as alive (REGISTRY_HEALTH_CODES).


def instance_health(state: LabState, name: str) -> int:
    """What the load balancer's health check of one instance gets: the status of `/` (0: no answer)."""
    return https_get(f"https://127.0.0.1:{state.service(name).ports['https']}/", state.ca_file)


def alive(status: int) -> bool:
    """The registry target group's verdict on a health-check status."""
    return str(status) in REGISTRY_HEALTH_CODES.split(",")


def test_a_killed_registry_fails_its_health_check_and_the_other_serves(lab: LabState) -> None:
    victim = lab.service(INSTANCES[0])
    assert instance_health(lab, INSTANCES[0]) == 200
    os.killpg(victim.pid, signal.SIGKILL)
    wait_for(lambda: not supervisor.pid_alive(victim.pid), 10, "the killed instance exiting")
    assert not alive(instance_health(lab, INSTANCES[0])), "a dead registry must fail the load balancer's check"
    assert instance_health(lab, INSTANCES[1]) == 200
    status, _, _ = call(lab, "GET", f"{lab.registry_url}/v2/", headers=pull_auth(lab, lab.sample_repo))
    assert status == 200
    Lab.restart(Path(lab.state_dir), INSTANCES[0])
    lab.services[INSTANCES[0]] = LabState.load(Path(lab.state_dir)).services[INSTANCES[0]]
    wait_for(lambda: instance_health(lab, INSTANCES[0]) == 200, 20, "the restarted instance healthy")


# Last: it stops S3.
def test_without_s3_hosts_stay_alive_and_clients_get_503_unavailable(lab: LabState) -> None:
    """An S3 outage must not fail the load balancer's check on every host at once (the Auto Scaling group
    would replace the whole fleet), and clients must get a clear, retryable error: the registry's storage
    check turns every path into `503 UNAVAILABLE` within about 15 s, which the target group counts as alive."""
    repo = f"{lab.namespace}/s3-outage"
    uploads = f"{lab.registry_url}/v2/{repo}/blobs/uploads/"  # starting an upload writes to S3
    manifest = f"{lab.registry_url}/v2/{lab.sample_repo}/manifests/1"  # a pull's first request

    def pull_manifest() -> Response:
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}  # 2.8 answers 404 to a client without it
        return call(lab, "GET", manifest, headers=pull_auth(lab, lab.sample_repo) | accept)

    def start_upload() -> Response:
        return call(lab, "POST", uploads, headers=authorization(lab, f"repository:{repo}:pull,push"))

    assert start_upload()[0] == 202
    supervisor.stop(lab.service("s3"))
    try:
        # 3 failed checks 5 s apart.
        wait_for(
            lambda: [instance_health(lab, name) for name in INSTANCES] == [503, 503],
            30,
            "503 on every instance once its storage check trips",
        )
        for status, _, body in (start_upload(), pull_manifest()):
            assert status == 503, (status, body)
            (error,) = json.loads(body)["errors"]
            assert error["code"] == "UNAVAILABLE" and "health check failed" in error["detail"], error
        # What a real client shows its user.
        host = lab.registry_url.removeprefix("https://")
        with pytest.raises(RuntimeError) as failed:
            skopeo_digest(f"docker://{host}/{lab.sample_repo}:1", lab.cert_dir, f"{lab.username}:{lab.password}")
        assert "503" in str(failed.value) and "unavailable" in str(failed.value).lower(), failed.value
        # The load balancer's view: every instance answers, so none is replaced; longer than a further
        # 3 failed checks of the target group (15 s apart).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = [instance_health(lab, name) for name in INSTANCES]
            assert statuses == [503, 503] and all(alive(s) for s in statuses), statuses
            time.sleep(2)
        # Signing in needs no S3: clients still get tokens (and then the 503 above).
        assert pull_auth(lab, repo)["Authorization"].startswith("Bearer ")
    finally:
        Lab.restart(Path(lab.state_dir), "s3")
        lab.services["s3"] = LabState.load(Path(lab.state_dir)).services["s3"]
    wait_for(lambda: start_upload()[0] == 202, 30, "uploads again once S3 is back")
    # The next storage check that succeeds clears it.
    wait_for(lambda: [instance_health(lab, name) for name in INSTANCES] == [200, 200], 15, "200 on every instance")


def test_edge_served_the_blob_bytes(lab: LabState) -> None:
    assert edge_bytes(lab) > 0


def test_free_ports_lie_outside_the_ephemeral_range_and_are_handed_out_once() -> None:
    # Outgoing connections take their local port from the ephemeral range: a port chosen there could
    # be taken before the service binds it (CI once saw "address already in use").
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [supervisor.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports), f"a port was handed out twice: {sorted(ports)}"
    inside = [p for p in ports if low <= p <= high]
    assert not inside, f"ports inside the ephemeral range {low}-{high}: {inside}"
