"""Boot a Debian root with systemd as PID 1 in a container, isolated from the machine it runs on.

`boot(lower, work, files)` starts `systemd-nspawn --boot` on an overlay of `lower` (a root from
lab.host_root, never written: the overlay's lower layer is read-only) with a fresh upper layer under
`work`, into which `files` (the NoCloud seed, the lab's overrides) are copied before the boot. The
machine's systemd is never involved:

- `systemd-nspawn` is the binary of Debian's `systemd-container` package for this machine's own
  systemd version, unpacked with `dpkg-deb -x` under `.cache/nspawn/` (never installed: the package's
  scripts would touch the machine's systemd); `--register=no --keep-unit` keep it off the machine's
  systemd-machined and D-Bus;
- it runs inside `unshare --mount --propagation private`, with its own tmpfs on `/run` and `/tmp`
  (plain nspawn writes under the machine's `/run/systemd/nspawn`) and the overlay mounted there only:
  every mount disappears with the namespace;
- it runs in its own cgroups (`registry-fleet-lab-NAME` in each hierarchy nspawn uses), removed by
  `stop`;
- no bind mount: whatever the container needs from the machine is copied into its upper layer;
- `run` enters the container with `nsenter`, its capability bounding set first cut to the container's
  (a plain `nsenter -a` keeps the machine's capabilities: `ip link` there would change the machine's
  loopback, shared with the container, which runs without `--private-network` to reach the lab);
- `stop` asks the container's systemd to power off and kills its PID 1 when that hangs.
Containers share the machine's network: boots run one at a time (their services would collide on ports).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "nspawn"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The hierarchies nspawn and the container's systemd use: cgroup v2 (unified), or on a hybrid
# machine the named systemd hierarchy beside the unified one.
CGROUP_HIERARCHIES = ("", "unified", "systemd")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_CAPBSET_DROP = 24
_CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")


class ContainerError(RuntimeError):
    """A container could not be booted, entered or stopped; the message says what failed."""


@dataclass(frozen=True)
class FileSpec:
    """A file copied into the container's upper layer before it boots (root-owned)."""

    content: bytes
    mode: int = 0o644


def machine_systemd_version() -> str:
    """The Debian version of this machine's systemd package (nspawn must match its libsystemd-shared)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "systemd"], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0 or not proc.stdout:
        raise ContainerError("this machine has no Debian systemd package: systemd-nspawn needs its libsystemd-shared")
    return proc.stdout.strip()


def nspawn_binary(cache: Path = CACHE) -> Path:
    """systemd-nspawn from `systemd-container` of the machine's systemd version, unpacked, not installed.

    `apt-get download` with the machine's own apt lists (it writes only the .deb, into a temporary
    directory): the version the machine runs is usually in its suite or its security suite."""
    version = machine_systemd_version()
    target = cache / re.sub(r"[^A-Za-z0-9.+-]", "_", version)
    binary = target / "usr" / "bin" / "systemd-nspawn"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(
            ["apt-get", "download", "-qq", f"systemd-container={version}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if proc.returncode != 0:
            raise ContainerError(
                f"apt-get download systemd-container={version} failed (run apt-get update first?):\n"
                f"{proc.stderr.strip()[-1500:]}"
            )
        (deb,) = Path(tmp).glob("systemd-container_*.deb")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True, timeout=300)
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return binary


@dataclass
class Container:
    name: str
    work: Path  # upper/, ovlwork/, merged/ and console.log
    launcher: subprocess.Popen[bytes]  # unshare -> sh -> systemd-nspawn
    cgroups: tuple[Path, ...]
    started_at: float

    @property
    def upper(self) -> Path:
        return self.work / "upper"

    @property
    def console_log(self) -> Path:
        return self.work / "console.log"

    def leader(self) -> int:
        """The container's PID 1, as the machine sees it (its pid namespace's init)."""
        for pid in _cgroup_pids(self.cgroups):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if nspid and nspid.group(1).split()[1:] == ["1"]:
                return pid
        raise ContainerError(f"container {self.name}: no PID 1 yet (console: {self.console_tail()})")

    def console_tail(self, chars: int = 2000) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console log)"


def _cgroup_pids(cgroups: Sequence[Path]) -> list[int]:
    """Every process in the cgroups and below (cgroups come and go while the container runs)."""
    pids: list[int] = []
    for cgroup in cgroups:
        for directory, _, _ in os.walk(cgroup):
            try:
                pids += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
            except OSError:
                continue
    return sorted(set(pids))


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies to make the container's cgroup in: cgroup2 at the root, or the hybrid pair."""
    if (CGROUP_ROOT / "cgroup.procs").exists():
        return [CGROUP_ROOT]
    found = [CGROUP_ROOT / h for h in CGROUP_HIERARCHIES[1:] if (CGROUP_ROOT / h / "cgroup.procs").exists()]
    if not found:
        raise ContainerError(f"no cgroup hierarchy for systemd under {CGROUP_ROOT} (neither cgroup2 nor name=systemd)")
    return found


def boot(
    lower: Path,
    work: Path,
    files: Mapping[str, FileSpec],
    name: str,
    nspawn: Path | None = None,
    private_network: bool = False,
) -> Container:
    """Boot `lower` (read-only) with a fresh upper layer in `work` (new or empty, not under /tmp or /run:
    the container's namespace gets its own tmpfs there); `files` maps absolute paths in the container
    to what is copied into the upper layer first. `private_network`: the container gets its own network
    namespace with only a loopback (nothing it listens on reaches the machine's network, and it reaches
    nothing outside). Returns once nspawn runs; see `wait_booted`."""
    if os.geteuid() != 0:
        raise ContainerError("booting a container needs root")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
        raise ContainerError(f"container name {name!r}: lower-case letters, digits and '-' only")
    for shared in ("/tmp", "/run"):
        if work.resolve().is_relative_to(shared):
            raise ContainerError(f"{work} is under {shared}, which the container's namespace replaces with a tmpfs")
    binary = nspawn or nspawn_binary()
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("upper", "ovlwork", "merged"):
        (work / sub).mkdir(exist_ok=True)
    write_files(work / "upper", files)
    cgroups = []
    for hierarchy in _hierarchies():
        cgroup = hierarchy / f"registry-fleet-lab-{name}"
        if cgroup.exists():
            raise ContainerError(f"{cgroup} exists: a container named {name} runs, or was not cleaned up")
        cgroup.mkdir()
        cgroups.append(cgroup)
    join = " ".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))};" for c in cgroups)
    merged = work / "merged"
    overlay = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'ovlwork'}"
    script = (
        f"set -e; {join} "
        "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run; "
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp; "
        f"mount -t overlay overlay -o {shlex.quote(overlay)} {shlex.quote(str(merged))}; "
        f"exec {shlex.quote(str(binary))} -D {shlex.quote(str(merged))} --boot --register=no --keep-unit "
        f"--machine={name} --console=read-only --resolv-conf=copy-host --timezone=off --link-journal=no"
        + (" --private-network" if private_network else "")
    )
    console = (work / "console.log").open("wb")
    try:
        launcher = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        _remove_cgroups(cgroups)
        raise
    finally:
        console.close()
    return Container(name, work, launcher, tuple(cgroups), time.monotonic())


def write_files(upper: Path, files: Mapping[str, FileSpec]) -> None:
    for path, spec in files.items():
        if not path.startswith("/") or ".." in path.split("/"):
            raise ContainerError(f"container file {path!r}: an absolute path without '..'")
        target = upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        target.write_bytes(spec.content)
        target.chmod(spec.mode)


def wait_booted(container: Container, timeout: float = 120.0) -> float:
    """Wait until the container's systemd answers `is-system-running` with a settled state; returns
    the seconds since the boot started."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if container.launcher.poll() is not None:
            raise ContainerError(
                f"container {container.name} exited ({container.launcher.returncode}):\n{container.console_tail()}"
            )
        try:
            proc = run(container, ["systemctl", "is-system-running"], timeout=15)
            last = proc.stdout.strip()
            if last in ("running", "degraded"):
                return time.monotonic() - container.started_at
        except ContainerError:
            pass
        time.sleep(0.5)
    raise ContainerError(f"container {container.name}: not booted after {timeout:.0f} s ({last!r})")


def _capability_bound(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M)
    if not match:
        raise ContainerError(f"no CapBnd in /proc/{pid}/status")
    return int(match.group(1), 16)


def _limit_capabilities(bound: int) -> None:
    """In the child before exec: drop every capability the container's PID 1 lacks from the bounding
    set, and empty the inheritable and ambient sets, so nsenter and what it runs get at most the
    container's capabilities (root's exec gives permitted = bounding)."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(_CAP_LAST_CAP.read_text())
    for cap in range(last + 1):
        if not bound & (1 << cap) and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(126)
    # PR_CAP_AMBIENT (47), PR_CAP_AMBIENT_CLEAR_ALL (4)
    libc.prctl(47, 4, 0, 0, 0)


def run(
    container: Container,
    argv: Sequence[str],
    timeout: float = 60.0,
    check: bool = False,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root in the container (its namespaces and root; the container's capabilities only)."""
    try:
        leader = container.leader()
    except ContainerError:
        raise
    bound = _capability_bound(leader)
    command = [
        "nsenter",
        f"--target={leader}",
        "--mount",
        "--uts",
        "--ipc",
        "--net",
        "--pid",
        "--cgroup",
        "--root",
        "--wd",
        "--",
        "/usr/bin/env",
        "-i",
        f"PATH={CONTAINER_PATH}",
        "LANG=C.UTF-8",
        "HOME=/root",
        *argv,
    ]
    try:
        proc = subprocess.run(
            command,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=lambda: _limit_capabilities(bound),
        )
    except subprocess.TimeoutExpired as err:
        raise ContainerError(f"container {container.name}: {shlex.join(argv)} timed out after {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        raise ContainerError(
            f"container {container.name}: {shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-2000:]}"
        )
    return proc


def stop(container: Container, timeout: float = 60.0) -> None:
    """Power the container off (SIGRTMIN+4 to its systemd); after `timeout` kill its PID 1, then
    everything left in its cgroups, and remove them. The mounts go with the namespace."""
    try:
        if container.launcher.poll() is None:
            try:
                os.kill(container.leader(), signal.SIGRTMIN + 4)
            except (ContainerError, ProcessLookupError):
                container.launcher.terminate()
            try:
                container.launcher.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ContainerError, ProcessLookupError):
                    os.kill(container.leader(), signal.SIGKILL)
                try:
                    container.launcher.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(container.launcher.pid, signal.SIGKILL)
                    container.launcher.wait(timeout=15)
    finally:
        _remove_cgroups(container.cgroups)


def _remove_cgroups(cgroups: Sequence[Path]) -> None:
    """Kill what is left in the cgroups, then remove them, deepest first."""
    deadline = time.monotonic() + 15
    while (pids := _cgroup_pids(cgroups)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    left = []
    for cgroup in cgroups:
        if not cgroup.exists():
            continue
        for directory, _, _ in sorted(os.walk(cgroup), key=lambda d: len(Path(d[0]).parts), reverse=True):
            try:
                Path(directory).rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(directory)
    if left:
        raise ContainerError(f"cgroups left behind (processes still in them?): {', '.join(left)}")
