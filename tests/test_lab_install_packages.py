"""lab/install-packages.sh (make lab-packages, make test-packages): Debian packages installed without
starting their services, run against stand-ins.

`apt-get`, `dpkg-query` and `systemctl` are stand-ins first on PATH (the script runs nothing else of
the machine's packaging or init), and POLICY_RC_D and SYSTEMD_BOOTED point into a temporary directory:
the machine's own /usr/sbin/policy-rc.d, apt and systemd are never used. The stand-in apt-get records
what a maintainer script would see during the install: whether policy-rc.d exists and what it answers
(invoke-rc.d starts nothing when it exits 101). What this cannot prove: that Debian's maintainer
scripts honour policy-rc.d on a machine booted with systemd: tests/test_host_boot_lab_packages.py runs
the script with the real packages in Debian roots booted with systemd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "lab" / "install-packages.sh"
EXISTING_POLICY = "#!/bin/sh\n# the machine's own\nexit 101\n"

# Stand-in packages: the files `dpkg-query -L` lists for each.
PACKAGE_FILES = {
    "docker-registry": ["/usr/bin/docker-registry", "/lib/systemd/system/docker-registry.service"],
    "nginx-common": ["/lib/systemd/system/nginx.service", "/etc/init.d/nginx", "/usr/share/doc/nginx-common"],
    "slapd": ["/usr/sbin/slapd", "/etc/init.d/slapd", "/usr/lib/systemd/system/slapd-helper@.service"],
    "skopeo": ["/usr/bin/skopeo"],
}

APT_GET = """#!{python}
# Stand-in apt-get: records each call and what policy-rc.d answers during it; `install` adds the
# packages to the stand-in dpkg database, and the units they ship to the enabled ones (their postinst).
import json, os, subprocess, sys, time
state = {state!r}
policy = os.environ["POLICY_RC_D"]
seen = {{"argv": sys.argv[1:], "policy_exists": os.path.exists(policy)}}
if seen["policy_exists"]:
    seen["policy_executable"] = os.access(policy, os.X_OK)
    seen["policy_answer"] = subprocess.run([policy, "nginx", "start"], check=False).returncode
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps(seen) + "\\n")
if sys.argv[1:2] == ["install"]:
    if os.environ.get("FAKE_APT_SLEEP"):
        open(os.path.join(state, "installing"), "w").close()
        time.sleep(float(os.environ["FAKE_APT_SLEEP"]))
    if os.environ.get("FAKE_APT_FAIL"):
        sys.exit(100)
    packages = [a for a in sys.argv[2:] if not a.startswith("-")]
    with open(os.path.join(state, "installed"), "a") as f:
        f.write("".join(p + "\\n" for p in packages))
    with open(os.path.join(state, "enabled"), "a") as f:
        units = [u for p in packages for u in {files!r}.get(p, []) if "/systemd/" in u and "@" not in u]
        f.write("".join(os.path.basename(u) + "\\n" for u in units))
"""

DPKG_QUERY = """#!{python}
# Stand-in dpkg-query: -W lists the installed packages, -L the files of the packages named.
import os, sys
state = {state!r}
installed = open(os.path.join(state, "installed")).read().split()
if sys.argv[1] == "-W":
    print("".join(f"installed {{p}}\\n" for p in installed), end="")
elif sys.argv[1] == "-L":
    for p in sys.argv[2:]:
        print("\\n".join({files!r}[p]))
else:
    sys.exit("stand-in dpkg-query: unexpected call " + " ".join(sys.argv[1:]))
"""

SYSTEMCTL = """#!{python}
# Stand-in systemctl: is-enabled and disable over the stand-in's enabled units; records every call.
import json, os, sys
state = {state!r}
with open(os.path.join(state, "systemctl.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
path = os.path.join(state, "enabled")
enabled = open(path).read().split() if os.path.exists(path) else []
verb, unit = sys.argv[1], sys.argv[-1]
if verb == "is-enabled":
    sys.exit(0 if unit in enabled else 1)
if verb == "disable":
    open(path, "w").write("".join(u + "\\n" for u in enabled if u != unit))
    sys.exit(0)
sys.exit("stand-in systemctl: unexpected call " + " ".join(sys.argv[1:]))
"""


@dataclass
class Machine:
    """A temporary stand-in for the machine the script installs on."""

    root: Path
    policy: Path
    booted: Path  # exists: booted with systemd

    @property
    def state(self) -> Path:
        return self.root / "state"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.root / 'bin'}:/usr/bin:/bin",
            "POLICY_RC_D": str(self.policy),
            "SYSTEMD_BOOTED": str(self.booted),
            **extra,
        }

    def run(self, *packages: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *packages], env=self.env(**extra), capture_output=True, text=True, timeout=60, check=False
        )

    def apt_calls(self) -> list[dict[str, object]]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def systemctl_calls(self) -> list[list[str]]:
        path = self.state / "systemctl.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def enabled(self) -> list[str]:
        return sorted((self.state / "enabled").read_text().split())


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (state / "installed").write_text("skopeo\nnginx-common\n")  # installed before, by the user
    (state / "enabled").write_text("nginx.service\n")  # the user's own nginx
    for name, template in (("apt-get", APT_GET), ("dpkg-query", DPKG_QUERY), ("systemctl", SYSTEMCTL)):
        stand_in = bin_dir / name
        stand_in.write_text(template.format(python=sys.executable, state=str(state), files=PACKAGE_FILES))
        stand_in.chmod(0o755)
    (tmp_path / "sbin").mkdir()
    booted = tmp_path / "run-systemd-system"
    booted.mkdir()
    return Machine(tmp_path, tmp_path / "sbin" / "policy-rc.d", booted)


def test_policy_rc_d_forbids_every_start_during_the_install_and_is_removed_after(machine: Machine) -> None:
    result = machine.run("docker-registry", "slapd")
    assert result.returncode == 0, result.stderr
    update, install = machine.apt_calls()
    assert update["argv"] == ["update"]
    assert install["argv"] == ["install", "-y", "--no-install-recommends", "docker-registry", "slapd"]
    for call in (update, install):
        assert call["policy_exists"] and call["policy_executable"], f"no policy-rc.d during apt-get {call['argv']}"
        assert call["policy_answer"] == 101, "policy-rc.d must answer 101: action forbidden"
    assert not machine.policy.exists(), "the temporary policy-rc.d was left behind"


def test_an_existing_policy_rc_d_is_used_and_left_alone(machine: Machine) -> None:
    machine.policy.write_text(EXISTING_POLICY)
    machine.policy.chmod(0o750)
    result = machine.run("docker-registry")
    assert result.returncode == 0, result.stderr
    assert all(call["policy_exists"] for call in machine.apt_calls())
    assert machine.policy.read_text() == EXISTING_POLICY
    assert machine.policy.stat().st_mode & 0o777 == 0o750
    assert "exists; left as it is" in result.stderr


def test_a_failed_install_still_removes_the_policy_and_fails(machine: Machine) -> None:
    result = machine.run("docker-registry", FAKE_APT_FAIL="1")
    assert result.returncode == 100
    assert machine.apt_calls()[-1]["policy_answer"] == 101
    assert not machine.policy.exists()
    assert machine.systemctl_calls() == [], "nothing was installed: nothing to disable"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_install_removes_the_policy(machine: Machine, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [str(SCRIPT), "docker-registry"],
        env=machine.env(FAKE_APT_SLEEP="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (machine.state / "installing").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "apt-get install never started"
        time.sleep(0.05)
    assert machine.policy.exists()
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0, stderr
    assert not machine.policy.exists(), "an interrupted install left the policy behind"


def test_units_of_newly_installed_packages_are_disabled_and_the_users_are_left(machine: Machine) -> None:
    result = machine.run("docker-registry", "slapd", "skopeo")
    assert result.returncode == 0, result.stderr
    # docker-registry.service was enabled by its (stand-in) postinst: disabled again. slapd's template
    # unit is not one to disable; its init script is slapd.service, not enabled here. The user's nginx
    # (nginx-common was installed before) is not touched, not even asked about.
    assert machine.enabled() == ["nginx.service"]
    assert ["disable", "--quiet", "docker-registry.service"] in machine.systemctl_calls()
    asked = {call[-1] for call in machine.systemctl_calls()}
    assert asked == {"docker-registry.service", "slapd.service"}, asked
    assert "disabling docker-registry.service" in result.stderr


def test_without_systemd_running_no_unit_is_touched(machine: Machine) -> None:
    machine.booted.rmdir()
    result = machine.run("docker-registry")
    assert result.returncode == 0, result.stderr
    assert machine.systemctl_calls() == []
    assert machine.enabled() == ["docker-registry.service", "nginx.service"]


def test_no_package_is_a_usage_error(machine: Machine) -> None:
    result = machine.run()
    assert result.returncode == 2 and "usage:" in result.stderr
    assert machine.apt_calls() == [] and not machine.policy.exists()


@pytest.mark.lab  # needs Debian's shellcheck
def test_shellcheck_passes_the_script_with_every_default_rule() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: make test-packages installs it"
    result = subprocess.run(
        [shellcheck, "--norc", "--severity=style", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def recipe(makefile: str, target: str) -> str:
    """The recipe lines (tab-indented) right after `target:` in a Makefile."""
    lines = makefile.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        body.append(line)
    return "\n".join(body)


def test_make_installs_the_lab_packages_through_the_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    lab = recipe(makefile, "lab-packages")
    assert "lab/install-packages.sh $(LAB_PACKAGES)" in lab
    assert "apt-get" not in lab, "lab-packages must install through lab/install-packages.sh only"
    for target in ("test-packages", "boot-packages"):
        assert "apt-get install" not in recipe(makefile, target), f"{target} installs through lab/install-packages.sh"
