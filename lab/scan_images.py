"""Sample images for the scanning lab: a Debian 12 package database and nothing else, built in Python.

Trivy recognises Debian by `/etc/debian_version` and reads installed packages from `/var/lib/dpkg/status`;
that is all an image needs to be scanned. `debian_image` lists the packages given (name, version, source);
`VULNERABLE` has openssl 3.0.11-1~deb12u1 (older than the fixture database's fixes, lab/trivy_db.py),
`CLEAN` has openssl 3.0.15-1~deb12u1 (newer than every fix). A `marker` file makes each image distinct
(a fresh digest per call, for benchmarks and tests that need one).
"""

from __future__ import annotations

import os
from pathlib import Path

from lab.oci_layout import image_config, tar_layer, write_layout

Package = tuple[str, str, str]  # name, version, source package
VULNERABLE: tuple[Package, ...] = (
    ("openssl", "3.0.11-1~deb12u1", "openssl"),
    ("libssl3", "3.0.11-1~deb12u1", "openssl"),
    ("zlib1g", "1:1.2.13.dfsg-1", "zlib"),
)
CLEAN: tuple[Package, ...] = (
    ("openssl", "3.0.15-1~deb12u1", "openssl"),
    ("libssl3", "3.0.15-1~deb12u1", "openssl"),
)


def dpkg_status(packages: tuple[Package, ...]) -> bytes:
    entries = []
    for name, version, source in packages:
        lines = [f"Package: {name}", "Status: install ok installed", "Priority: optional", "Architecture: amd64"]
        if source != name:
            lines.append(f"Source: {source}")
        lines += [f"Version: {version}", "Maintainer: registry-fleet lab <lab@example.invalid>"]
        lines.append(f"Description: {name} (lab sample)")
        entries.append("\n".join(lines) + "\n")
    return "\n".join(entries).encode()


def debian_image(layout: Path, tag: str, packages: tuple[Package, ...], marker: bytes | None = None) -> str:
    """Write the image into the OCI layout `layout` as `tag`; returns its manifest digest."""
    files = {
        "etc/debian_version": b"12.8\n",
        "etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
        "var/lib/dpkg/status": dpkg_status(packages),
        "lab/marker": marker if marker is not None else os.urandom(16).hex().encode(),
    }
    layer, diff_id = tar_layer(files)
    return write_layout(layout, tag, image_config([diff_id]), [layer])
