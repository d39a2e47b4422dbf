"""Directory users get tokens through the service config's `ldap` backend, against a real slapd.

Team roles come from directory groups; removing a user from a group takes effect within the stated
bound (credential_cache.directory_ttl_seconds, 60 s by default: docs/token-service.md), which is what
an offboarding needs. The service's clock is a fake one here, so the bound is checked to the second.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from auth.config import parse_config
from auth.serve import authenticators
from auth.server import create_app
from auth.tokens import create_signing_pair
from lab.pki import LabPki, create_pki
from lab.slapd import Directory, DirectoryUser, SlapdHandle, start_slapd
from tests.helpers.token_service import Clock

pytestmark = pytest.mark.lab

SERVICE = "registry.lab"
PASSWORD = "alice-Correct-Horse-1"


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SlapdHandle, LabPki]]:
    pki = create_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "localhost"])
    seed = Directory(users=(DirectoryUser("alice", "Alice Archer", PASSWORD, ("team-a-devs",)),))
    handle = start_slapd(tmp_path_factory.mktemp("slapd"), pki, seed)
    try:
        yield handle, pki
    finally:
        handle.stop()


def client_for(handle: SlapdHandle, tmp_path: Path, clock: Clock | None = None) -> Any:
    key, cert = create_signing_pair(tmp_path / "signing")
    # The service account's password is hidden in a dump of the settings: put the real one back.
    ldap = {**handle.settings().model_dump(mode="json"), "bind_password": handle.bind_password}
    config = parse_config(
        {
            "issuer": "registry-fleet-lab",
            "service": SERVICE,
            "signing_key": str(key),
            "signing_cert": str(cert),
            "ldap": ldap,
            "policy": {
                "teams": {
                    "team-a": {
                        "namespaces": ["team-a"],
                        "groups": {"team-a-devs": "developer", "team-a-readers": "reader"},
                    }
                }
            },
        },
        tmp_path,
    )
    assert config.credential_cache.directory_ttl_seconds == DIRECTORY_BOUND, "the documented default"
    return create_app(config, authenticators(config), now=clock or Clock()).test_client()


DIRECTORY_BOUND = 60  # seconds: docs/token-service.md states it


def get(client: Any, scope: str, password: str = PASSWORD) -> Any:
    auth = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    return client.get(f"/auth?service={SERVICE}&scope={scope}", headers={"Authorization": auth})


def granted(client: Any, scope: str, password: str = PASSWORD) -> list[str]:
    resp = get(client, scope, password)
    assert resp.status_code == 200, resp.data
    claims = jwt.decode(resp.json["token"], options={"verify_signature": False})
    return sorted(a for entry in claims["access"] for a in entry["actions"])


def test_a_directory_user_loses_push_within_the_bound_after_leaving_the_group(
    slapd: tuple[SlapdHandle, LabPki], tmp_path: Path
) -> None:
    handle, _ = slapd
    clock = Clock()
    client = client_for(handle, tmp_path, clock)
    assert granted(client, "repository:team-a/app:pull,push") == ["pull", "push"]
    assert granted(client, "repository:team-b/app:pull,push") == [], "team-a's developers get nothing of team-b"
    handle.remove_from_group("alice", "team-a-devs")
    try:
        clock.advance(DIRECTORY_BOUND - 1)
        # Within the bound the verified login (and the groups read with it) may still be served.
        assert granted(client, "repository:team-a/app:pull,push") == ["pull", "push"]
        clock.advance(1)
        assert granted(client, "repository:team-a/app:pull,push") == [], f"push lost {DIRECTORY_BOUND} s after"
    finally:
        handle.add_to_group("alice", "team-a-devs")


def test_a_wrong_or_changed_directory_password_is_never_served_from_the_cache(
    slapd: tuple[SlapdHandle, LabPki], tmp_path: Path
) -> None:
    handle, _ = slapd
    client = client_for(handle, tmp_path)
    scope = "repository:team-a/app:pull"
    assert granted(client, scope) == ["pull"]  # verified by the directory, now remembered
    new = "alice-Changed-Horse-2"
    handle.set_password("alice", new)
    try:
        assert granted(client, scope, new) == ["pull"], "the new password works at once"
        # Its success forgot the account's other entries: the old password goes to the directory again.
        assert get(client, scope).status_code == 401
        assert granted(client, scope, new) == ["pull"]
        for wrong in (new + "x", new[:-1], new.upper()):
            assert get(client, scope, wrong).status_code == 401, "a wrong one always goes to the directory"
        assert granted(client, scope, new) == ["pull"]
    finally:
        handle.set_password("alice", PASSWORD)
