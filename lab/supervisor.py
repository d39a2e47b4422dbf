"""Starting, watching and stopping the lab's processes.

Each process runs in its own session (so a detached lab outlives the command that started
it, and stopping it stops its children too), logs to a file in the lab's state directory, and
is described in `state.json` so that `lab status` and `lab down` find it later.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

# What a lab process inherits: never the caller's CA bundles (the registry panics on
# AWS_CA_BUNDLE; REQUESTS_CA_BUNDLE would override our own trust), nor their AWS identity.
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env.update(extra)
    return env


_PORT_FLOOR = 10000
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port nobody listens on, chosen outside the kernel's ephemeral range.

    A port the kernel picked for us (bind to 0) lies inside the ephemeral range, from which every
    outgoing connection also takes its local port: between choosing a port and the service binding
    it, a lab client's connection could take it ("address already in use", seen in CI). Ports
    below the ephemeral range are never given to outgoing connections. A port is handed out once
    per process.
    """
    low, high = _ephemeral_range()
    candidates: list[int] = [*range(_PORT_FLOOR, low), *range(high + 1, 65536)] or list(range(1024, 65536))
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {_PORT_FLOOR} and {low - 1}")


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class ProcessDied(RuntimeError):  # noqa: N818 (reads as a sentence: raise ProcessDied)
    """A lab process exited; the message carries the tail of its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    log: str
    ports: dict[str, int] = field(default_factory=dict)
    pid: int = 0
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("env")  # environments may hold lab credentials; state.json lists them elsewhere
        return d


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def start(service: Service, cwd: Path) -> Service:
    """Start the process; its log, and every file it makes, readable by the lab's user only."""
    fd = os.open(service.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            service.argv,
            cwd=cwd,
            env=service.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
        )
    service.pid = proc.pid
    return service


def wait_ready(service: Service, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(service.pid):
            raise ProcessDied(f"{service.name} exited during start; last log lines:\n{log_tail(service.log)}")
        if check():
            return
        time.sleep(0.05)
    raise ProcessDied(f"{service.name} not ready after {timeout:.0f}s; last log lines:\n{log_tail(service.log)}")


def stop(service: Service, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left; returns once nothing is left."""
    if not service.pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and _group_alive(service.pid):
            time.sleep(0.05)
        if not _group_alive(service.pid):
            break
    # A Go program's leader shows as a zombie while its other threads still exit: reap our child
    # for real (a few ms later), so that nothing of it is left when stop returns.
    deadline = time.monotonic() + 5.0
    while service.pid and time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(service.pid, os.WNOHANG)
        except ChildProcessError:
            break  # not our child (another command started it), or already reaped
        if done:
            break
        time.sleep(0.02)


def process_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process: fields[0] is the state,
    fields[2] the process group, fields[11] and fields[12] the user and system time in clock ticks."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), stat.rsplit(") ", 1)[1].split()


def _group_alive(pgid: int) -> bool:
    for _, fields in process_stats():
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return False
