"""`make lab`'s install step on a machine booted with systemd leaves no service listening or enabled.

On a machine whose init is systemd, installing the lab's Debian packages (the Makefile's LAB_PACKAGES,
what `make lab-packages` installs when a binary is missing) would enable and start their system
services: an unauthenticated docker-registry on *:5000, nginx on *:80, slapd on *:389.
lab/install-packages.sh prevents it (a temporary policy-rc.d, then the new packages' units disabled).
Here it runs, for Debian 12 and 13, as root in a Debian root booted with systemd (lab/host_root.py,
lab/nspawn.py: a private mount namespace, a read-only lower layer, no bind mount), and the check is:
no listening socket that was not there before the install, the packages' units neither active nor
enabled, and after a reboot of the same layer still nothing listening. A broken twin (the same
packages through a plain `apt-get install`) proves the check catches what the script prevents.

The install step is what can leave a service running after the lab stops: the lab's own processes
(moto, the registry, nginx, slapd, the token service on loopback ports) are started and stopped by
`fleet lab up`/`lab down`, and tests/test_lab.py already proves that nothing of them is left. Running
the whole `make lab` here would need the repository and a virtualenv with requirements-dev.txt built
in the container for each release (minutes each) for no further proof about the machine's services.

Two boots per release, the same upper layer (a disk keeps its files):
1. sharing the machine's network: `apt-get update` and `apt-get install --download-only` from the
   Debian archive the roots come from (download-only runs no maintainer script: nothing starts);
2. with a private network (`--private-network`, only a loopback): the install itself. Its
   `apt-get update` cannot reach the archive and keeps the lists of step 1. The private network
   matters: a service the install would start (the broken twin's) listens only inside the container,
   never on this machine's network, which the lab, the host boot test and the user's network share.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import nspawn
from lab.host_lab import listening_sockets, unpack_root
from lab.host_root import SUITES

pytestmark = [pytest.mark.lab, pytest.mark.boot]

REPO = Path(__file__).resolve().parent.parent
SCRIPT_IN_CONTAINER = "/usr/local/sbin/install-packages.sh"
POLICY_RC_D = "/usr/sbin/policy-rc.d"
# The system services of LAB_PACKAGES (slapd's is its SysV script, run by systemd as slapd.service).
SERVICE_UNITS = ("docker-registry.service", "nginx.service", "slapd.service")
ENABLED_STATES = ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias", "indirect")
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")
INSTALL_TIMEOUT = 900
SEED = {
    "/var/lib/cloud/seed/nocloud/meta-data": nspawn.FileSpec(b"instance-id: i-lab-packages\n"),
    "/var/lib/cloud/seed/nocloud/user-data": nspawn.FileSpec(b"#cloud-config\n{}\n"),
}


def lab_packages() -> list[str]:
    """LAB_PACKAGES as the Makefile has it (make evaluates it: no copy of the list here)."""
    target = "print-lab-packages"
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", f"{target}: ; @echo $(LAB_PACKAGES)", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    packages = proc.stdout.split()
    assert proc.returncode == 0 and packages, f"make did not print LAB_PACKAGES: {proc.stderr}"
    return packages


@dataclass
class Machine:
    """A booted Debian root standing in for a user's machine; reboots keep its upper layer."""

    suite: str
    lower: Path
    work: Path
    name: str
    container: nspawn.Container | None = None

    def boot(self, private_network: bool) -> None:
        script = nspawn.FileSpec((REPO / "lab" / "install-packages.sh").read_bytes(), 0o755)
        files = {**SEED, SCRIPT_IN_CONTAINER: script} if self.container is None else {}
        self.container = nspawn.boot(self.lower, self.work, files, self.name, private_network=private_network)
        nspawn.wait_booted(self.container)
        done = self.run("cloud-init", "status", "--wait", timeout=300)
        assert done.returncode in (0, 2), f"{self.suite}: cloud-init: {done.stdout}{done.stderr}"

    def stop(self) -> None:
        if self.container is not None and self.container.launcher.poll() is None:
            nspawn.stop(self.container)

    def run(self, *argv: str, timeout: float = 120, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.container is not None
        return nspawn.run(self.container, list(argv), timeout=timeout, input_text=input_text)

    def sockets(self) -> set[tuple[str, str]]:
        proc = self.run("ss", "-H", "-l", "-t", "-u", "-n", "-p")
        assert proc.returncode == 0, proc.stderr
        return listening_sockets(proc.stdout)


def services_left(machine: Machine, sockets_before: set[tuple[str, str]]) -> list[str]:
    """What the install left behind: new listening sockets, and the packages' units active or enabled."""
    found = [f"listening: {process} on {address}" for process, address in sorted(machine.sockets() - sockets_before)]
    for unit in SERVICE_UNITS:
        active = machine.run("systemctl", "is-active", unit).stdout.strip()
        enabled = machine.run("systemctl", "is-enabled", unit).stdout.strip()
        if active in ACTIVE_STATES:
            found.append(f"{unit} is {active}")
        if enabled in ENABLED_STATES:
            found.append(f"{unit} is {enabled}")
    return found


@pytest.fixture(scope="module", params=SUITES)
def downloaded(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, Path]]:
    """(suite, the root, an upper layer with the packages' lists and .debs downloaded, nothing installed)."""
    if os.geteuid() != 0:
        pytest.fail("this boot test needs root (mount namespaces, cgroups): run make test-boot as root")
    suite: str = request.param
    base = REPO / ".lab" / f"lab-packages-{os.getpid()}" / suite
    machine = Machine(suite, unpack_root(suite, base / "lower"), base / "download", f"pkgs-dl-{suite}")
    try:
        started = time.monotonic()
        machine.boot(private_network=False)
        update = machine.run("apt-get", "update", timeout=INSTALL_TIMEOUT)
        assert update.returncode == 0, update.stdout + update.stderr
        fetch = machine.run(
            "apt-get", "install", "-y", "--no-install-recommends", "--download-only", *lab_packages(),
            timeout=INSTALL_TIMEOUT,
        )  # fmt: skip
        assert fetch.returncode == 0, fetch.stdout + fetch.stderr
        assert machine.sockets() == set(), "a download-only install started something"
        machine.stop()
        print(f"\nlab packages ({suite}): downloaded in {time.monotonic() - started:.1f} s")
        yield suite, machine.lower, machine.work
    finally:
        machine.stop()
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.parent.rmdir()


def machine_from(downloaded: tuple[str, Path, Path], label: str) -> Machine:
    """A new machine on a copy of the downloaded upper layer, booted on a private network."""
    suite, lower, work = downloaded
    copy = work.parent / label
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    subprocess.run(["cp", "-a", str(work / "upper"), str(copy / "upper")], check=True, timeout=300)
    machine = Machine(suite, lower, copy, f"pkgs-{label}-{suite}")
    machine.boot(private_network=True)
    return machine


def test_the_lab_install_leaves_no_service_listening_or_enabled(downloaded: tuple[str, Path, Path]) -> None:
    machine = machine_from(downloaded, "script")
    try:
        before = machine.sockets()
        assert machine.run("test", "-e", POLICY_RC_D).returncode != 0, "the root has a policy-rc.d already"
        started = time.monotonic()
        install = machine.run(SCRIPT_IN_CONTAINER, *lab_packages(), timeout=INSTALL_TIMEOUT)
        took = time.monotonic() - started
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        for unit in SERVICE_UNITS:  # the packages are there, with their units
            assert machine.run("systemctl", "cat", unit).returncode == 0, f"{machine.suite}: no {unit}"
        assert services_left(machine, before) == []
        assert machine.run("test", "-e", POLICY_RC_D).returncode != 0, "the script left its policy-rc.d"

        # A policy-rc.d the machine already has is left as it is (the packages are installed: no change).
        own = "#!/bin/sh\n# the machine's own\nexit 0\n"
        write = machine.run("sh", "-c", f"cat > {POLICY_RC_D} && chmod 0700 {POLICY_RC_D}", input_text=own)
        assert write.returncode == 0, write.stderr
        again = machine.run(SCRIPT_IN_CONTAINER, *lab_packages(), timeout=INSTALL_TIMEOUT)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"{POLICY_RC_D} exists; left as it is" in again.stderr
        assert machine.run("stat", "-c", "%a", POLICY_RC_D).stdout.strip() == "700"
        assert machine.run("cat", POLICY_RC_D).stdout == own
        machine.run("rm", POLICY_RC_D)

        machine.stop()  # the next boot of the same disk starts nothing of them either
        machine.boot(private_network=True)
        assert services_left(machine, before) == []
        print(f"\nlab packages ({machine.suite}): install step {took:.1f} s")
    finally:
        machine.stop()


def test_broken_twin_a_plain_apt_get_install_is_caught(downloaded: tuple[str, Path, Path]) -> None:
    """The same packages without the script: the packages' services start and are enabled, and the
    check above reports them (on a private network: nothing reaches this machine's)."""
    machine = machine_from(downloaded, "plain")
    try:
        before = machine.sockets()
        install = machine.run(
            "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends",
            *lab_packages(), timeout=INSTALL_TIMEOUT,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        left = services_left(machine, before)
        for process, port in (("docker-registry", 5000), ("nginx", 80), ("slapd", 389)):
            assert any(re.fullmatch(rf"listening: {process} on \S+:{port}", p) for p in left), left
        for unit in SERVICE_UNITS:
            assert {f"{unit} is active", f"{unit} is enabled"} <= set(left), left
    finally:
        machine.stop()
