"""Role-based access in the lab, for real: the dev stack's access settings, enforced end to end.

One lab serves the module: Debian's docker-registry behind nginx, the token service at `/auth`
(through nginx, as the ALB routes it), a real slapd seeded from the stack (lab/accounts.py), skopeo
as the client, trusting only the lab CA. What matters is that the REGISTRY refuses: a push the
policy denies fails at the registry ("insufficient scope" in its own log), not only at the token
service. Accounts and their lab-only passwords come from `lab status --json`.

Tests run in file order: the directory test takes a user out of a group and puts them back, the
robot test expires a robot and restores it, and the last test stops the lab with `lab down`.
"""

from __future__ import annotations

import datetime
import http.client
import io
import json
import re
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from auth.config import CredentialCacheSettings
from fleet import cli
from lab import supervisor
from lab.accounts import registry_token
from lab.image import build_image, layer_digests
from lab.lab import DIRECTORY_SERVICE, INSTANCES, STATE_FILE, TOKEN_CONFIG_FILE, TOKEN_SERVICE, Lab, LabState
from tests.helpers import settings_with
from tests.helpers.lab import host, password, push, skopeo
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab

Response = tuple[int, dict[str, str], bytes]
INSUFFICIENT = "error authorizing context: insufficient scope"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab-access")
    state = Lab(settings_with("dev", {}), directory).up()
    try:
        yield state
    finally:
        if (directory / STATE_FILE).exists():  # the last test stops it itself
            Lab.down(directory)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A small two-layer image (oci:<layout>:1) and its layout."""
    layout = tmp_path_factory.mktemp("image") / "layout"
    return build_image(layout, "1", [{"a.bin": 48 * 1024}, {"b.bin": 16 * 1024}]), layout


@pytest.fixture(scope="module")
def accounts(lab: LabState) -> dict[str, dict[str, Any]]:
    """The accounts as `python -m fleet lab status --json` lists them."""
    out = io.StringIO()
    assert cli.main(["lab", "status", lab.stack, "--json", "--state-dir", lab.state_dir], out=out) == 0
    return {a["name"]: a for a in json.loads(out.getvalue())["accounts"]}


# --- helpers --------------------------------------------------------------------------------------


def pull(state: LabState, account: str | None, repo: str, layout: Path) -> subprocess.CompletedProcess[str]:
    creds = ["--src-no-creds"] if account is None else ["--src-creds", f"{account}:{password(state, account)}"]
    src = f"docker://{host(state)}/{repo}"
    return skopeo(state, "copy", "--quiet", "--src-cert-dir", state.cert_dir, *creds, src, f"oci:{layout}:1")


def assert_denied(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, "expected a refusal"
    assert any(w in proc.stderr.lower() for w in ("unauthorized", "denied", "authentication required")), proc.stderr


def refusals(state: LabState, repo: str) -> int:
    """How often the registries logged "insufficient scope" for `repo` (their own decision)."""
    count = 0
    for name in INSTANCES:
        for line in Path(state.service(name).log).read_text().splitlines():
            if INSUFFICIENT in line and f'"vars.name":"{repo}"' in line:
                count += 1
    return count


def assert_refused_by_the_registry(
    state: LabState, repo: str, action: Callable[[], subprocess.CompletedProcess[str]]
) -> None:
    """The client held a valid token, and the registry itself refused it for lack of scope."""
    before = refusals(state, repo)
    assert_denied(action())
    assert refusals(state, repo) > before, f"no 'insufficient scope' for {repo} in the registries' logs"


def token(state: LabState, account: str | None, *scopes: str, secret: str | None = None) -> tuple[int, dict[str, Any]]:
    creds = None if account is None else (account, secret if secret is not None else password(state, account))
    return registry_token(state.token["realm"], state.token["service"], state.ca_file, creds, scopes)


def bearer(state: LabState, account: str, *scopes: str) -> str:
    status, body = token(state, account, *scopes)
    assert status == 200, body
    return str(body["token"])


DIRECTORY_BOUND = CredentialCacheSettings().directory_ttl_seconds  # 60 s


def granted(state: LabState, account: str, scope: str) -> list[str]:
    """The actions the token service grants `account` for one scope (the token's `access`)."""
    claims = jwt.decode(bearer(state, account, scope), options={"verify_signature": False})
    return sorted(a for entry in claims["access"] for a in entry["actions"])


def call(state: LabState, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
    """One HTTPS request to the registry through nginx, trusting only the lab CA."""
    parts = urllib.parse.urlsplit(state.registry_url)
    context = ssl.create_default_context(cafile=state.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def manifest_digest(state: LabState, repo: str, tag: str, bearer_token: str) -> str:
    status, headers, body = call(
        state,
        "HEAD",
        f"/v2/{repo}/manifests/{tag}",
        {"Accept": MANIFEST, "Authorization": f"Bearer {bearer_token}"},
    )
    assert status == 200, body
    return headers["docker-content-digest"]


# --- the wiring ---------------------------------------------------------------------------------------


def test_registries_trust_the_lab_token_service_as_the_fleet_renders_it(lab: LabState) -> None:
    settings = settings_with("dev", {})
    for name in INSTANCES:
        config = yaml.safe_load((Path(lab.state_dir) / f"{name}.yml").read_text())
        assert config["auth"] == {
            "token": {
                "realm": f"{lab.registry_url}/auth",
                "service": settings.registry_host,
                "issuer": settings.token_issuer,
                "rootcertbundle": lab.token["signing_cert"],
            }
        }, name
    service_config = Path(lab.state_dir) / TOKEN_CONFIG_FILE
    assert service_config.stat().st_mode & 0o077 == 0, "holds bcrypt hashes and the directory's password"
    rendered = json.loads(service_config.read_text())
    assert rendered["trusted_proxies"] == ["127.0.0.2/32"], "only the lab LB forwards"
    assert rendered["ldap"]["url"] == lab.directory["url_ldaps"], "the stack's ldaps:// scheme, the lab's slapd"
    assert all(h.startswith("$2b$10$") for h in [u["password_hash"] for u in rendered["users"].values()])
    nginx = (Path(lab.state_dir) / "nginx.conf").read_text()
    token_port = lab.service(TOKEN_SERVICE).ports["https"]
    assert re.search(r"location = /auth \{\s+proxy_pass https://token;", nginx)
    assert f"server 127.0.0.1:{token_port};" in nginx and "X-Forwarded-For $proxy_add_x_forwarded_for" in nginx


def test_the_signing_certificate_has_the_fleets_shape(lab: LabState) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert = x509.load_pem_x509_certificate(Path(lab.token["signing_cert"]).read_bytes())
    key = cert.public_key()
    assert cert.issuer == cert.subject, "self-signed, as pulumi-tls SelfSignedCert makes it"
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_plain_status_prints_a_short_accounts_table(lab: LabState, accounts: dict[str, dict[str, Any]]) -> None:
    out = io.StringIO()
    assert cli.main(["lab", "status", lab.stack, "--state-dir", lab.state_dir], out=out) == 0
    text = out.getvalue()
    assert f"token service at {lab.token['realm']}" in text
    for name, entry in accounts.items():
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert entry["kind"] in line and entry["password"] in line and entry["summary"] in line


# --- roles, enforced by the registry ----------------------------------------------------------------


def test_developer_pushes_to_team_a_and_not_to_team_b(lab: LabState, image: tuple[str, Path]) -> None:
    source, _ = image
    done = push(lab, source, "team-a-developer", "team-a/app:1")
    assert done.returncode == 0, done.stderr
    assert_refused_by_the_registry(lab, "team-b/app", lambda: push(lab, source, "team-a-developer", "team-b/app:1"))


def test_reader_pulls_team_a_and_the_registry_refuses_its_push(
    lab: LabState, image: tuple[str, Path], tmp_path: Path
) -> None:
    source, layout = image
    back = tmp_path / "pulled"
    done = pull(lab, "team-a-reader", "team-a/app:1", back)
    assert done.returncode == 0, done.stderr
    assert layer_digests(back, "1") == layer_digests(layout, "1")
    assert_refused_by_the_registry(lab, "team-a/app", lambda: push(lab, source, "team-a-reader", "team-a/app:2"))
    # The same, by hand: the reader's token (pull only) opens no upload at the registry.
    reader = bearer(lab, "team-a-reader", "repository:team-a/app:pull,push")
    status, headers, _ = call(lab, "POST", "/v2/team-a/app/blobs/uploads/", {"Authorization": f"Bearer {reader}"})
    assert status == 401 and 'error="insufficient_scope"' in headers["www-authenticate"]


def test_maintainer_deletes_a_manifest_and_a_developer_cannot(lab: LabState, image: tuple[str, Path]) -> None:
    source, _ = image
    assert push(lab, source, "team-a-developer", "team-a/app:doomed").returncode == 0
    scope = "repository:team-a/app:pull,delete"
    digest = manifest_digest(lab, "team-a/app", "doomed", bearer(lab, "team-a-maintainer", scope))
    path = f"/v2/team-a/app/manifests/{digest}"
    developer = bearer(lab, "team-a-developer", scope)
    status, headers, _ = call(lab, "DELETE", path, {"Authorization": f"Bearer {developer}"})
    assert status == 401 and 'error="insufficient_scope"' in headers["www-authenticate"]
    maintainer = bearer(lab, "team-a-maintainer", scope)
    status, _, body = call(lab, "DELETE", path, {"Authorization": f"Bearer {maintainer}"})
    assert status == 202, body
    assert call(lab, "HEAD", path, {"Accept": MANIFEST, "Authorization": f"Bearer {maintainer}"})[0] == 404
    # skopeo delete, as a maintainer would run it (it deletes the tag's manifest, by digest).
    assert push(lab, source, "team-a-developer", "team-a/app:doomed-too").returncode == 0
    creds = f"team-a-maintainer:{password(lab, 'team-a-maintainer')}"
    ref = f"docker://{host(lab)}/team-a/app:doomed-too"
    done = skopeo(lab, "delete", "--cert-dir", lab.cert_dir, "--creds", creds, ref)
    assert done.returncode == 0, done.stderr
    gone = skopeo(lab, "inspect", "--raw", "--cert-dir", lab.cert_dir, "--creds", creds, ref)
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr.lower(), gone.stderr


def test_robot_pushes_only_under_its_namespace(lab: LabState, image: tuple[str, Path]) -> None:
    source, _ = image
    done = push(lab, source, "ci-team-a", "team-a/ci/app:1")
    assert done.returncode == 0, done.stderr
    assert_refused_by_the_registry(lab, "team-a/app", lambda: push(lab, source, "ci-team-a", "team-a/app:robot"))


def test_the_local_admin_lists_the_catalog_and_a_developer_cannot(lab: LabState) -> None:
    admin = bearer(lab, "registry-admin", "registry:catalog:*")
    status, _, body = call(lab, "GET", "/v2/_catalog", {"Authorization": f"Bearer {admin}"})
    assert status == 200, body
    assert {"team-a/app", "team-a/ci/app"} <= set(json.loads(body)["repositories"])
    developer = bearer(lab, "team-a-developer", "registry:catalog:*")
    assert call(lab, "GET", "/v2/_catalog", {"Authorization": f"Bearer {developer}"})[0] == 401


def test_anonymous_and_wrong_password_requests_are_denied(
    lab: LabState, image: tuple[str, Path], tmp_path: Path
) -> None:
    source, _ = image
    status, headers, _ = call(lab, "GET", "/v2/")
    assert status == 401
    assert headers["www-authenticate"] == f'Bearer realm="{lab.token["realm"]}",service="{lab.token["service"]}"'
    status, body = token(lab, None, "repository:team-a/app:pull,push")
    assert status == 200 and jwt.decode(body["token"], options={"verify_signature": False})["access"] == []
    assert_denied(pull(lab, None, "team-a/app:1", tmp_path / "anonymous"))
    assert_refused_by_the_registry(lab, "team-a/anon", lambda: push(lab, source, None, "team-a/anon:1"))
    for account in ("team-a-developer", "registry-admin", "ci-team-a"):  # directory, local, robot
        status, body = token(lab, account, "repository:team-a/app:pull", secret="wrong")
        assert status == 401 and "token" not in body, account
    assert_denied(push(lab, source, "team-a-developer", "team-a/app:wrong", secret="wrong"))


def test_every_listed_account_gets_a_token_for_what_its_entry_says(
    lab: LabState, accounts: dict[str, dict[str, Any]]
) -> None:
    assert {a["kind"] for a in accounts.values()} == {"directory", "local", "robot"}
    for name, entry in accounts.items():
        assert entry["password"] and entry["summary"], name
        expected: list[tuple[str, list[str]]] = []
        for grant in entry["teams"]:
            expected += [(f"{ns}/lab-probe", grant["actions"]) for ns in grant["namespaces"]]
        if entry["robot"]:
            expected.append((f"{entry['robot']['namespace']}/lab-probe", entry["robot"]["actions"]))
        for rule in entry["rules"]:
            for glob in rule["repositories"]:
                repo = glob.replace("${account}", name).replace("**", "lab-probe").replace("*", "lab-probe")
                expected.append((repo, rule["actions"]))
        assert expected or entry["admin"], f"{name}: an account that may do nothing"
        for repo, actions in expected:
            asked = ",".join(a for a in actions if a != "*") or "pull"
            got = granted(lab, name, f"repository:{repo}:{asked}")
            assert got == sorted(asked.split(",")), (name, repo, got)
        catalog = granted(lab, name, "registry:catalog:*")
        assert catalog == (["*"] if entry["admin"] else []), (name, catalog)
        # Nothing outside what the entry lists (no team owns `elsewhere/`), unless it says admin or a rule of it
        # covers every repository (the lab's scanner account: pull on `**`).
        elsewhere = granted(lab, name, "repository:elsewhere/lab-probe:pull,push,delete")
        everywhere = sorted(
            {a for rule in entry["rules"] if "**" in rule["repositories"] for a in rule["actions"] if a != "*"}
        )
        assert elsewhere == (["delete", "pull", "push"] if entry["admin"] else everywhere), (name, elsewhere)


def test_a_directory_user_removed_from_their_group_loses_push_within_the_directory_bound(
    lab: LabState, image: tuple[str, Path]
) -> None:
    """The token service serves a verified directory login from its cache for at most
    `credential_cache.directory_ttl_seconds` (60 s, docs/token-service.md): a user removed from a group loses
    push within that bound, against the lab's real slapd. (tests/test_auth_directory_tokens.py shows the bound
    to the second with a moved clock.)"""
    source, _ = image
    slapd = lab.slapd()
    scope = "repository:team-b/app:pull,push"
    assert granted(lab, "team-b-developer", scope) == ["pull", "push"]
    assert push(lab, source, "team-b-developer", "team-b/app:1").returncode == 0
    slapd.remove_from_group("team-b-developer", "team-b-devs")
    try:
        wait_for(
            lambda: granted(lab, "team-b-developer", scope) == [],
            DIRECTORY_BOUND + 5,
            "push lost within 60 s",
            interval=2,
        )
        assert_refused_by_the_registry(lab, "team-b/app", lambda: push(lab, source, "team-b-developer", "team-b/app:2"))
    finally:
        slapd.add_to_group("team-b-developer", "team-b-devs")
    wait_for(lambda: granted(lab, "team-b-developer", scope) == ["pull", "push"], DIRECTORY_BOUND + 5, "push back")


def test_an_expired_robot_is_refused(lab: LabState, image: tuple[str, Path]) -> None:
    """The stack's robot with `expires` yesterday, rendered by the same renderer, the token service
    restarted with it (what a stack update does on the hosts)."""
    source, _ = image
    yesterday = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)).date().isoformat()
    current = settings_with("dev", {}).access
    expired = settings_with("dev", {"access": {"robots": {"ci-team-a": {"expires": yesterday}}}}).access
    Lab.apply_access(Path(lab.state_dir), expired)
    try:
        # It works through its expiry day: it stopped at today's midnight UTC.
        stops = (datetime.date.fromisoformat(yesterday) + datetime.timedelta(days=1)).isoformat() + "T00:00:00Z"
        config = json.loads((Path(lab.state_dir) / TOKEN_CONFIG_FILE).read_text())
        assert config["policy"]["robots"]["ci-team-a"]["expires"] == stops
        status, _ = token(lab, "ci-team-a", "repository:team-a/ci/app:pull,push")
        assert status == 401
        assert_denied(push(lab, source, "ci-team-a", "team-a/ci/app:2"))
        log = Path(LabState.load(Path(lab.state_dir)).service(TOKEN_SERVICE).log).read_text()
        assert "robot 'ci-team-a' refused: expired" in log
        assert granted(lab, "ci-team-b", "repository:team-b/ci/app:push") == ["push"], "the other robot still works"
        assert LabState.load(Path(lab.state_dir)).account("ci-team-a")["robot"]["expires"] == stops, "lab status"
    finally:
        Lab.apply_access(Path(lab.state_dir), current)
    assert granted(lab, "ci-team-a", "repository:team-a/ci/app:push") == ["push"]


# --- down (last) --------------------------------------------------------------------------------------


def test_lab_down_leaves_no_process_and_no_port(lab: LabState) -> None:
    state = LabState.load(Path(lab.state_dir))
    services = [state.service(name) for name in state.services]
    assert {DIRECTORY_SERVICE, TOKEN_SERVICE} <= {s.name for s in services}
    out = io.StringIO()
    assert cli.main(["lab", "down", lab.stack, "--state-dir", lab.state_dir], out=out) == 0
    assert [s.name for s in services if supervisor.pid_alive(s.pid)] == []
    assert process_groups_alive({s.pid for s in services}) == [], "children too (nginx and gunicorn workers)"
    assert [(s.name, p) for s in services for p in s.ports.values() if supervisor.port_open(p)] == []
    assert not (Path(lab.state_dir) / STATE_FILE).exists()


def process_groups_alive(groups: set[int]) -> list[int]:
    """Live (non-zombie) processes in any of these process groups (each lab process leads its own)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive
