"""Client programs from another Debian release, for tests, without touching this machine's apt state.

Kubernetes nodes and Docker 29 pull through containerd; Debian 13 packages containerd 1.7 (and its
`ctr`), which runs on Debian 12 too. `fetch("containerd")` downloads the package for this machine's
architecture from the mirror the machine's own apt sources name, with a private sources list, lists
and archives directory, and unpacks it (`dpkg-deb -x`) under `.cache/debian/<suite>/<package>` in
the repository: nothing is installed, no service starts, `/etc/apt` and `/var/lib/apt` stay as they
are. A second call finds the cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "debian"
SUITE = "trixie"  # Debian 13
KEYRINGS = ("/usr/share/keyrings/debian-archive-keyring.gpg", "/usr/share/keyrings/debian-archive-keyring.pgp")
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


class ToolUnavailable(RuntimeError):  # noqa: N818 (reads as a sentence)
    """The package could not be fetched; the message says what failed."""


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (the first non-security `URIs`/`deb` entry)."""
    texts: list[str] = []
    for source in APT_SOURCES:
        if source.is_dir():
            texts += [p.read_text() for p in sorted(source.glob("*.sources")) + sorted(source.glob("*.list"))]
        elif source.is_file():
            texts.append(source.read_text())
    for text in texts:
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M
        ):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri).rstrip("/")
    raise ToolUnavailable("no Debian archive in this machine's apt sources (/etc/apt/sources.list[.d])")


def _apt(args: list[str], root: Path, cwd: Path) -> None:
    options = [
        f"-oDir::Etc::SourceList={root / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={root / 'lists'}",
        f"-oDir::Cache::Archives={root / 'archives'}",
        f"-oDir::Cache={root / 'cache'}",
        "-oDir::State::status=/dev/null",
        "-oAPT::Sandbox::User=root",
        "-oDebug::NoLocking=1",
        "-qq",
    ]
    proc = subprocess.run(["apt-get", *options, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise ToolUnavailable(f"apt-get {' '.join(args)} ({SUITE}) failed:\n{proc.stderr.strip()[-2000:]}")


def fetch(package: str, suite: str = SUITE, cache: Path = CACHE) -> Path:
    """The directory the package is unpacked in (its files at their paths: ROOT/usr/bin/ctr)."""
    target = cache / suite / package
    if (target / ".complete").exists():
        return target
    keyring = next((k for k in KEYRINGS if Path(k).exists()), None)
    if keyring is None:
        raise ToolUnavailable("no Debian archive keyring (apt-get install debian-archive-keyring)")
    root = cache / suite / "apt"
    for sub in ("lists/partial", "archives/partial", "cache"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb [signed-by={keyring}] {debian_mirror()} {suite} main\n")
    _apt(["update"], root, root)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _apt(["download", package], root, Path(tmp))
        (deb,) = Path(tmp).glob(f"{package}_*.deb")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True, timeout=300)
        (unpacked / ".complete").write_text(deb.name + "\n")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target


def foreign_program(program: str, packages: tuple[str, ...], suite: str = SUITE) -> tuple[str, ...]:
    """The argv prefix that runs `program` (a path inside the first package) from `suite` on this machine:
    through that suite's own dynamic loader, with the shared objects of `packages` (libc6 among them) only.
    A newer Debian's binaries need its newer C library; nothing of theirs is installed here."""
    roots = {name: fetch(name, suite) for name in packages}
    if "libc6" not in roots:
        raise ToolUnavailable(f"{program}: libc6 must be among the packages (its loader runs the program)")
    (loader,) = roots["libc6"].glob("usr/lib/*-linux-gnu/ld-linux*.so.*")
    library_path = ":".join(str(d) for root in roots.values() for d in sorted(root.glob("usr/lib/*-linux-gnu")))
    return (str(loader), "--library-path", library_path, str(roots[packages[0]] / program.lstrip("/")))
