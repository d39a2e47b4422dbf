"""The restore drill against the real registry on moto S3 (issue 15's proof): push v1, note T, push v2 over
the same tag, delete another tag, restore to T: both tags pull bit-identical to v1 (manifest digests and
blob bytes); `--undo` returns to v2; a second restore changes nothing; a restore killed mid-run (SIGKILL)
leaves the fleet read-only, and the same command resumes it and ends in the same state. Every step runs
`python -m fleet restore ... --lab` in its own process, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.restore import JOURNAL_PREFIX
from lab.image import build_image, layer_digests, skopeo_copy, skopeo_digest
from lab.lab import Lab, LabState, s3_client
from tests.helpers import htpasswd_settings
from tests.helpers.registry import call
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.lab
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab")
    state = Lab(htpasswd_settings(), directory).up()
    try:
        yield state
    finally:
        Lab.down(directory)


def fleet(lab: LabState, *args: str, patch: str = "") -> subprocess.Popen[str]:
    argv = [*args, "--lab", "--state-dir", lab.state_dir]
    code = f"{patch}\nfrom fleet.cli import main\nraise SystemExit(main({argv!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def fleet_ok(lab: LabState, *args: str) -> str:
    proc = fleet(lab, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def ref(lab: LabState, repo: str, tag: str) -> str:
    return f"docker://{lab.registry_url.removeprefix('https://')}/{repo}:{tag}"


def creds(lab: LabState) -> str:
    return f"{lab.username}:{lab.password}"


def pulled(lab: LabState, tmp: Path, repo: str, tag: str, name: str) -> tuple[str, dict[str, bytes]]:
    """A tag pulled through the lab (blobs through the CDN edge): its manifest digest and layer bytes."""
    layout = tmp / name
    skopeo_copy(ref(lab, repo, tag), f"oci:{layout}:{tag}", lab.cert_dir, creds(lab))
    layers = {d: (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes() for d in layer_digests(layout, tag)}
    return skopeo_digest(f"oci:{layout}:{tag}", lab.cert_dir, None), layers


def original(layout: Path, tag: str) -> tuple[str, dict[str, bytes]]:
    layers = {d: (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes() for d in layer_digests(layout, tag)}
    return skopeo_digest(f"oci:{layout}:{tag}", "", None), layers


def tag_status(lab: LabState, repo: str, tag: str) -> int:
    url = f"{lab.registry_url}/v2/{repo}/manifests/{tag}"
    accept = "application/vnd.oci.image.manifest.v1+json"
    return call(lab.ca_file, "GET", url, headers={"Accept": accept}, basic=(lab.username, lab.password))[0]


def journals(lab: LabState) -> list[dict[str, Any]]:
    s3 = s3_client(lab.s3_endpoint, lab.ca_file, "us-east-1")
    found = s3.list_objects_v2(Bucket=lab.bucket, Prefix=JOURNAL_PREFIX).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=lab.bucket, Key=o["Key"])["Body"].read()) for o in found]


def test_restore_drill(lab: LabState, tmp_path: Path) -> None:
    app, other = f"{lab.namespace}/app", f"{lab.namespace}/other"
    src = tmp_path / "src"
    v1 = build_image(src, "v1", [{"a.bin": 300_000}, {"b.bin": 70_000}])
    keep = build_image(src, "keep", [{"c.bin": 200_000}])
    v2 = build_image(src, "v2", [{"d.bin": 250_000}])
    skopeo_copy(v1, ref(lab, app, "1"), lab.cert_dir, creds(lab))
    skopeo_copy(keep, ref(lab, other, "1"), lab.cert_dir, creds(lab))
    time.sleep(1.1)
    t = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    skopeo_copy(v2, ref(lab, app, "1"), lab.cert_dir, creds(lab))  # v2 over the same tag
    keep_digest = original(src, "keep")[0]
    status = call(
        lab.ca_file,
        "DELETE",
        f"{lab.registry_url}/v2/{other}/manifests/{keep_digest}",
        basic=(lab.username, lab.password),
    )[0]
    assert status == 202
    assert tag_status(lab, other, "1") == 404

    dry = fleet_ok(lab, "restore", "dev", "--to", t, "--dry-run")
    assert f"{app}:1: {original(src, 'v2')[0]} -> {original(src, 'v1')[0]}" in dry
    assert f"{other}:1: (none) -> {keep_digest}" in dry
    assert "dry run: nothing was changed" in dry

    out = fleet_ok(lab, "restore", "dev", "--to", t, "--yes")
    assert "registry-a: restarted read-only" in out and "registry-b: restarted read-write" in out
    run_id = next(j["run_id"] for j in journals(lab) if j["status"] == "done")
    # Both tags bit-identical to the v1 state, from both instances (two pulls: nginx round robin).
    for i in range(2):
        assert pulled(lab, tmp_path, app, "1", f"app{i}") == original(src, "v1")
        assert pulled(lab, tmp_path, other, "1", f"other{i}") == original(src, "keep")
    assert "nothing to change" in fleet_ok(lab, "restore", "dev", "--to", t, "--yes")

    fleet_ok(lab, "restore", "dev", "--undo", run_id, "--yes")
    assert pulled(lab, tmp_path, app, "1", "undone")[0] == original(src, "v2")[0]
    assert tag_status(lab, other, "1") == 404

    # Killed mid-run: one key at a time, slowly, SIGKILL once the journal shows progress.
    slow = (
        "import time, fleet.restore as r\nr.JOURNAL_EVERY_SECONDS = 0\n_real = r.apply_action\n"
        "def _slow(*a):\n    time.sleep(0.5)\n    return _real(*a)\nr.apply_action = _slow\n_plan = r.apply_plan\n"
        "r.apply_plan = lambda s3, plan, log, workers=1, apply=None: _plan(s3, plan, log, 1, apply)"
    )
    proc = fleet(lab, "restore", "dev", "--to", t, "--yes", patch=slow)

    def progressed() -> bool:
        running = [j for j in journals(lab) if j["status"] == "running"]
        return bool(running) and any(a["after"] for a in running[0]["actions"])

    wait_for(progressed, timeout=120, what="the restore's journal shows progress")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (interrupted,) = [j for j in journals(lab) if j["status"] == "running"]
    applied = sum(1 for a in interrupted["actions"] if a["after"])
    assert 0 < applied < len(interrupted["actions"]), "the kill did not land mid-run"
    # The fleet stayed read-only: a push is refused.
    refused = subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-cert-dir", lab.cert_dir, "--dest-creds", creds(lab), v2,
         ref(lab, app, "during")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and ("405" in refused.stderr or "Method Not Allowed" in refused.stderr)

    out = fleet_ok(lab, "restore", "dev", "--to", t, "--yes")
    assert f"resuming run {interrupted['run_id']}" in out
    assert pulled(lab, tmp_path, app, "1", "resumed") == original(src, "v1")
    assert pulled(lab, tmp_path, other, "1", "resumed-other") == original(src, "keep")
    assert "nothing to change" in fleet_ok(lab, "restore", "dev", "--to", t, "--yes")
    skopeo_copy(v2, ref(lab, app, "after"), lab.cert_dir, creds(lab))  # read-write again


def test_bad_input_changes_nothing(lab: LabState) -> None:
    before = s3_client(lab.s3_endpoint, lab.ca_file, "us-east-1").list_object_versions(Bucket=lab.bucket)
    for args, message in (
        (("--to", "2999-01-01T00:00:00Z"), "is in the future"),
        (("--to", "2000-01-01T00:00:00Z"), "more than storage.noncurrentVersionDays"),
        (("--to", datetime.now(UTC).isoformat(), "--repository", "nope/nothing"), "unknown repository nope/nothing"),
        (("--to", datetime.now(UTC).isoformat(), "--from-replica"), "the lab has no replica bucket"),
    ):
        proc = fleet(lab, "restore", "dev", "--yes", *args)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in out, out
        assert "Traceback" not in out
    after = s3_client(lab.s3_endpoint, lab.ca_file, "us-east-1").list_object_versions(Bucket=lab.bucket)
    assert before.get("Versions") == after.get("Versions")
    assert before.get("DeleteMarkers") == after.get("DeleteMarkers")
