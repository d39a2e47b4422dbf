"""Garbage collection against the real registry on moto S3 (issue 15's proof): the unique blobs of deleted
images are freed, blobs shared with a kept image stay, a tagged multi-arch index and all its platform
manifests survive (no --delete-untagged), a push during the window gets the read-only 405 and one after it
succeeds, and every instance answers from storage afterwards (no stale cache: a deleted blob is 404 on
each, and a re-push of the deleted image pulls back whole)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.gc import current_blobs, garbage_collect
from fleet.maintenance import LabFleet
from lab.image import build_image, layer_digests, skopeo_copy
from lab.lab import INSTANCES, Lab, LabState, s3_client
from tests.helpers import htpasswd_settings
from tests.helpers.registry import call

pytestmark = pytest.mark.lab
INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab")
    state = Lab(htpasswd_settings(), directory).up()
    try:
        yield state
    finally:
        Lab.down(directory)


def ref(lab: LabState, repo: str, tag: str) -> str:
    return f"docker://{lab.registry_url.removeprefix('https://')}/{repo}:{tag}"


def creds(lab: LabState) -> str:
    return f"{lab.username}:{lab.password}"


def descriptor(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    (m,) = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    return dict(m)


def image_blobs(layout: Path, tag: str) -> set[str]:
    """The blobs an image of an OCI layout becomes in the registry: its manifest, config and layers."""
    digest = str(descriptor(layout, tag)["digest"])
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return {digest, manifest["config"]["digest"], *layer_digests(layout, tag)}


def add_index(layout: Path, tag: str, platforms: dict[str, str]) -> list[str]:
    """A multi-arch index at `tag` over the images tagged by `platforms` (architecture -> tag)."""
    children = []
    for arch, child in platforms.items():
        d = descriptor(layout, child)
        children.append(
            {
                "mediaType": d["mediaType"],
                "digest": d["digest"],
                "size": d["size"],
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": children}).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(body)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(
        {"mediaType": INDEX, "digest": f"sha256:{digest}", "size": len(body),
         "annotations": {"org.opencontainers.image.ref.name": tag}}
    )  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    return [str(c["digest"]) for c in children]


def manifest_digest(layout: Path, tag: str) -> str:
    return str(descriptor(layout, tag)["digest"])


def blob_status(lab: LabState, instance: str, repo: str, digest: str) -> str:
    """How one instance (not the load balancer) answers a blob: served (200, or the CDN's 307) or 404."""
    state = LabState.load(Path(lab.state_dir))  # restarts change nothing here but pids; ports stay
    port = state.services[instance]["ports"]["https"]
    url = f"https://127.0.0.1:{port}/v2/{repo}/blobs/{digest}"
    status = call(lab.ca_file, "HEAD", url, basic=(lab.username, lab.password))[0]
    return "served" if status in (200, 307) else str(status)


def push(lab: LabState, source: str, repo: str, tag: str) -> subprocess.CompletedProcess[str]:
    argv = ["skopeo", "copy", "--quiet", "--dest-cert-dir", lab.cert_dir, "--dest-creds", creds(lab)]
    return subprocess.run([*argv, source, ref(lab, repo, tag)], capture_output=True, text=True, timeout=120)


def delete_manifest(lab: LabState, repo: str, digest: str) -> None:
    url = f"{lab.registry_url}/v2/{repo}/manifests/{digest}"
    assert call(lab.ca_file, "DELETE", url, basic=(lab.username, lab.password))[0] == 202


def test_gc_frees_only_unreferenced_blobs_and_keeps_every_image(lab: LabState, tmp_path: Path) -> None:
    ns = lab.namespace
    src = tmp_path / "src"
    keep = build_image(src, "keep", [{"k.bin": 150_000}])
    unique = build_image(src, "unique", [{"u.bin": 120_000}, {"v.bin": 30_000}])
    build_image(src, "amd64", [{"a.bin": 40_000}])
    build_image(src, "arm64", [{"b.bin": 50_000}])
    children = add_index(src, "multi", {"amd64": "amd64", "arm64": "arm64"})
    skopeo_copy(keep, ref(lab, f"{ns}/keep", "1"), lab.cert_dir, creds(lab))
    skopeo_copy(keep, ref(lab, f"{ns}/gone", "shared"), lab.cert_dir, creds(lab))  # shares every blob with keep
    skopeo_copy(unique, ref(lab, f"{ns}/gone", "unique"), lab.cert_dir, creds(lab))
    multi = subprocess.run(
        ["skopeo", "copy", "--all", "--quiet", "--dest-cert-dir", lab.cert_dir, "--dest-creds", creds(lab),
         f"oci:{src}:multi", ref(lab, f"{ns}/multi", "1")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr
    unique_blobs, kept_blobs = image_blobs(src, "unique"), image_blobs(src, "keep")
    multi_blobs = image_blobs(src, "amd64") | image_blobs(src, "arm64")
    delete_manifest(lab, f"{ns}/gone", manifest_digest(src, "unique"))
    delete_manifest(lab, f"{ns}/gone", manifest_digest(src, "keep"))
    # Warm every instance's blob descriptor cache with a blob GC will delete.
    victim = layer_digests(src, "unique")[0]
    assert [blob_status(lab, i, f"{ns}/gone", victim) for i in INSTANCES] == ["served", "served"]

    s3 = s3_client(lab.s3_endpoint, lab.ca_file, "us-east-1")
    before = current_blobs(s3, lab.bucket)
    fleet = LabFleet(Path(lab.state_dir))
    real_gc = fleet.garbage_collect
    during: list[subprocess.CompletedProcess[str]] = []

    def push_then_collect(dry_run: bool, log: object) -> str:
        during.append(push(lab, unique, f"{ns}/during", "1"))
        return real_gc(dry_run, log)  # type: ignore[arg-type]

    lines: list[str] = []
    dry = garbage_collect(
        fleet=fleet, stack="dev", s3=s3, bucket=lab.bucket, dry_run=True, noncurrent_days=30, log=lines.append
    )
    assert dry.freed_blobs == len(unique_blobs), lines
    assert current_blobs(s3, lab.bucket) == before, "a dry run deleted something"

    fleet.garbage_collect = push_then_collect  # type: ignore[method-assign]
    report = garbage_collect(
        fleet=fleet, stack="dev", s3=s3, bucket=lab.bucket, dry_run=False, noncurrent_days=30, log=lines.append
    )
    after = current_blobs(s3, lab.bucket)
    assert set(before) - set(after) == unique_blobs, "GC freed something else than the deleted image's own blobs"
    assert report.freed_bytes == sum(before[d] for d in unique_blobs) and report.freed_blobs == len(unique_blobs)
    assert kept_blobs | multi_blobs <= set(after)
    assert any("expires them 30 days after GC" in line or "30 days after GC" in line for line in lines), lines
    (refused,) = during
    assert refused.returncode != 0 and ("405" in refused.stderr or "Method Not Allowed" in refused.stderr), (
        refused.stderr
    )

    # No stale cache: the deleted blob is gone on every instance.
    assert [blob_status(lab, i, f"{ns}/gone", victim) for i in INSTANCES] == ["404", "404"]
    # The multi-arch index and every platform manifest survive, and pull whole.
    back = subprocess.run(
        ["skopeo", "copy", "--all", "--quiet", "--src-cert-dir", lab.cert_dir, "--src-creds", creds(lab),
         ref(lab, f"{ns}/multi", "1"), f"oci:{tmp_path}/multi:1"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    for digest in children:
        url = f"{lab.registry_url}/v2/{ns}/multi/manifests/{digest}"
        accept = "application/vnd.oci.image.manifest.v1+json"
        status = call(lab.ca_file, "GET", url, headers={"Accept": accept}, basic=(lab.username, lab.password))[0]
        assert status == 200, f"platform manifest {digest} lost"
    # Kept image whole; the deleted image pushed again pulls back whole from both instances; pushes work.
    skopeo_copy(ref(lab, f"{ns}/keep", "1"), f"oci:{tmp_path}/keep:1", lab.cert_dir, creds(lab))
    skopeo_copy(unique, ref(lab, f"{ns}/gone", "again"), lab.cert_dir, creds(lab))
    for i in range(2):
        skopeo_copy(ref(lab, f"{ns}/gone", "again"), f"oci:{tmp_path}/again{i}:1", lab.cert_dir, creds(lab))
        assert layer_digests(tmp_path / f"again{i}", "1") == layer_digests(src, "unique")
    assert [blob_status(lab, i, f"{ns}/gone", victim) for i in INSTANCES] == ["served", "served"]


def test_without_the_restart_an_instance_serves_a_collected_blob(lab: LabState, tmp_path: Path) -> None:
    """The broken twin of the restart: garbage-collect alone leaves each instance answering from its cache
    for a blob no longer in the bucket; the restart is what makes them answer 404."""
    ns = lab.namespace
    stale = build_image(tmp_path / "src", "stale", [{"s.bin": 60_000}])
    skopeo_copy(stale, ref(lab, f"{ns}/stale", "1"), lab.cert_dir, creds(lab))
    delete_manifest(lab, f"{ns}/stale", manifest_digest(tmp_path / "src", "stale"))
    victim = layer_digests(tmp_path / "src", "stale")[0]
    assert [blob_status(lab, i, f"{ns}/stale", victim) for i in INSTANCES] == ["served", "served"]
    fleet = LabFleet(Path(lab.state_dir))
    fleet.garbage_collect(False, lambda line: None)  # no window, no restart: what the fleet never does
    assert f"sha256:{victim.split(':')[1]}" not in current_blobs(
        s3_client(lab.s3_endpoint, lab.ca_file, "us-east-1"), lab.bucket
    )
    assert [blob_status(lab, i, f"{ns}/stale", victim) for i in INSTANCES] == ["served", "served"], (
        "the instances no longer cache blob descriptors: the restart after GC may no longer be needed"
    )
    fleet.restart_all(lambda line: None)
    assert [blob_status(lab, i, f"{ns}/stale", victim) for i in INSTANCES] == ["404", "404"]
