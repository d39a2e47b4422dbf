"""Debian roots that boot like a fresh registry host: debootstrap once, cached as a zstd tarball.

`host_root(suite, into)` unpacks a minimal Debian root (systemd as init, cloud-init, what cloud-init
needs) for `suite` into `into`. The root is built with `debootstrap --variant=minbase` from the Debian
archive this machine's apt uses (lab.debian_tools.debian_mirror) and stored under the repository's
git-ignored `.cache/host-roots/` as `SUITE-KEY.tar.zst`, KEY naming the suite, the package list and
the files written into the root: a changed list builds a new root; a second call only unpacks (about
1 s). Nothing of the machine changes: debootstrap writes only below its target directory.

What a cloud image has that debootstrap does not, and cloud-init needs:
- an empty `/etc/machine-id`: systemd makes a new one at first boot (as on a fresh instance);
- `/etc/cloud/cloud.cfg.d/90-registry-fleet-lab.cfg`: the NoCloud seed is the only datasource (no
  probing for EC2's metadata service), cloud-init leaves the network to the container, and the two
  modules that report errors in a minimal root (no locales, no SSH server) have nothing to do.
`python3-cffi-backend` is listed because debootstrap does not resolve virtual packages (cloud-init's
dependency `python3-cffi-backend-api-*` is one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.debian_tools import debian_mirror

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "host-roots"
SUITES = ("bookworm", "trixie")  # Debian 12, Debian 13
DEBOOTSTRAP = "/usr/sbin/debootstrap"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3-cffi-backend",
    "iproute2",
    "procps",
    "ca-certificates",
    "netbase",
)
CLOUD_CFG_PATH = "etc/cloud/cloud.cfg.d/90-registry-fleet-lab.cfg"
CLOUD_CFG = """\
# registry-fleet lab (lab/host_root.py): the NoCloud seed only; the container owns the network.
datasource_list: [NoCloud, None]
network: {config: disabled}
locale: C.UTF-8
ssh_genkeytypes: []
"""


class HostRootError(RuntimeError):
    """A root could not be built or unpacked; the message says what failed."""


def cache_key(suite: str) -> str:
    """What the cached root is made of: suite, variant, package list and the files written into it."""
    recipe = json.dumps({"suite": suite, "variant": "minbase", "packages": PACKAGES, "cloud_cfg": CLOUD_CFG})
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def tarball(suite: str, cache: Path = CACHE) -> Path:
    """The cached root of `suite`, built first when missing (about a minute, about 90 MB)."""
    if suite not in SUITES:
        raise HostRootError(f"unknown Debian suite {suite!r}: the boot test builds {', '.join(SUITES)}")
    target = cache / f"{suite}-{cache_key(suite)}.tar.zst"
    if target.is_file():
        return target
    if not Path(DEBOOTSTRAP).exists():
        raise HostRootError(f"{DEBOOTSTRAP} is missing: apt-get install debootstrap (make test-packages does)")
    if os.geteuid() != 0:
        raise HostRootError("building a Debian root with debootstrap needs root")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".build-{suite}-") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(
            [
                DEBOOTSTRAP,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(root),
                debian_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if proc.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
            raise HostRootError(f"debootstrap {suite} failed (exit {proc.returncode}):\n{detail}")
        (root / "etc" / "machine-id").write_text("")
        (root / CLOUD_CFG_PATH).write_text(CLOUD_CFG)
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
        partial = Path(tmp) / "root.tar.zst"
        _tar(["--zstd", "-cf", str(partial), "-C", str(root), "."])
        partial.rename(target)
    for old in cache.glob(f"{suite}-*.tar.zst"):  # roots of an older recipe
        if old != target:
            old.unlink()
    return target


def host_root(suite: str, into: Path, cache: Path = CACHE) -> Path:
    """Unpack the cached root of `suite` into the empty or missing directory `into`; returns `into`."""
    source = tarball(suite, cache)
    into.mkdir(parents=True, exist_ok=True)
    if any(into.iterdir()):
        raise HostRootError(f"{into} is not empty: a root is unpacked into a new directory")
    _tar(["--zstd", "-xf", str(source), "-C", str(into)])
    return into


def _tar(args: list[str]) -> None:
    # Numeric owners and extended attributes (file capabilities) as debootstrap left them.
    proc = subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise HostRootError(f"tar {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
