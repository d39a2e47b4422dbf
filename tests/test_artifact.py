"""The artifact hosts install (host/artifact.py): the token service, and the gate and signing packages
when they exist, with the one lock; the same bytes for the same sources.

The gate and signing packages are built by another part of issue 13: these tests build artifacts from
temporary trees holding stand-in packages, so they check the packaging whether or not the repository
has those packages yet.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from host.artifact import LOCK_NAME, build_artifact, shipped_packages


def tree(root: Path, *packages: str) -> Path:
    """A repository stand-in: auth/ with its lock, and each package with a module and a subpackage."""
    (root / "auth").mkdir(parents=True)
    (root / "auth" / "__init__.py").write_text("")
    (root / "auth" / "serve.py").write_text("SERVE = 1\n")
    (root / "auth" / LOCK_NAME).write_text("pydantic==2.0 --hash=sha256:00\n")
    (root / "auth" / "notes.txt").write_text("not shipped\n")
    for package in packages:
        (root / package / "sub").mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "config.py").write_text(f"NAME = {package!r}\n")
        (root / package / "sub" / "__init__.py").write_text("")
        (root / package / "sub" / "deep.py").write_text("DEEP = 1\n")
        (root / package / "__pycache__").mkdir()
        (root / package / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"\0")
    return root


def members(content: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_artifact_ships_auth_gate_and_signing_with_the_one_lock(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo", "gate", "signing")
    found = members(build_artifact(root).content)
    assert sorted(found) == [
        "auth/__init__.py",
        f"auth/{LOCK_NAME}",
        "auth/serve.py",
        "gate/__init__.py",
        "gate/config.py",
        "gate/sub/__init__.py",
        "gate/sub/deep.py",
        "signing/__init__.py",
        "signing/config.py",
        "signing/sub/__init__.py",
        "signing/sub/deep.py",
    ]
    assert {(m.mode, m.mtime, m.uid, m.gid, m.uname) for m in found.values()} == {(0o644, 0, 0, 0, "root")}
    assert shipped_packages(root) == ("auth", "gate", "signing")


def test_without_the_gate_the_artifact_ships_auth_alone(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo")
    (root / "gate").mkdir()  # a directory that is no package (no __init__.py) is not shipped
    (root / "gate" / "stray.py").write_text("")
    assert sorted(members(build_artifact(root).content)) == ["auth/__init__.py", f"auth/{LOCK_NAME}", "auth/serve.py"]
    assert shipped_packages(root) == ("auth",)


def test_the_artifact_is_reproducible_and_changes_with_any_shipped_file(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", "gate", "signing")
    b = tree(tmp_path / "b", "gate", "signing")
    for path in b.rglob("*"):  # other times and modes on disk: the same bytes
        os.utime(path, (1, 1))
    first = build_artifact(a)
    assert build_artifact(b) == first
    assert gzip.decompress(first.content)  # a plain gzip stream, no timestamp
    assert first.content[4:8] == b"\0\0\0\0"
    (b / "signing" / "sub" / "deep.py").write_text("DEEP = 2\n")
    assert build_artifact(b).sha256 != first.sha256
    (a / "gate" / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"changed")
    assert build_artifact(a).sha256 == first.sha256  # caches are not shipped


def test_no_lock_no_artifact(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo", "gate")
    (root / "auth" / LOCK_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="make lock"):
        build_artifact(root)


def test_the_repositorys_artifact_holds_what_is_there() -> None:
    built = members(build_artifact().content)
    assert f"auth/{LOCK_NAME}" in built and "auth/serve.py" in built
    for package in ("gate", "signing", "scanner"):  # the gate reads scan reports with scanner/report.py
        present = Path(package, "__init__.py").is_file()
        assert (f"{package}/__init__.py" in built) == present, package
