"""The read-only switch for real: Debian's docker-registry 2.8 refuses writes with 405 in both forms the
fleet uses (the lab's rendered `storage.maintenance.readonly`, the hosts' environment override from the
drop-in line of host/maintenance.py), pulls keep working, and pushes succeed again after the window."""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.maintenance import LabFleet, read_only_window
from host.maintenance import read_only_environment_line
from lab import supervisor
from lab.image import build_image, skopeo_copy
from lab.lab import INSTANCES, Lab, LabState
from tests.helpers import settings_with
from tests.helpers.registry import REGISTRY_BINARY
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab")
    state = Lab(settings_with("dev", {}), directory).up()
    try:
        yield state
    finally:
        Lab.down(directory)


def push(state: LabState, source: str, tag: str) -> subprocess.CompletedProcess[str]:
    host = state.registry_url.removeprefix("https://")
    argv = ["skopeo", "copy", "--quiet", "--dest-cert-dir", state.cert_dir]
    argv += ["--dest-creds", f"{state.username}:{state.password}", source, f"docker://{host}/{state.sample_repo}:{tag}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_the_hosts_dropin_value_makes_the_real_registry_read_only(tmp_path: Path) -> None:
    (assignment,) = shlex.split(read_only_environment_line().removeprefix("Environment="))
    name, value = assignment.split("=", 1)
    port = supervisor.free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {tmp_path / 'data'}}}\n"
        "  maintenance:\n    uploadpurging: {enabled: true, age: 168h, interval: 24h, dryrun: false}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    import urllib.error
    import urllib.request

    def post() -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/a/blobs/uploads/", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return 0

    for env, expected in (({name: value}, 405), ({}, 202)):
        proc = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            env={"PATH": "/usr/bin:/bin", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: post() != 0, timeout=20, what="the registry answers")
            assert post() == expected, f"with {env}: POST upload answered {post()}, expected {expected}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_pushes_get_405_in_the_window_and_succeed_after_it(lab: LabState) -> None:
    host = lab.registry_url.removeprefix("https://")
    creds = f"{lab.username}:{lab.password}"
    with tempfile.TemporaryDirectory(prefix="registry-lab-") as tmp:
        before = build_image(Path(tmp) / "img", "before", [{"a.txt": 4096}])
        during = build_image(Path(tmp) / "img", "during", [{"b.txt": 4096}])
        assert push(lab, before, "before").returncode == 0
        lines: list[str] = []
        fleet = LabFleet(Path(lab.state_dir))
        with read_only_window(fleet, "dev", lines.append):
            refused = push(lab, during, "during")
            assert refused.returncode != 0
            assert "405" in refused.stderr or "Method Not Allowed" in refused.stderr, refused.stderr
            # Pulls keep working, from both instances (nginx round robin: two pulls), right after the restarts.
            for i in range(2):
                skopeo_copy(f"docker://{host}/{lab.sample_repo}:before", f"oci:{tmp}/back{i}:b", lab.cert_dir, creds)
        assert [line for line in lines if "read-only" in line] == [f"{n}: restarted read-only" for n in INSTANCES]
        for name in INSTANCES:
            assert "readonly" not in Path(lab.state_dir, f"{name}.yml").read_text()
        accepted = push(lab, during, "during")
        assert accepted.returncode == 0, accepted.stderr
