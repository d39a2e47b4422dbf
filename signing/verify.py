"""The strict verifier: is there a valid cosign signature of this digest, for this repository, by one of
these keys? `cryptography` only (no AWS SDK): the pull-time gate runs it on the registry hosts.

A signature layer is valid when, in this order:
  1. its annotation `dev.cosignproject.cosign/signature` is base64 and the ECDSA P-256 / SHA-256
     signature it holds verifies over the exact payload bytes with one of the given public keys
     (`bad-signature` otherwise: a claim nobody signed says nothing, so nothing after this is read
     from an unsigned payload);
  2. the payload is the simple-signing JSON object: `critical` holds exactly `identity`
     (`docker-reference`), `image` (`docker-manifest-digest`) and `type`; no key twice anywhere
     (two parsers must not read two different digests out of one payload); `optional` null or an
     object (`malformed` otherwise);
  3. `type` is "cosign container image signature" (`malformed`);
  4. `docker-manifest-digest` equals the digest asked about (`other-digest`);
  5. `docker-reference` names the repository (`other-repository`). cosign writes the full name,
     `HOST/PATH` (docker's rule: the first component is a host when it holds a `.` or a `:` or is
     `localhost`). PATH must equal the repository exactly. The host is compared (case-insensitively)
     when the caller knows under which name clients reach the registry (`fleet verify` does); the
     gate does not know it (clients use the load balancer's name) and compares PATH only: the keys
     are the stack's own and sign for this registry alone. A reference without a host means Docker
     Hub to every client, so it never names our repository (`other-repository`).
Whole result: valid when any layer is; otherwise the reason of the layer that got furthest
(other-repository / other-digest, then bad-signature, then malformed), or `no-signature` when there
is no `.sig` manifest or no simple-signing layer in it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signing.cosign import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SIGNATURE_TYPE,
    FormatError,
    check_digest,
    parse_manifest,
)

NO_SIGNATURE = "no-signature"
OTHER_REPOSITORY = "other-repository"
OTHER_DIGEST = "other-digest"
BAD_SIGNATURE = "bad-signature"
MALFORMED = "malformed"
# Which failure says the most when no layer is valid: one that got past the signature check first.
_RANK = {OTHER_REPOSITORY: 4, OTHER_DIGEST: 3, BAD_SIGNATURE: 2, MALFORMED: 1, NO_SIGNATURE: 0}
MAX_PAYLOAD_BYTES = 64 * 1024  # cosign's payloads are a few hundred bytes
MAX_SIGNATURE_LAYERS = 64  # a `.sig` manifest with more is refused whole (each layer costs a blob fetch)

PublicKey = ec.EllipticCurvePublicKey


class PublicKeyError(ValueError):
    """A public key that cannot serve: the message says which and why."""


def load_public_keys(pems: Sequence[str]) -> list[PublicKey]:
    """ECDSA P-256 public keys from PEM (SubjectPublicKeyInfo), as KMS GetPublicKey and cosign give them."""
    keys: list[PublicKey] = []
    for i, pem in enumerate(pems):
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            raise PublicKeyError(f"public key {i + 1}: not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise PublicKeyError(f"public key {i + 1}: not an ECDSA P-256 key (the signing key is ECC_NIST_P256)")
        keys.append(key)
    if not keys:
        raise PublicKeyError("no public key to verify with")
    return keys


@dataclass(frozen=True)
class Finding:
    """The verdict on one signature layer (or on the whole `.sig` manifest when it is unusable)."""

    reason: str | None  # None: valid
    message: str
    key_index: int | None = None  # which public key verified it


@dataclass(frozen=True)
class Result:
    digest: str
    repository: str
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def valid(self) -> bool:
        return any(f.reason is None for f in self.findings)

    @property
    def reason(self) -> str | None:
        """None when valid; else the most telling reason (see the module doc)."""
        if self.valid:
            return None
        if not self.findings:
            return NO_SIGNATURE
        return max((f.reason for f in self.findings if f.reason), key=lambda r: _RANK[r])

    @property
    def explanation(self) -> str:
        """What the most telling finding says (without the image's name)."""
        if self.valid:
            return next(f.message for f in self.findings if f.reason is None)
        if not self.findings:
            return "no signature manifest (sha256-<hex>.sig) for this digest"
        return next(f.message for f in self.findings if f.reason == self.reason)

    @property
    def message(self) -> str:
        verdict = "a valid signature" if self.valid else f"no valid signature ({self.reason})"
        return f"{self.repository}@{self.digest}: {verdict}: {self.explanation}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise FormatError(f"the key {key[:40]!r} appears twice")
        doc[key] = value
    return doc


def _exact(obj: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise FormatError(f"{where} is not an object")
    if set(obj) != keys:
        raise FormatError(f"{where} must hold exactly {', '.join(sorted(keys))}, not {', '.join(sorted(obj))[:120]}")
    return obj


def read_claims(payload: bytes) -> tuple[str, str, str]:
    """(type, docker-reference, docker-manifest-digest) of a simple-signing payload; FormatError otherwise."""
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except FormatError as err:
        raise FormatError(f"payload: {err}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("the payload is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or "critical" not in doc or not set(doc) <= {"critical", "optional"}:
        raise FormatError("the payload must be an object of critical and optional")
    if doc.get("optional") is not None and not isinstance(doc["optional"], dict):
        raise FormatError("payload optional must be null or an object")
    critical = _exact(doc["critical"], {"identity", "image", "type"}, "payload critical")
    identity = _exact(critical["identity"], {"docker-reference"}, "payload critical.identity")
    image = _exact(critical["image"], {"docker-manifest-digest"}, "payload critical.image")
    values = (critical["type"], identity["docker-reference"], image["docker-manifest-digest"])
    if not all(isinstance(v, str) for v in values):
        raise FormatError("payload type, docker-reference and docker-manifest-digest must be strings")
    return values


def split_reference(reference: str) -> tuple[str | None, str]:
    """(host or None, path) of a repository name, by docker's rule for the first component."""
    first, sep, rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, reference


def _check_layer(
    layer: dict[str, Any],
    fetch_payload: Callable[[dict[str, Any]], bytes],
    digest: str,
    repository: str,
    keys: Sequence[PublicKey],
    registry_host: str | None,
) -> Finding:
    annotations = layer.get("annotations")
    encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(encoded, str) or not encoded:
        return Finding(MALFORMED, f"layer {str(layer.get('digest'))[:80]} has no {SIGNATURE_ANNOTATION} annotation")
    try:
        der = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return Finding(MALFORMED, "the signature annotation is not base64")
    size = layer.get("size")
    if not isinstance(size, int) or not 0 < size <= MAX_PAYLOAD_BYTES:
        return Finding(MALFORMED, f"payload size {str(size)[:20]}: not 1 to {MAX_PAYLOAD_BYTES} bytes")
    try:
        payload = fetch_payload(layer)
    except FormatError as err:
        return Finding(MALFORMED, str(err))
    signer = None
    for index, key in enumerate(keys):
        try:
            key.verify(der, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        signer = index
        break
    if signer is None:
        return Finding(BAD_SIGNATURE, "the signature does not verify with the stack's public key (another key, or "
                       "the payload was changed)")  # fmt: skip
    try:
        kind, reference, signed_digest = read_claims(payload)
    except FormatError as err:
        return Finding(MALFORMED, str(err), signer)
    if kind != SIGNATURE_TYPE:
        return Finding(MALFORMED, f"payload type {kind[:80]!r}, not {SIGNATURE_TYPE!r}", signer)
    if signed_digest != digest:
        return Finding(OTHER_DIGEST, f"signed for another digest, {signed_digest[:80]}", signer)
    host, path = split_reference(reference)
    if path != repository or host is None or (registry_host is not None and host.lower() != registry_host.lower()):
        return Finding(OTHER_REPOSITORY, f"signed for another repository, {reference[:200]}", signer)
    return Finding(None, f"valid, by public key {signer + 1}", signer)


def verify_signatures(
    signature_manifest: bytes | None,
    fetch_payload: Callable[[dict[str, Any]], bytes],
    digest: str,
    repository: str,
    keys: Sequence[PublicKey],
    registry_host: str | None = None,
) -> Result:
    """Check every simple-signing layer of the `.sig` manifest (None: there is none) for `digest` in
    `repository`. `fetch_payload(layer)` returns the layer's blob, checked against its digest (it raises
    FormatError when the blob is missing, too big or does not match)."""
    check_digest(digest)
    if signature_manifest is None:
        return Result(digest, repository)
    try:
        doc = parse_manifest(signature_manifest, "the signature manifest")
    except FormatError as err:
        return Result(digest, repository, (Finding(MALFORMED, str(err)),))
    layers = [layer for layer in doc["layers"] if layer.get("mediaType") == PAYLOAD_MEDIA_TYPE]
    if len(layers) > MAX_SIGNATURE_LAYERS:
        message = f"the signature manifest has {len(layers)} signatures; at most {MAX_SIGNATURE_LAYERS} are read"
        return Result(digest, repository, (Finding(MALFORMED, message),))
    findings: list[Finding] = []
    for layer in layers:
        finding = _check_layer(layer, fetch_payload, digest, repository, keys, registry_host)
        findings.append(finding)
        if finding.reason is None:
            break
    return Result(digest, repository, tuple(findings))
