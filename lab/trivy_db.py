"""A small Trivy vulnerability database from fixture CVEs, packed as Trivy's OCI artifact (lab and tests only).

Trivy's database (schema version 2, what Trivy 0.59 reads) is a bbolt file, `trivy.db`:
    bucket `debian 12`       -> bucket <source package>  -> <CVE id>: {"FixedVersion": "..."}
    bucket `vulnerability`   -> <CVE id>: {"Title": ..., "Severity": ..., "Description": ...}
    bucket `data-source`     -> `debian 12`: {"ID": "debian", "Name": ..., "URL": ...}
beside `metadata.json` ({"Version": 2, "NextUpdate", "UpdatedAt", "DownloadedAt"}; a far NextUpdate, so
Trivy never tries the internet). Both go into `db.tar.gz`, the one layer of the artifact Trivy pulls with
`--db-repository` (config `application/vnd.aquasec.trivy.config.v1+json`, layer
`application/vnd.aquasec.trivy.db.layer.v1.tar+gzip`), written here as an OCI layout that
`python -m scanner mirror` copies into the lab registry as `mirror/trivy-db:2`, as production mirrors
ghcr.io's.

Debian matches on the SOURCE package name (`openssl` covers the binary packages `openssl` and `libssl3`).
The fixture ids are fictional (CVE-2099-...): real ids with made-up severities would mislead.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lab import boltdb
from lab.oci_layout import Blob, write_layout

SCHEMA_VERSION = 2
CONFIG_MEDIA_TYPE = "application/vnd.aquasec.trivy.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
DB_TAG = "2"
DEBIAN_12 = "debian 12"
FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)
VENDOR_SEVERITY = {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}  # trivy-db's numbers


@dataclass(frozen=True)
class FixtureCve:
    id: str
    source_package: str  # Debian source package
    fixed_version: str  # "" = no fix yet
    severity: str  # UNKNOWN LOW MEDIUM HIGH CRITICAL
    title: str


# What the lab's sample image is vulnerable to (its openssl is 3.0.11-1~deb12u1, lab/scan_images.py).
OPENSSL_HIGH = FixtureCve(
    "CVE-2099-1001", "openssl", "3.0.13-1~deb12u1", "HIGH", "lab fixture: openssl buffer overread in X.509 parsing"
)
OPENSSL_LOW = FixtureCve("CVE-2099-1002", "openssl", "3.0.14-1~deb12u1", "LOW", "lab fixture: openssl timing leak")
# A CVE for a package the sample does not have: never reported.
UNRELATED = FixtureCve("CVE-2099-1003", "curl", "7.88.1-10+deb12u9", "CRITICAL", "lab fixture: curl overflow")
# What the tests add later, for an image already pushed (the nightly rescan must find it).
ZLIB_CRITICAL = FixtureCve("CVE-2099-2001", "zlib", "1:1.2.13.dfsg-1+deb12u1", "CRITICAL", "lab fixture: zlib inflate")
FIXTURE_CVES = (OPENSSL_HIGH, OPENSSL_LOW, UNRELATED)


def db_tree(cves: tuple[FixtureCve, ...]) -> boltdb.Tree:
    packages: dict[bytes, dict[bytes, bytes]] = {}
    vulnerabilities: dict[bytes, bytes] = {}
    for cve in cves:
        advisory = {"FixedVersion": cve.fixed_version} if cve.fixed_version else {}
        packages.setdefault(cve.source_package.encode(), {})[cve.id.encode()] = json.dumps(advisory).encode()
        # VendorSeverity: the data source's own rating (Trivy prefers it to the generic Severity).
        detail = {
            "Title": cve.title,
            "Description": cve.title,
            "Severity": cve.severity,
            "VendorSeverity": {"debian": VENDOR_SEVERITY[cve.severity]},
        }
        vulnerabilities[cve.id.encode()] = json.dumps(detail).encode()
    source = {
        "ID": "debian",
        "Name": "Debian Security Tracker",
        "URL": "https://salsa.debian.org/security-tracker-team",
    }
    return {
        DEBIAN_12.encode(): packages,
        b"vulnerability": vulnerabilities,
        b"data-source": {DEBIAN_12.encode(): json.dumps(source).encode()},
    }


def metadata(updated_at: datetime) -> bytes:
    when = updated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    far = FAR_FUTURE.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"Version": SCHEMA_VERSION, "NextUpdate": far, "UpdatedAt": when, "DownloadedAt": when}).encode()


def db_tarball(cves: tuple[FixtureCve, ...], updated_at: datetime) -> bytes:
    """db.tar.gz: trivy.db and metadata.json, as Trivy's artifact layer holds them."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("trivy.db", boltdb.encode(db_tree(cves))), ("metadata.json", metadata(updated_at))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(updated_at.timestamp())
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def write_db_layout(layout: Path, cves: tuple[FixtureCve, ...], updated_at: datetime) -> str:
    """The database artifact as an OCI layout at `layout`, tagged `2`; returns its manifest digest."""
    layer = Blob(LAYER_MEDIA_TYPE, db_tarball(cves, updated_at), {"org.opencontainers.image.title": "db.tar.gz"})
    config = Blob(CONFIG_MEDIA_TYPE, b"{}")
    return write_layout(layout, DB_TAG, config, [layer], artifact_type=None)
