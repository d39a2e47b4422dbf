"""The token service as hosts install it: a deterministic tarball of `auth/` and its hash-pinned lock.

`token_service_artifact()` reads the repository's `auth/*.py` and `auth/requirements.lock` and
returns the same bytes for the same sources (sorted entries, fixed owners, modes and times, gzip
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


def artifact_files(auth_dir: Path = AUTH_DIR) -> list[Path]:
    lock = auth_dir / LOCK_NAME
    if not lock.is_file():
        raise FileNotFoundError(f"{lock} is missing: generate it with `make lock`")
    return sorted([*auth_dir.glob("*.py"), lock])


def build_artifact(auth_dir: Path = AUTH_DIR) -> Artifact:
    """tar.gz of auth/*.py and the lock under `auth/`, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in artifact_files(auth_dir):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"auth/{path.name}")
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
