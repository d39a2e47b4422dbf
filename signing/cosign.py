"""cosign's "sigstore attachment" signature format, written and read byte for byte as cosign 2.x does.

A signature of the manifest `sha256:<hex>` in repository R lives in R under the tag `sha256-<hex>.sig`:
an OCI image manifest whose every layer is one signature. A layer's blob is the simple-signing payload

    {"critical":{"identity":{"docker-reference":"HOST/R"},"image":{"docker-manifest-digest":"sha256:<hex>"},
     "type":"cosign container image signature"},"optional":null}

(Go's encoding/json output: no spaces, `optional` null or a small object), its media type
`application/vnd.dev.cosign.simplesigning.v1+json`, and its annotation
`dev.cosignproject.cosign/signature` the base64 DER ECDSA signature of the exact payload bytes. The
config blob is the image config go-containerregistry writes for an empty image with those layers
appended (one `diff_ids` entry and one empty history entry per layer). `docker-reference` is the full
repository name as cosign writes it (`ref.Context().Name()`): the registry host, a slash, the path.

Re-signing merges: `add_signature` appends a layer to an existing `.sig` manifest and keeps every
layer already there (another key's signature, an older one); the same payload and signature twice
is one layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

SIGNATURE_TYPE = "cosign container image signature"
PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# What a client accepts when it resolves a reference (the order docker and containerd send).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
EPOCH = "0001-01-01T00:00:00Z"  # Go's zero time: what go-containerregistry writes for `created`

DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
SIG_TAG = re.compile(r"^sha256-([0-9a-f]{64})\.sig$")
MAX_OPTIONAL_BYTES = 4096  # `optional` is a few annotations; a payload stays far below KMS's 4096-byte RAW limit


class FormatError(ValueError):
    """A payload or signature manifest that is not in cosign's format; the message says what is wrong."""


def _go_json(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it: no spaces, `<`, `>`, `&` escaped, non-ASCII kept."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest; FormatError for anything else."""
    match = DIGEST.match(digest)
    if not match:
        raise FormatError(f"{digest[:80]!r} is not a sha256 digest (sha256: and 64 lower-case hex digits)")
    return match.group(1)


def signature_tag(digest: str) -> str:
    """The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`."""
    return f"sha256-{check_digest(digest)}.sig"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload(docker_reference: str, digest: str, optional: dict[str, str] | None = None) -> bytes:
    """The simple-signing payload that states `docker_reference` (HOST/PATH) at `digest`."""
    check_digest(digest)
    if optional is not None and len(_go_json(optional)) > MAX_OPTIONAL_BYTES:
        raise FormatError(f"optional annotations: more than {MAX_OPTIONAL_BYTES} bytes")
    return _go_json(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": digest},
                "type": SIGNATURE_TYPE,
            },
            "optional": optional,
        }
    )


@dataclass(frozen=True)
class Signature:
    """One layer of a `.sig` manifest: the payload blob and its base64 DER signature."""

    payload: bytes
    signature_b64: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.payload)

    def layer(self) -> dict[str, Any]:
        return {
            "mediaType": PAYLOAD_MEDIA_TYPE,
            "size": len(self.payload),
            "digest": self.digest,
            "annotations": {SIGNATURE_ANNOTATION: self.signature_b64},
        }


def encode_signature(der: bytes) -> str:
    return base64.b64encode(der).decode()


def config_blob(layers: list[dict[str, Any]]) -> bytes:
    """The image config go-containerregistry writes for `empty.Image` with `layers` appended (cosign's
    signature image): an uncompressed payload's diff_id is its digest."""
    return _go_json(
        {
            "architecture": "",
            "created": EPOCH,
            "history": [{"created": EPOCH} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            "config": {},
        }
    )


@dataclass(frozen=True)
class SignatureManifest:
    """A `.sig` manifest ready to push: its bytes, its config blob; payload blobs come from the signatures."""

    manifest: bytes
    config: bytes
    layers: tuple[dict[str, Any], ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def signature_manifest(layers: list[dict[str, Any]]) -> SignatureManifest:
    config = config_blob(layers)
    manifest = _go_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256_digest(config)},
            "layers": layers,
        }
    )
    return SignatureManifest(manifest, config, tuple(layers))


def parse_manifest(body: bytes, what: str = "manifest") -> dict[str, Any]:
    """A JSON object with a `layers` list (an image manifest); FormatError otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError(f"{what} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise FormatError(f"{what} is not a schemaVersion 2 manifest")
    if doc.get("mediaType", OCI_MANIFEST) not in MANIFEST_TYPES:
        raise FormatError(f"{what} has media type {str(doc.get('mediaType'))[:80]!r}, not an image manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise FormatError(f"{what} has no list of layer descriptors")
    return doc


def add_signature(existing: bytes | None, signature: Signature) -> SignatureManifest | None:
    """The `.sig` manifest with `signature` added to `existing` (None: no `.sig` yet). Every layer
    already there stays, in order; None when the same payload and signature are already in it."""
    layers: list[dict[str, Any]] = []
    if existing is not None:
        layers = list(parse_manifest(existing, "the existing signature manifest")["layers"])
    new = signature.layer()
    for layer in layers:
        annotations = layer.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        if layer.get("digest") == new["digest"] and annotations.get(SIGNATURE_ANNOTATION) == signature.signature_b64:
            return None
    return signature_manifest([*layers, new])


def is_signature_manifest(body: bytes) -> bool:
    """True for a cosign signature manifest: an image manifest with at least one layer, every layer a
    simple-signing payload. Such a manifest has nothing to run; verifiers must be able to read it."""
    try:
        doc = parse_manifest(body)
    except FormatError:
        return False
    layers = doc["layers"]
    return bool(layers) and all(layer.get("mediaType") == PAYLOAD_MEDIA_TYPE for layer in layers)


def child_manifests(body: bytes) -> list[str]:
    """The digests an index (multi-arch image) lists; [] for an image manifest."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError("the manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise FormatError("the manifest is not a JSON object")
    entries = doc.get("manifests")
    if doc.get("mediaType") not in INDEX_TYPES and not isinstance(entries, list):
        return []
    if not isinstance(entries, list):
        raise FormatError("the index has no list of manifests")
    digests = []
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise FormatError("an index entry has no digest")
        check_digest(digest)
        digests.append(digest)
    return digests
