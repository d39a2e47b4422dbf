"""The registry API as retention uses it: catalog, tags, manifests, DELETE by digest, with tokens it mints.

Retention runs beside one registry instance (on a host, or against a lab instance) and holds what that
instance's token service signs with: the token signing key and its certificate, and the registry's own
`auth.token.service` and `issuer`. So it needs no account and no password: each repository gets a token
for exactly `pull,delete` on it (and the catalog one for `registry:catalog:*`), minted locally, 5 minutes
long, with the subject `registry-fleet-retention` (the registry's access log names it). No account of the
stack gains a right, and nothing new crosses the network.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from auth.scopes import Scope
from auth.tokens import TokenSigner
from signing.cosign import ACCEPT, INDEX_TYPES
from signing.registry import RegistryClient, RegistryError, Transport

SUBJECT = "registry-fleet-retention"
TOKEN_SECONDS = 300
PAGE = 1000
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class MintingClient(RegistryClient):
    """A RegistryClient that answers the registry's Bearer challenge with a token it signs itself."""

    def __init__(self, transport: Transport, signer: TokenSigner, audience: str) -> None:
        super().__init__(transport, user_agent="registry-fleet-retention")
        self.signer = signer
        self.audience = audience

    def _token(self, params: dict[str, str]) -> str:
        access = []
        for scope in params.get("scope", "").split():
            kind, _, rest = scope.partition(":")
            name, _, _ = rest.rpartition(":")
            if kind == "registry" and name == "catalog":
                access.append(Scope("registry", "catalog", ("*",)))
            elif kind == "repository" and name:
                access.append(Scope("repository", name, ("pull", "delete")))
        return self.signer.mint(SUBJECT, self.audience, access, time.time()).token


def registry_settings(config_file: Path) -> dict[str, Any]:
    """service, issuer, bucket, region (and regionendpoint when set) from the registry's config.yml."""
    doc = yaml.safe_load(config_file.read_text())
    token = (doc.get("auth") or {}).get("token")
    if not token:
        raise ValueError(f"{config_file}: no auth.token: retention mints tokens, it needs token mode")
    s3 = (doc.get("storage") or {}).get("s3") or {}
    if not (doc.get("storage") or {}).get("delete", {}).get("enabled"):
        raise ValueError(f"{config_file}: storage.delete.enabled is not true: the registry would refuse deletes")
    return {
        "service": token["service"],
        "issuer": token["issuer"],
        "bucket": s3["bucket"],
        "region": s3["region"],
        "endpoint": s3.get("regionendpoint"),
    }


def minting_client(
    registry_url: str,
    ca_file: str,
    server_name: str | None,
    signing_key: Path,
    signing_cert: Path,
    service: str,
    issuer: str,
) -> MintingClient:
    signer = TokenSigner.load(signing_key, signing_cert, issuer, TOKEN_SECONDS, time.time())
    return MintingClient(Transport(registry_url, ca_file, server_name), signer, service)


def _pages(client: RegistryClient, repository: str, path: str, key: str) -> Iterator[str]:
    while path:
        resp = client.send("GET", repository, path)
        if resp.status != 200:
            raise client._fail(resp, f"GET {path}", repository)
        yield from json.loads(resp.body).get(key) or []
        m = _NEXT.search(resp.headers.get("Link", ""))
        path = urllib.parse.urlsplit(m[1])._replace(scheme="", netloc="").geturl() if m else ""


def catalog(client: RegistryClient) -> list[str]:
    return sorted(_pages(client, "", f"/v2/_catalog?n={PAGE}", "repositories"))


def tags(client: RegistryClient, repository: str) -> list[str]:
    """The repository's tags; [] for a repository with none (2.8 answers `tags: null`, or 404 NAME_UNKNOWN
    once every tag is gone)."""
    try:
        return sorted(_pages(client, repository, f"/v2/{repository}/tags/list?n={PAGE}", "tags"))
    except RegistryError as err:
        if err.status == 404:
            return []
        raise


def references(body: bytes, media_type: str) -> tuple[tuple[str, ...], str | None]:
    """(an index's manifests, the OCI subject) of a manifest's bytes; ((), None) when it has neither."""
    try:
        doc = json.loads(body)
    except ValueError:
        return (), None
    if not isinstance(doc, dict):
        return (), None
    children: tuple[str, ...] = ()
    if media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES:
        children = tuple(str(m["digest"]) for m in doc.get("manifests") or [] if isinstance(m, dict) and "digest" in m)
    subject = doc.get("subject")
    return children, (str(subject["digest"]) if isinstance(subject, dict) and "digest" in subject else None)


def get_manifest(client: RegistryClient, repository: str, reference: str) -> tuple[str, bytes, str] | None:
    """(digest, bytes, media type) of a manifest, or None when it is gone."""
    found = client.find_manifest(repository, reference, ACCEPT)
    return None if found is None else (found.digest, found.body, found.media_type)


def exists(client: RegistryClient, repository: str, digest: str) -> bool:
    resp = client.send("HEAD", repository, f"/v2/{repository}/manifests/{digest}", {"Accept": ACCEPT})
    if resp.status in (200, 404):
        return resp.status == 200
    raise client._fail(resp, f"HEAD {repository}@{digest}", repository)


def delete(client: RegistryClient, repository: str, digest: str) -> bool:
    """DELETE by digest (2.8 answers a DELETE by tag 400); False when it was gone already."""
    resp = client.send("DELETE", repository, f"/v2/{repository}/manifests/{digest}")
    if resp.status == 202:
        return True
    if resp.status == 404:
        return False
    if resp.status == 405:
        raise RegistryError(
            f"DELETE {repository}@{digest}: 405: the registry refuses deletes (read-only, or storage.delete "
            "not enabled); nothing more was deleted",
            405,
        )
    raise client._fail(resp, f"DELETE {repository}@{digest}", repository)
