"""Mirror Trivy's vulnerability database (an OCI artifact) into the fleet's own registry.

`copy_artifact(source, target)` copies one image manifest and the blobs it names (its config and layers),
media types and bytes unchanged, so the manifest keeps its digest: `ghcr.io/aquasecurity/trivy-db:2` ->
`<registry>/mirror/trivy-db:2`, where the scanner workers pull it with Trivy's `--db-repository` and need no
internet. Nothing is pushed when the target already holds the same manifest (a daily run is cheap). Blobs
are checked against their digests on the way; each is held in memory (at most MAX_BLOB_BYTES: give the
function 1 GiB of memory; today's database layer is under 100 MB).

The source is a registry reference (anonymous pull, as ghcr.io allows) or `oci:DIR:TAG`, an OCI layout
(the lab's fixture database, lab/trivy_db.py, goes into the lab registry through this same code). The target
is pushed with an account that may push `mirror/trivy-db` only.

It depends on the standard library, urllib3 and boto3 (and signing/registry.py, which needs only those), so
it runs as a Lambda function: `handler(event, context)` reads
    MIRROR_SOURCE                   e.g. ghcr.io/aquasecurity/trivy-db:2
    MIRROR_TARGET                   e.g. registry.example.com/mirror/trivy-db:2
    MIRROR_CREDENTIALS_SECRET_ARN   a Secrets Manager secret {"username": ..., "password": ...}
    MIRROR_CA_PEM                   optional: the CA of the target's certificate (PEM text)
and returns {"digest": ..., "copied": true|false}. `python -m scanner mirror` runs the same from a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signing.registry import NotFound, RegistryClient, RegistryError, Transport

MAX_BLOB_BYTES = 512 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
_REFERENCE = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+(:\d{1,5})?)/(?P<repo>[a-z0-9]+([._/-][a-z0-9]+)*):(?P<tag>[\w][\w.-]{0,127})$"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
USER_AGENT = "registry-fleet-mirror"


class MirrorError(Exception):
    """The copy cannot be made; the message says what and where."""


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def parse_reference(value: str, what: str) -> Reference:
    match = _REFERENCE.match(value)
    if not match:
        raise MirrorError(
            f"{what} {value!r}: must be HOST[:PORT]/REPOSITORY:TAG (e.g. ghcr.io/aquasecurity/trivy-db:2)"
        )
    return Reference(match.group("host"), match.group("repo"), match.group("tag"))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Source:
    """Where the artifact comes from: its manifest (bytes, media type) and its blobs by digest."""

    name: str

    def manifest(self) -> tuple[bytes, str]:
        raise NotImplementedError

    def blob(self, digest: str) -> bytes:
        raise NotImplementedError


class RegistrySource(Source):
    def __init__(self, reference: Reference, ca_file: str | None = None) -> None:
        self.name = str(reference)
        self.reference = reference
        self.client = RegistryClient(Transport(f"https://{reference.host}", ca_file=ca_file), user_agent=USER_AGENT)

    def manifest(self) -> tuple[bytes, str]:
        m = self.client.get_manifest(self.reference.repository, self.reference.tag, accept=", ".join(MANIFEST_TYPES))
        return m.body, m.media_type

    def blob(self, digest: str) -> bytes:
        return self.client.get_blob(self.reference.repository, digest, MAX_BLOB_BYTES)


class LayoutSource(Source):
    """`oci:DIR:TAG`: an OCI image layout on disk."""

    def __init__(self, spec: str) -> None:
        directory, _, tag = spec.removeprefix("oci:").rpartition(":")
        if not directory or not tag:
            raise MirrorError(f"source {spec!r}: must be oci:DIR:TAG")
        self.name = spec
        self.directory = Path(directory)
        self.tag = tag

    def manifest(self) -> tuple[bytes, str]:
        try:
            index = json.loads((self.directory / "index.json").read_text())
        except (OSError, ValueError) as err:
            raise MirrorError(f"source {self.name}: no readable index.json ({err})") from None
        for entry in index.get("manifests", []):
            if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag:
                return self.blob(entry["digest"]), str(entry.get("mediaType", OCI_MANIFEST))
        raise MirrorError(f"source {self.name}: no image tagged {self.tag!r}")

    def blob(self, digest: str) -> bytes:
        if not _DIGEST.match(digest):
            raise MirrorError(f"source {self.name}: {digest!r} is not a sha256 digest")
        try:
            data = (self.directory / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        except OSError as err:
            raise MirrorError(f"source {self.name}: blob {digest}: {err.strerror}") from None
        if _sha256(data) != digest:
            raise MirrorError(f"source {self.name}: blob {digest} does not match its digest")
        return data


def open_source(spec: str, ca_file: str | None = None) -> Source:
    if spec.startswith("oci:"):
        return LayoutSource(spec)
    return RegistrySource(parse_reference(spec, "source"), ca_file)


def _descriptors(manifest: bytes, media_type: str, source: str) -> list[dict[str, Any]]:
    if media_type not in MANIFEST_TYPES:
        raise MirrorError(f"source {source}: media type {media_type!r} is not a single image manifest")
    try:
        doc = json.loads(manifest)
        blobs = [doc["config"], *doc["layers"]]
        for d in blobs:
            if not _DIGEST.match(d["digest"]) or not isinstance(d["size"], int):
                raise ValueError(f"descriptor {d['digest']!r}")
    except (ValueError, KeyError, TypeError) as err:
        raise MirrorError(f"source {source}: not a valid image manifest ({err})") from None
    return [dict(d) for d in blobs]


def copy_artifact(
    source: Source,
    target: Reference,
    credentials: tuple[str, str],
    ca_file: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, bool]:
    """Copy `source` to `target`; (manifest digest, whether anything was pushed)."""
    manifest, media_type = source.manifest()
    digest = _sha256(manifest)
    descriptors = _descriptors(manifest, media_type, source.name)
    client = RegistryClient(
        Transport(f"https://{target.host}", ca_file=ca_file, timeout=300.0), credentials, user_agent=USER_AGENT
    )
    try:
        try:
            present = client.get_manifest(target.repository, target.tag, accept=media_type)
        except NotFound:
            present = None
        if present is not None and present.digest == digest:
            log(f"mirror: {target} already holds {digest}; nothing to copy")
            return digest, False
        for d in descriptors:
            data = source.blob(d["digest"])
            if len(data) != d["size"] or _sha256(data) != d["digest"]:
                raise MirrorError(f"source {source.name}: blob {d['digest']} does not match its descriptor")
            client.push_blob(target.repository, data)
            log(
                f"mirror: blob {d['digest']} ({len(data)} bytes, {d['mediaType']}) in {target.host}/{target.repository}"
            )
        pushed = client.put_manifest(target.repository, target.tag, manifest, media_type)
        if pushed != digest:
            raise MirrorError(f"target {target}: pushed manifest digest {pushed}, expected {digest}")
        log(f"mirror: {source.name} -> {target} ({digest})")
        return digest, True
    except RegistryError as err:
        raise MirrorError(f"target {target}: {err}") from None
    finally:
        client.transport.close()


def _credentials_from_secret(arn: str) -> tuple[str, str]:
    import boto3

    value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    try:
        doc = json.loads(value)
        return str(doc["username"]), str(doc["password"])
    except (ValueError, KeyError, TypeError):
        raise MirrorError(f'secret {arn}: must be JSON {{"username": ..., "password": ...}}') from None


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point (the daily schedule's event is ignored): see the module docstring."""
    missing = [k for k in ("MIRROR_SOURCE", "MIRROR_TARGET", "MIRROR_CREDENTIALS_SECRET_ARN") if not os.environ.get(k)]
    if missing:
        raise MirrorError(f"environment: {', '.join(missing)} not set")
    target = parse_reference(os.environ["MIRROR_TARGET"], "MIRROR_TARGET")
    credentials = _credentials_from_secret(os.environ["MIRROR_CREDENTIALS_SECRET_ARN"])
    ca_pem = os.environ.get("MIRROR_CA_PEM")
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = None
        if ca_pem:
            ca_file = str(Path(tmp) / "ca.pem")
            Path(ca_file).write_text(ca_pem)
        source = open_source(os.environ["MIRROR_SOURCE"])
        digest, copied = copy_artifact(source, target, credentials, ca_file)
    return {"digest": digest, "copied": copied}
