"""OCI image layouts written in Python (the scanning lab's sample images and Trivy's database artifact).

`write_layout(dir, tag, config, layers)` writes the blobs, an image manifest and `index.json` naming it by
`tag` (`org.opencontainers.image.ref.name`), as `umoci`/`skopeo` write them; it adds to a layout that exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


def _put(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def manifest_bytes(config: Blob, layers: list[Blob], artifact_type: str | None = None) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.descriptor()
    doc["layers"] = [layer.descriptor() for layer in layers]
    return json.dumps(doc, separators=(",", ":")).encode()


def write_layout(layout: Path, tag: str, config: Blob, layers: list[Blob], artifact_type: str | None = None) -> str:
    """Write the image and name it `tag` (replacing an older one of that name); returns the manifest's digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for blob in (config, *layers):
        _put(layout, blob.data)
    manifest = manifest_bytes(config, layers, artifact_type)
    digest = _put(layout, manifest)
    index_file = layout / "index.json"
    index: dict[str, Any] = (
        json.loads(index_file.read_text()) if index_file.exists() else {"schemaVersion": 2, "manifests": []}
    )
    index["mediaType"] = OCI_INDEX
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append(
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "annotations": {REF_NAME: tag}}
    )
    index_file.write_text(json.dumps(index))
    return digest


def read_tagged(layout: Path, tag: str) -> tuple[bytes, str]:
    """(manifest bytes, media type) of the image named `tag` in the layout; KeyError when there is none."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return read_blob(layout, entry["digest"]), str(entry.get("mediaType", OCI_MANIFEST))
    raise KeyError(f"{layout}: no image named {tag!r}")


def read_blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    data = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    if hashlib.sha256(data).hexdigest() != hexdigest:
        raise ValueError(f"{layout}: blob {digest} does not match its digest")
    return data


def tar_layer(files: dict[str, bytes], mtime: int = 0) -> tuple[Blob, str]:
    """A gzip layer holding `files` (path -> content, directories implied); returns it and its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = mtime
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(files[path]))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return Blob(OCI_LAYER, gzip.compress(raw.getvalue(), mtime=0)), diff_id


def image_config(diff_ids: list[str], architecture: str = "amd64") -> Blob:
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "created": "2026-12-01T00:00:00Z",
    }
    return Blob(OCI_CONFIG, json.dumps(config, separators=(",", ":")).encode())
