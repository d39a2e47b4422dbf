"""A registry host booted for real: the dev stack's user-data, run by cloud-init and systemd in a Debian root.

For Debian 12 and 13: a root from debootstrap (lab/host_root.py, cached under .cache/host-roots) boots
with systemd in a container (lab/nspawn.py: a private mount namespace, a read-only lower layer, the
container's capabilities only), its NoCloud seed the user-data the fleet renders for the stack, with
the lab standing in for AWS (lab/host_lab.py; its departures are listed there and in lab/overrides.py).
The host installs its packages from Debian's archive and the token service's wheels from PyPI, as a
host does.

The boots share the machine's network (the host reaches the lab on loopback): one at a time, and the
host's ports (5000-5003) must be free. Timings (boot to cloud-init done, boot to healthy) are printed
at the end of each suite's run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from auth import metrics as token_metrics
from fleet.signing import lab_target, sign
from host.cloudwatch_agent import REGISTRY_JOB, scrape_targets
from host.contract import (
    DEBUG_PORT,
    GATE_HEALTH_PATH,
    GATE_PORT,
    GATE_UNIT,
    REGISTRY_PORT,
    REGISTRY_UNIT,
    SCAN_EVENTS_PORT,
    SCAN_EVENTS_UNIT,
    SSM_AGENT_UNIT,
    TOKEN_HEALTH_PATH,
    TOKEN_INSTALL_SCRIPT_PATH,
    TOKEN_SERVICE_DIR,
    TOKEN_SERVICE_PORT,
    TOKEN_UNIT,
)
from infra.settings import load_stack_settings, protected_namespaces, signed_namespaces
from lab import nspawn
from lab.accounts import registry_token
from lab.debian_tools import debian_mirror
from lab.host_lab import HostLab, credential_headers, find_leaks, listening_sockets, unpack_root
from lab.host_root import SUITES
from lab.image import build_image, layer_digests, skopeo_copy, skopeo_digest
from lab.lab import https_get
from signing.references import ImageRef
from tests.helpers.metrics import scrape

pytestmark = [pytest.mark.lab, pytest.mark.boot]

REPO = Path(__file__).resolve().parent.parent
STACK = "dev"
# The gate runs only on a stack that protects a namespace (access.pullPolicies.*.requireSigned).
GATED = bool(protected_namespaces(load_stack_settings(STACK)))
UNITS = (REGISTRY_UNIT, TOKEN_UNIT, SSM_AGENT_UNIT, SCAN_EVENTS_UNIT, *((GATE_UNIT,) if GATED else ()))
FIRST_BOOT_TIMEOUT = 900  # apt installs from Debian's archive and pip installs from PyPI
HEALTH_TIMEOUT = 90  # after cloud-init: the units' own start
STAY_SECONDS = 10  # "stays active": the same main process, no restart, this long after healthy
# What the host listens on, by process: the registry on every address (the load balancer's target),
# its debug server on loopback, the token service on every address, and on a stack that protects a namespace
# the gate on every address. Nothing else.
EXPECTED_SOCKETS = {
    ("docker-registry", f"*:{REGISTRY_PORT}"),
    ("docker-registry", f"127.0.0.1:{DEBUG_PORT}"),
    ("python", f"0.0.0.0:{TOKEN_SERVICE_PORT}"),
    *((("python", f"0.0.0.0:{GATE_PORT}"),) if GATED else ()),
    ("python", f"127.0.0.1:{SCAN_EVENTS_PORT}"),  # the scan events forwarder: loopback only
}


@dataclass
class Booted:
    suite: str
    host_lab: HostLab
    lower: Path
    work: Path
    container: nspawn.Container
    cloud_init: subprocess.CompletedProcess[str]
    timings: dict[str, float] = field(default_factory=dict)
    machine_run_nspawn_before: bool = False

    @property
    def ca_file(self) -> str:
        assert self.host_lab.state is not None
        return self.host_lab.state.lab.ca_file

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return nspawn.run(self.container, list(argv), timeout=timeout)

    def healthy(self) -> bool:
        """The registry (its `/`, storage included), the token service and, where it runs, the gate answer on
        the host's ports."""
        registry = https_get(f"https://127.0.0.1:{REGISTRY_PORT}/", self.ca_file)
        token = https_get(f"https://127.0.0.1:{TOKEN_SERVICE_PORT}{TOKEN_HEALTH_PATH}", self.ca_file)
        gate = https_get(f"https://127.0.0.1:{GATE_PORT}{GATE_HEALTH_PATH}", self.ca_file) if GATED else 200
        return registry == 200 and token == 200 and gate == 200

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT, fail: bool = True) -> float | None:
        """Seconds from the boot's start to healthy; after `timeout`, a failure naming the units' states
        (or None when not `fail`: each test then says what it finds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return time.monotonic() - self.container.started_at
            time.sleep(0.5)
        if not fail:
            return None
        units = self.run("systemctl", "show", "-p", "Id,ActiveState,SubState,Result,ExecStartPre", *UNITS).stdout
        pytest.fail(f"{self.suite}: the host is not healthy {timeout:.0f} s after cloud-init:\n{units}")

    def units(self) -> dict[str, dict[str, str]]:
        props = "Id,ActiveState,SubState,Result,MainPID,NRestarts,ExecMainStatus,ExecStartPre"
        out = self.run("systemctl", "show", "-p", props, *UNITS).stdout
        units = {}
        for block in out.strip().split("\n\n"):
            entries: dict[str, str] = {}
            for line in block.splitlines():
                key, _, value = line.partition("=")
                entries[key] = f"{entries[key]}\n{value}" if key in entries else value
            units[entries["Id"].removesuffix(".service")] = entries
        return units

    def boot(self) -> None:
        """Boot the root (again: a reboot keeps the upper layer, as a disk keeps its files)."""
        self.machine_run_nspawn_before = Path("/run/systemd/nspawn").exists()
        self.container = nspawn.boot(self.lower, self.work, self.host_lab.host_files(), f"host-{self.suite}")
        nspawn.wait_booted(self.container, timeout=FIRST_BOOT_TIMEOUT)
        self.cloud_init = self.run("cloud-init", "status", "--wait", "--long", timeout=FIRST_BOOT_TIMEOUT)


@pytest.fixture(scope="module")
def host_lab() -> Iterator[HostLab]:
    if os.geteuid() != 0:
        pytest.fail("the boot test needs root (debootstrap, mount namespaces, cgroups): run make test-boot as root")
    busy = [p for p in (REGISTRY_PORT, DEBUG_PORT, TOKEN_SERVICE_PORT, GATE_PORT, SCAN_EVENTS_PORT) if _port_open(p)]
    if busy:
        pytest.fail(f"ports {busy} are taken on this machine: the booted host shares its network and needs them")
    state_dir = REPO / ".lab" / f"host-boot-{os.getpid()}"
    lab = HostLab(load_stack_settings(STACK), state_dir / "lab")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module", params=SUITES)
def host(request: pytest.FixtureRequest, host_lab: HostLab) -> Iterator[Booted]:
    suite: str = request.param
    assert host_lab.state is not None
    base = Path(host_lab.state_dir).parent / suite
    started = time.monotonic()
    lower = unpack_root(suite, base / "lower")
    unpacked = time.monotonic() - started
    booted = Booted(suite, host_lab, lower, base / "boot", None, None)  # type: ignore[arg-type]
    try:
        booted.boot()
        booted.timings["root unpacked (s)"] = unpacked
        booted.timings["boot to cloud-init done (s)"] = time.monotonic() - booted.container.started_at
        healthy = booted.wait_healthy(fail=False)  # not healthy: the tests below say why
        if healthy is not None:
            booted.timings["boot to healthy (s)"] = healthy
        yield booted
    finally:
        if booted.container is not None:
            nspawn.stop(booted.container)
        shutil.rmtree(base, ignore_errors=True)
        # The figures the issue asks for, on the terminal whatever -q and capture say.
        figures = ", ".join(f"{k} {v:.1f}" for k, v in booted.timings.items())
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nhost boot ({suite}): {figures}")


# --- the first boot --------------------------------------------------------------------------------------


def test_cloud_init_ends_without_error(host: Booted) -> None:
    assert host.cloud_init.returncode == 0, f"{host.suite}: cloud-init status:\n{host.cloud_init.stdout}"
    assert re.search(r"^status: done$", host.cloud_init.stdout, re.M), host.cloud_init.stdout
    status = json.loads(host.run("cloud-init", "status", "--format", "json").stdout)
    assert status.get("errors") == [], status
    failed = host.run("systemctl", "list-units", "--failed", "--plain", "--no-legend").stdout
    assert failed.strip() == "", f"{host.suite}: failed units:\n{failed}"


def test_registry_and_token_service_are_active_and_stay_active(host: Booted) -> None:
    before = host.units()
    for name in UNITS:
        unit = before[name]
        assert (unit["ActiveState"], unit["SubState"]) == ("active", "running"), (
            f"{host.suite}: {name} is {unit['ActiveState']}/{unit['SubState']} ({unit['Result']}); "
            f"ExecStartPre: {unit.get('ExecStartPre', '')}"
        )
    time.sleep(STAY_SECONDS)
    after = host.units()
    for name in UNITS:
        assert after[name]["ActiveState"] == "active", f"{host.suite}: {name} stopped: {after[name]}"
        assert after[name]["MainPID"] == before[name]["MainPID"], f"{host.suite}: {name} restarted"
        assert after[name]["NRestarts"] == "0", f"{host.suite}: {name} restarted {after[name]['NRestarts']} times"
    assert host.healthy()


def test_apt_uses_the_https_mirrors_the_user_data_names(host: Booted) -> None:
    """Debian's cloud.cfg keeps the image's sources (`preserve_sources_list: true`); the user-data turns
    that off, so apt's sources are exactly its mirrors (the roots' own are plain http, as an image's
    may be, and the hosts' egress allows only 443)."""
    named = _user_data_mirrors(host)
    assert all(uri.startswith("https://") for uri in named), named
    assert _apt_repo_uris(host.container) == named


def test_broken_twin_without_preserve_sources_list_false_apt_keeps_the_roots_sources(host: Booted) -> None:
    """The same `apt` section without `preserve_sources_list: false`, in a fresh boot of the root (its
    own network: nothing else of the user-data runs): the root's own sources stay (here this machine's
    archive, plain http), and the check above sees them."""
    assert host.host_lab.state is not None
    apt = yaml.safe_load(host.host_lab.state.user_data)["apt"]
    del apt["preserve_sources_list"]
    seed = {
        "/var/lib/cloud/seed/nocloud/meta-data": nspawn.FileSpec(b"instance-id: i-lab-apt-twin\n"),
        "/var/lib/cloud/seed/nocloud/user-data": nspawn.FileSpec(
            ("#cloud-config\n" + yaml.safe_dump({"apt": apt})).encode()
        ),
    }
    container = nspawn.boot(host.lower, host.work.parent / "apt-twin", seed, f"apt-{host.suite}", private_network=True)
    try:
        nspawn.wait_booted(container)
        done = nspawn.run(container, ["cloud-init", "status", "--wait"], timeout=300)
        assert done.returncode == 0, done.stdout
        uris = _apt_repo_uris(container)
    finally:
        nspawn.stop(container)
    assert uris != _user_data_mirrors(host)
    assert uris == {debian_mirror() + "/"}, uris  # what debootstrap wrote: the archive this machine uses


def _user_data_mirrors(host: Booted) -> set[str]:
    assert host.host_lab.state is not None
    apt = yaml.safe_load(host.host_lab.state.user_data)["apt"]
    return {apt["primary"][0]["uri"].rstrip("/") + "/", apt["security"][0]["uri"].rstrip("/") + "/"}


def _apt_repo_uris(container: nspawn.Container) -> set[str]:
    """The repositories of every index target apt's sources name (downloaded or not)."""
    proc = nspawn.run(container, ["apt-get", "indextargets", "--no-release-info", "--format", "$(REPO_URI)"])
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_the_host_listens_on_exactly_the_expected_sockets(host: Booted) -> None:
    proc = host.run("ss", "-H", "-l", "-t", "-u", "-n", "-p")
    assert proc.returncode == 0, proc.stderr
    assert listening_sockets(proc.stdout) == EXPECTED_SOCKETS, proc.stdout


def test_the_registry_answers_v2_over_tls_with_the_internal_certificate(host: Booted) -> None:
    assert host.host_lab.state is not None
    internal = ssl.PEM_cert_to_DER_cert((Path(host.host_lab.state.lab.state_dir) / "pki" / "server.crt").read_text())
    context = ssl.create_default_context(cafile=host.ca_file)
    with (
        socket.create_connection(("127.0.0.1", REGISTRY_PORT), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.getpeercert(binary_form=True) == internal
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    request = urllib.request.Request(f"https://127.0.0.1:{REGISTRY_PORT}/v2/")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, context=context, timeout=5)
    assert answer.value.code == 401
    challenge = answer.value.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{host.host_lab.state.lb_url}/auth"'), challenge


def test_the_cloudwatch_agents_targets_answer_on_the_host(host: Booted) -> None:
    """What the agent scrapes (AWS installs it through SSM; not here): each target of host/cloudwatch_agent.py at
    its own port, scheme, path and TLS name answers with the metrics the stack's agent config selects."""
    for target in scrape_targets(token_service=True):
        samples = scrape(target, host.ca_file)
        wanted = (
            {"registry_http_in_flight_requests"}
            if target.job == REGISTRY_JOB
            else set(token_metrics.METRIC_NAMES) - {token_metrics.DURATION}
        )
        assert wanted <= set(samples), (target.url, sorted(samples))


def test_a_token_is_issued_and_an_image_pushed_and_pulled_through_the_host(host: Booted, tmp_path: Path) -> None:
    state = host.host_lab.state
    assert state is not None
    lab = state.lab
    repo = f"{lab.namespace}/boot-{host.suite}"
    status, body = registry_token(
        f"{state.lb_url}/auth",
        load_stack_settings(STACK).registry_host,
        lab.ca_file,
        (lab.username, lab.password),
        [f"repository:{repo}:pull,push"],
    )
    assert status == 200 and body.get("token"), (status, body)
    source = build_image(tmp_path / "src", "1", [{"a.bin": 256 * 1024}])
    target = f"docker://{state.lb_url.removeprefix('https://')}/{repo}:1"
    creds = f"{lab.username}:{lab.password}"
    skopeo_copy(source, target, lab.cert_dir, creds)
    skopeo_copy(target, f"oci:{tmp_path / 'back'}:1", lab.cert_dir, creds)
    assert layer_digests(tmp_path / "back", "1") == layer_digests(tmp_path / "src", "1")
    assert skopeo_digest(target, lab.cert_dir, creds) == skopeo_digest(f"oci:{tmp_path / 'back'}:1", "", None)
    # The push's event went to the forwarder over TLS: the registry trusts its certificate (the internal CA,
    # SSL_CERT_DIR) and the endpoint loaded from the environment (what the forwarder does with it is its own).
    time.sleep(3)
    log = host.run("journalctl", "--no-pager", "-o", "cat", "-u", REGISTRY_UNIT).stdout
    assert "configuring endpoint scan-events (https://127.0.0.1:5004/events)" in log  # masked, not dropped
    assert not [line for line in log.splitlines() if "x509" in line or "certificate" in line.lower()], log[-2000:]


def test_the_hosts_gate_refuses_an_unsigned_pull_and_serves_the_signed_one(host: Booted, tmp_path: Path) -> None:
    """Through the stand-in load balancer, which sends the protected namespace's manifest reads to the host's
    gate (port GATE_PORT) as the ALB does: skopeo's pull of an unsigned image is refused (DENIED, by tag and by
    digest), the gate's audit line is in the host's journal; signed with the lab's KMS key (the key whose
    public half the user-data gave the gate), the same pull is served."""
    if not GATED:
        pytest.fail(f"stack {STACK} protects no namespace: the host runs no gate to test")
    state = host.host_lab.state
    assert state is not None and state.lab.signing, "the lab made no signing key"
    lab = state.lab
    signed = signed_namespaces(load_stack_settings(STACK))  # not the scan-blocking ones the gate also sees
    (namespace,) = [ns for ns in lab.signing["namespaces"] if ns.startswith(lab.namespace + "/") and ns in signed]
    repo = f"{namespace}/boot-{host.suite}"
    lb_host = state.lb_url.removeprefix("https://")
    creds = f"{lab.username}:{lab.password}"
    source = build_image(tmp_path / "src", "1", [{"a.bin": 64 * 1024}])
    skopeo_copy(source, f"docker://{lb_host}/{repo}:1", lab.cert_dir, creds)
    digest = skopeo_digest(source, "", None)
    for ref in (f"{repo}:1", f"{repo}@{digest}"):
        with pytest.raises(RuntimeError) as refused:
            skopeo_copy(f"docker://{lb_host}/{ref}", f"oci:{tmp_path / 'refused'}:1", lab.cert_dir, creds)
        assert "denied" in str(refused.value) and f"{repo}@{digest}: no valid signature" in str(refused.value)
    audit = host.run("journalctl", "--no-pager", "-o", "cat", "-u", GATE_UNIT).stdout
    assert [line for line in audit.splitlines() if '"pull_refused"' in line and digest in line], audit[-2000:]

    target = dataclasses.replace(lab_target(lab, None), registry_url=state.lb_url, registry_host=lb_host)
    assert sign(target, ImageRef(repo, "1", None), recursive=True, out=io.StringIO()) == [digest]
    skopeo_copy(f"docker://{lb_host}/{repo}:1", f"oci:{tmp_path / 'back'}:1", lab.cert_dir, creds)
    assert skopeo_digest(f"oci:{tmp_path / 'back'}:1", "", None) == digest
    assert skopeo_digest(f"docker://{lb_host}/{repo}@{digest}", lab.cert_dir, creds) == digest


def test_no_secret_value_in_user_data_cloud_init_logs_or_journal(host: Booted) -> None:
    state = host.host_lab.state
    assert state is not None
    texts = {"user-data": state.user_data}
    for log in ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log"):
        texts[log] = host.run("cat", log).stdout
        assert texts[log], f"{host.suite}: {log} is empty or missing"
    journal = host.run("journalctl", "--no-pager", "-o", "cat", timeout=300)
    assert journal.returncode == 0 and journal.stdout, journal.stderr
    texts["the journal"] = journal.stdout
    # The registry logs each notification endpoint's headers at start, the scan events bearer among them: it runs
    # through host/log_redact.py, which masks it before the journal, on both releases (systemd 252 has no
    # LogFilterPatterns=).
    assert find_leaks(texts, state.secret_values) == []
    registry_log = host.run("journalctl", "--no-pager", "-o", "cat", "-u", REGISTRY_UNIT).stdout
    assert "listening on" in registry_log
    assert credential_headers(registry_log) == []
    endpoint = [line for line in registry_log.splitlines() if "configuring endpoint scan-events" in line]
    assert endpoint and all("Authorization:[Bearer [masked]]" in line for line in endpoint), endpoint


def test_the_install_script_changes_nothing_when_run_again(host: Booted) -> None:
    def snapshot() -> str:
        # Files: size, mode, owner, mtime (a reinstall would rewrite them); directories: mode and owner
        # (the install directory's mtime moves: `current` is re-linked atomically, to the same release);
        # links: their target.
        listing = (
            f"find {TOKEN_SERVICE_DIR} -type f -printf '%p f %s %m %u:%g %T@\\n'"
            " -o -type d -printf '%p d %m %u:%g\\n' -o -type l -printf '%p -> %l\\n'"
        )
        out = host.run("sh", "-c", f"{listing} | sort; getent passwd registry-token; getent group registry-token")
        assert out.returncode == 0, out.stderr
        return out.stdout

    before = snapshot()
    rerun = host.run(TOKEN_INSTALL_SCRIPT_PATH, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot() == before
    assert host.healthy()


def test_isolation_the_container_cannot_change_the_machine(host: Booted) -> None:
    machine_lo = Path("/sys/class/net/lo/operstate").read_text()
    proc = host.run("ip", "link", "set", "lo", "down")
    assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc
    assert Path("/sys/class/net/lo/operstate").read_text() == machine_lo
    leader = host.container.leader()
    assert _capabilities(leader) == _capabilities(_nsenter_child(host)), "nsenter kept more than the container's"
    merged = str(host.work / "merged")
    assert merged not in Path("/proc/self/mounts").read_text(), "the container's root is mounted on the machine"
    assert Path("/run/systemd/nspawn").exists() == host.machine_run_nspawn_before


def _capabilities(pid: int | str) -> int:
    status = Path(f"/proc/{pid}/status").read_text() if isinstance(pid, int) else pid
    match = re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M)
    assert match, status
    return int(match.group(1), 16)


def _nsenter_child(host: Booted) -> str:
    return host.run("cat", "/proc/self/status").stdout


# --- after the first boot: restart, reboot ------------------------------------------------------------------


def test_everything_comes_back_after_a_restart_of_the_units_and_a_reboot(host: Booted) -> None:
    gate = (GATE_UNIT,) if GATED else ()
    restart = host.run("systemctl", "restart", REGISTRY_UNIT, TOKEN_UNIT, SCAN_EVENTS_UNIT, *gate, timeout=300)
    assert restart.returncode == 0, restart.stderr
    host.wait_healthy()
    cgroups = host.container.cgroups
    nspawn.stop(host.container)
    assert not any(c.exists() for c in cgroups), "the container's cgroups were left behind"
    host.boot()
    assert host.cloud_init.returncode == 0, host.cloud_init.stdout
    host.timings["reboot to healthy (s)"] = host.wait_healthy() or 0.0
    units = host.units()
    for name in UNITS:
        assert units[name]["ActiveState"] == "active", f"{host.suite}: {name} after the reboot: {units[name]}"
    proc = host.run("ss", "-H", "-l", "-t", "-u", "-n", "-p")
    assert listening_sockets(proc.stdout) == EXPECTED_SOCKETS, proc.stdout


def test_a_stop_that_hangs_kills_the_containers_pid_1(host: Booted) -> None:
    """A container whose systemd does not answer the power-off (here: stopped with SIGSTOP) is killed
    after the stop's timeout, and its cgroups go with it."""
    seed = {
        "/var/lib/cloud/seed/nocloud/meta-data": nspawn.FileSpec(b"instance-id: i-lab-hang\n"),
        "/var/lib/cloud/seed/nocloud/user-data": nspawn.FileSpec(b"#cloud-config\n{}\n"),
    }
    container = nspawn.boot(host.lower, host.work.parent / "hang", seed, f"hang-{host.suite}")
    try:
        nspawn.wait_booted(container)
        os.kill(container.leader(), signal.SIGSTOP)
        started = time.monotonic()
        nspawn.stop(container, timeout=3)
        took = time.monotonic() - started
    finally:
        nspawn.stop(container, timeout=3)
    assert container.launcher.returncode is not None, "nspawn still runs"
    assert took < 30, f"the stop took {took:.0f} s"
    assert not any(c.exists() for c in container.cgroups), "the container's cgroups were left behind"
