"""The host's Python services as hosts install them: a deterministic tarball of `auth/` (the token
service), `gate/` (the signature gate) and `signing/` (the cosign format and verifier the gate uses),
with the one hash-pinned lock (`auth/requirements.lock`) that installs all of them into one venv.

`build_artifact()` reads the repository's `auth/*.py` and `auth/requirements.lock`, and every `*.py`
under `gate/` and `signing/` when those packages exist, and returns the same bytes for the same
sources (sorted entries, fixed owners, modes and times, gzip
without a timestamp), so the object key, named by the content's SHA-256, changes only when the
code or a pin changes, and only then rolls the fleet. Hosts verify the SHA-256 (carried in
user-data) before unpacking, and pip installs the lock with `--require-hashes`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTH_DIR = REPO_ROOT / "auth"
LOCK_NAME = "requirements.lock"
# Packages shipped beside auth/ when present (whole trees of *.py): the gate, the code it verifies with and
# the scan report contract it reads (scanner/report.py).
OPTIONAL_PACKAGES = ("gate", "signing", "scanner")
KEY_PREFIX = "registry-fleet/token-service"  # in the registry bucket, outside the registry's docker/ root


@dataclass(frozen=True)
class Artifact:
    content: bytes
    sha256: str

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}/auth-{self.sha256}.tar.gz"

    @property
    def content_base64(self) -> str:
        return base64.b64encode(self.content).decode()


def artifact_files(root: Path = REPO_ROOT) -> list[tuple[str, Path]]:
    """(name in the tarball, file) of everything shipped, sorted by name: `auth/*.py`, the lock, and every
    `*.py` of the optional packages present under `root` (caches left out)."""
    auth_dir = root / "auth"
    lock = auth_dir / LOCK_NAME
    if not lock.is_file():
        raise FileNotFoundError(f"{lock} is missing: generate it with `make lock`")
    files = [*auth_dir.glob("*.py"), lock]
    for package in OPTIONAL_PACKAGES:
        if (root / package / "__init__.py").is_file():
            files += [p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted((path.relative_to(root).as_posix(), path) for path in files)


def shipped_packages(root: Path = REPO_ROOT) -> tuple[str, ...]:
    """The top-level packages the artifact holds: `auth`, and the optional ones present."""
    return tuple(sorted({name.split("/", 1)[0] for name, _ in artifact_files(root)}))


def build_artifact(root: Path = REPO_ROOT) -> Artifact:
    """tar.gz of artifact_files(root) under their repository paths, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in artifact_files(root):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    content = packed.getvalue()
    return Artifact(content=content, sha256=hashlib.sha256(content).hexdigest())
