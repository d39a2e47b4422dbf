"""Images for the lab: built locally with umoci, moved with skopeo (no Docker daemon needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

CHUNK = 1024 * 1024


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build_image(layout: Path, tag: str, layers: list[dict[str, int]]) -> str:
    """An OCI image at `layout:tag`, one layer per dict of {file name: size in bytes} (random bytes).

    Returns the reference `oci:<layout>:<tag>` for skopeo.
    """
    bundle = layout.parent / f"{layout.name}-{tag}-bundle"
    if not (layout / "index.json").exists():
        run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    for i, files in enumerate(layers):
        # A fresh bundle per layer: repack diffs against the image the bundle was unpacked from.
        run(["rm", "-rf", str(bundle)])
        run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)])
        for name, size in files.items():
            path = bundle / "rootfs" / "lab" / f"layer{i}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                left = size
                while left > 0:
                    f.write(os.urandom(min(CHUNK, left)))
                    left -= CHUNK
        run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)])
    run(["rm", "-rf", str(bundle)])
    return f"oci:{layout}:{tag}"


def layer_digests(layout: Path, tag: str) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    (manifest,) = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    algo, digest = manifest["digest"].split(":")
    doc = json.loads((layout / "blobs" / algo / digest).read_text())
    return [layer["digest"] for layer in doc["layers"]]


def skopeo_copy(src: str, dest: str, cert_dir: str, creds: str | None) -> None:
    """Copy between an OCI layout and the registry, trusting only the lab CA (no --tls-verify=false)."""
    argv = ["skopeo", "copy", "--quiet"]
    if src.startswith("docker://"):
        argv += ["--src-cert-dir", cert_dir] + (["--src-creds", creds] if creds else ["--src-no-creds"])
    if dest.startswith("docker://"):
        argv += ["--dest-cert-dir", cert_dir] + (["--dest-creds", creds] if creds else ["--dest-no-creds"])
    run([*argv, src, dest], env=_skopeo_env())


def skopeo_digest(ref: str, cert_dir: str, creds: str | None) -> str:
    argv = ["skopeo", "inspect", "--raw"]
    if ref.startswith("docker://"):
        argv += ["--cert-dir", cert_dir] + (["--creds", creds] if creds else ["--no-creds"])
    raw = run([*argv, ref], env=_skopeo_env())
    import hashlib

    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def _skopeo_env() -> dict[str, str]:
    # No proxy or CA settings of the caller: the lab CA is given per command.
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}
