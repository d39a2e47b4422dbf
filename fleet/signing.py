"""`python -m fleet sign` and `python -m fleet verify`: sign an image's digest with the stack's KMS key in
cosign's format, and check that a valid signature exists, talking to the registry like any client.

The image is `REPO[:TAG|@DIGEST]` in the stack's registry (no tag: latest); a tag is resolved to a digest
once, and that digest is what is signed or verified. A multi-arch index is signed by its own digest;
`recursive` signs each platform manifest it lists too (needed where the gate protects the namespace:
a client pulls the platform manifest by its digest next). The key is `alias/registry-fleet-<stack>-signing`
in the stack's region (credentials from the environment, as for any AWS call), or, with `--lab`, the lab's
key in the lab's moto KMS; `Target` holds all of it, so tests and the lab inject their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from signing.cosign import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    FormatError,
    Signature,
    add_signature,
    child_manifests,
    encode_signature,
    payload,
    signature_tag,
)
from signing.references import ImageRef
from signing.registry import (
    Manifest,
    NotFound,
    Refused,
    RegistryClient,
    RegistryError,
    TooLarge,
    Transport,
    Unauthorized,
)
from signing.verify import MAX_PAYLOAD_BYTES, Result, load_public_keys, verify_signatures

SIG_ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
PASSWORD_ENV = "REGISTRY_PASSWORD"
PUSH_ATTEMPTS = 3


def signing_key_alias(stack: str) -> str:
    """The KMS alias of the stack's signing key (components/signing.py creates it)."""
    return f"alias/registry-fleet-{stack}-signing"


class SignError(Exception):
    """Signing or verifying cannot proceed for a reason the user can fix (exit 2)."""


@dataclass
class Target:
    """Where the registry is and how to reach it and the key."""

    registry_url: str  # https://HOST[:PORT]
    registry_host: str  # the name clients use: what `docker-reference` says
    ca_file: str | None  # None: the system's CAs (a deployed stack's public certificate)
    credentials: tuple[str, str] | None  # None: anonymous
    key_id: str
    kms: Callable[[], Any]  # a boto3 KMS client, made only when needed
    public_keys: list[str] = field(default_factory=list)  # verify: given PEMs instead of KMS GetPublicKey

    def client(self) -> RegistryClient:
        return RegistryClient(Transport(self.registry_url, self.ca_file), credentials=self.credentials)


def deployed_target(
    stack: str, registry_host: str, region: str, username: str | None, env: Mapping[str, str] = os.environ
) -> Target:
    credentials = None
    if username is not None:
        password = env.get(PASSWORD_ENV)
        if not password:
            raise SignError(f"--username {username}: put the password in the environment variable {PASSWORD_ENV}")
        credentials = (username, password)

    def kms() -> Any:
        import boto3

        return boto3.client("kms", region_name=region)

    return Target(f"https://{registry_host}", registry_host, None, credentials, signing_key_alias(stack), kms)


def lab_target(state: Any, username: str | None) -> Target:
    """The running lab (lab/lab.py LabState): its registry, CA and accounts; its moto KMS. The key is
    `state.signing["key_id"]` when the lab records one, else the stack's alias; the KMS endpoint
    `state.signing["kms_endpoint"]`, else the lab's moto (`s3_endpoint`: one moto serves every service)."""
    from lab.overrides import S3_ACCESS_KEY, S3_SECRET_KEY

    if username is None:
        credentials = (state.username, state.password)
    else:
        names = [a["name"] for a in state.accounts]
        if username not in names:
            raise SignError(f"--username {username}: no such lab account (the lab has {', '.join(names)})")
        credentials = (username, str(state.account(username)["password"]))
    signing = dict(getattr(state, "signing", None) or {})
    endpoint = signing.get("kms_endpoint", state.s3_endpoint)
    settings = json.loads((Path(state.state_dir) / "settings.json").read_text())
    region = str(settings.get("region", "us-east-1"))

    def kms() -> Any:
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=endpoint,
            region_name=region,
            verify=state.ca_file,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )

    host = state.registry_url.removeprefix("https://")
    key_id = signing.get("key_id", signing_key_alias(state.stack))
    return Target(state.registry_url, host, state.ca_file, credentials, key_id, kms)


# --- resolving -----------------------------------------------------------------------------------


def resolve(client: RegistryClient, target: Target, image: ImageRef) -> Manifest:
    """The image's manifest. In a protected namespace the gate refuses an unsigned one and names the digest
    it served (the sha256 of the registry's bytes): then the body is empty, and only the digest is known
    until a signature lets the gate serve it."""
    try:
        return client.get_manifest(image.repository, image.reference)
    except Refused as err:
        if image.reference.startswith("sha256:") and err.digest != image.reference:
            raise SignError(f"{image}: the gate refused another digest ({err.digest}) than the one asked for") from None
        return Manifest(b"", "", err.digest)
    except NotFound:
        raise SignError(f"no image {image} in {target.registry_host} (unknown repository, tag or digest)") from None
    except RegistryError as err:
        raise SignError(f"{image}: {err}") from None


def _fetch_payload(client: RegistryClient, repository: str) -> Callable[[dict[str, Any]], bytes]:
    def fetch(layer: dict[str, Any]) -> bytes:
        digest = layer.get("digest")
        if not isinstance(digest, str):
            raise FormatError("a signature layer has no digest")
        try:
            return client.get_blob(repository, digest, MAX_PAYLOAD_BYTES)
        except (NotFound, TooLarge) as err:
            raise FormatError(str(err)) from None

    return fetch


# --- sign ----------------------------------------------------------------------------------------


def sign(
    target: Target, image: ImageRef, recursive: bool, out: TextIO, optional: dict[str, str] | None = None
) -> list[str]:
    """Sign the image's digest (and with `recursive` each manifest of an index); the digests signed."""
    from signing.kms import KmsSigner, SigningError

    client = target.client()
    manifest = resolve(client, target, image)
    signer = KmsSigner(target.kms(), target.key_id)
    reference = f"{target.registry_host}/{image.repository}"
    try:
        public_key = signer.public_key_pem()
    except SigningError:
        public_key = None  # signing may still be allowed; only the "already signed" check is skipped

    def sign_digest(digest: str) -> None:
        if public_key and optional is None and _signed_by(client, target, image.repository, digest, public_key):
            print(f"already signed: {reference}@{digest} (key {target.key_id}); nothing added", file=out)
            return
        body = payload(reference, digest, optional)
        signature = Signature(body, encode_signature(signer.sign(body)))
        added = attach(client, image.repository, digest, signature)
        state = "signed" if added else "already carries this signature"
        print(f"{state}: {reference}@{digest} (key {target.key_id}) -> {signature_tag(digest)}", file=out)

    digests = [manifest.digest]
    todo = [manifest.digest]
    try:
        if not manifest.body:  # refused by the gate: signed first, then served (an index lists its manifests)
            sign_digest(manifest.digest)
            manifest = resolve(client, target, ImageRef(image.repository, None, manifest.digest))
            todo = []
        try:
            children = child_manifests(manifest.body)
        except FormatError as err:
            raise SignError(f"{image}: {err}") from None
        if recursive:
            digests += children
            todo += children
        elif children:
            print(
                f"note: {image} is an index of {len(children)} manifests; only the index is signed "
                "(--recursive signs each platform manifest too, which a protected namespace needs)",
                file=out,
            )
        for digest in todo:
            sign_digest(digest)
    except SigningError as err:
        raise SignError(str(err)) from None
    except Unauthorized as err:
        who = f"account {target.credentials[0]}" if target.credentials else "anonymous access"
        raise SignError(
            f"{who} may not push to {image.repository}: the signature is stored in the image's repository, "
            f"so signing needs push there ({err})"
        ) from None
    except RegistryError as err:
        raise SignError(f"{image}: storing the signature failed: {err}") from None
    return digests


def _signed_by(client: RegistryClient, target: Target, repository: str, digest: str, public_key: str) -> bool:
    """True when the digest already carries a valid signature by this key (re-running CI adds nothing)."""
    existing = client.find_manifest(repository, signature_tag(digest), accept=SIG_ACCEPT)
    if existing is None:
        return False
    result = verify_signatures(
        existing.body,
        _fetch_payload(client, repository),
        digest,
        repository,
        load_public_keys([public_key]),
        registry_host=target.registry_host,
    )
    return result.valid


def attach(client: RegistryClient, repository: str, digest: str, signature: Signature) -> bool:
    """Add `signature` to the `.sig` manifest of `digest`, keeping every signature already there. Another
    signer writing at the same moment could drop ours (the registry has no compare-and-swap): read it
    back and merge again if so. False when the same signature was already there."""
    tag = signature_tag(digest)
    for _ in range(PUSH_ATTEMPTS):
        existing = client.find_manifest(repository, tag, accept=SIG_ACCEPT)
        try:
            merged = add_signature(existing.body if existing else None, signature)
        except FormatError as err:
            raise RegistryError(f"{repository}:{tag} is not a signature manifest ({err}); not overwritten") from None
        if merged is None:
            return False
        client.push_blob(repository, signature.payload)
        client.push_blob(repository, merged.config)
        client.put_manifest(repository, tag, merged.manifest, OCI_MANIFEST)
        stored = client.find_manifest(repository, tag, accept=SIG_ACCEPT)
        if stored is not None and add_signature(stored.body, signature) is None:
            return True
    raise RegistryError(f"{repository}:{tag} kept changing under us ({PUSH_ATTEMPTS} attempts): sign again")


# --- verify --------------------------------------------------------------------------------------


def verify(target: Target, image: ImageRef) -> Result:
    """The verdict on the image's digest: a valid signature by the stack's key, for this repository."""
    from signing.kms import KmsSigner, SigningError

    client = target.client()
    manifest = resolve(client, target, image)
    pems = target.public_keys
    if not pems:
        try:
            pems = [KmsSigner(target.kms(), target.key_id).public_key_pem()]
        except SigningError as err:
            raise SignError(f"{err} (or give the stack's public key: --public-key FILE)") from None
    keys = load_public_keys(pems)
    try:
        signatures = client.find_manifest(image.repository, signature_tag(manifest.digest), accept=SIG_ACCEPT)
        return verify_signatures(
            signatures.body if signatures else None,
            _fetch_payload(client, image.repository),
            manifest.digest,
            image.repository,
            keys,
            registry_host=target.registry_host,
        )
    except RegistryError as err:
        raise SignError(f"{image}: reading its signatures failed: {err}") from None


def report(result: Result, out: TextIO) -> None:
    print(("valid: " if result.valid else "NOT signed: ") + result.message, file=out)
    for i, finding in enumerate(result.findings, 1):
        print(f"  signature {i}: {finding.reason or 'valid'}: {finding.message}", file=out)
