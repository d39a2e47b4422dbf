"""Directory users get tokens through the service config's `ldap` backend, against a real slapd.

Team roles come from directory groups; removing a user from a group takes effect on the very
next token (no cache), which is what an offboarding needs.
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


def client_for(handle: SlapdHandle, tmp_path: Path) -> Any:
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
    return create_app(config, authenticators(config)).test_client()


def granted(client: Any, scope: str) -> list[str]:
    auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    resp = client.get(f"/auth?service={SERVICE}&scope={scope}", headers={"Authorization": auth})
    assert resp.status_code == 200, resp.data
    claims = jwt.decode(resp.json["token"], options={"verify_signature": False})
    return sorted(a for entry in claims["access"] for a in entry["actions"])


def test_a_directory_user_loses_push_on_the_next_token_after_leaving_the_group(
    slapd: tuple[SlapdHandle, LabPki], tmp_path: Path
) -> None:
    handle, _ = slapd
    client = client_for(handle, tmp_path)
    assert granted(client, "repository:team-a/app:pull,push") == ["pull", "push"]
    assert granted(client, "repository:team-b/app:pull,push") == [], "team-a's developers get nothing of team-b"
    handle.remove_from_group("alice", "team-a-devs")
    assert granted(client, "repository:team-a/app:pull,push") == []
