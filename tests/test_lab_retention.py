"""Retention against the real registry on moto S3 (issue 15's proof): it keeps exactly the newest N tags and
the protected ones, never an image's signature without the image, a digest while any kept tag names it, and
a kept multi-arch index with all its platform manifests; a deleted index goes with its platform manifests
and a deleted image with its signature. A GC after it frees exactly the blobs of what it deleted. The dev
stack's lab (token mode: the token service, the gates, moto KMS for `fleet sign`), driven through
`python -m fleet retention dev --lab` with a copy of stacks/ whose dev sets the policies below."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from fleet import cli
from fleet.gc import current_blobs, garbage_collect
from fleet.maintenance import LabFleet
from fleet.retention import lab_retention
from lab.image import build_image
from lab.lab import INSTANCES, Lab, LabState, s3_client
from signing import cosign
from tests.helpers import settings_with
from tests.helpers.lab import host, password, skopeo

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV = "team-a-developer"
APP = "team-a/app"
CI = "team-a/ci"
POLICIES = {"team-a": {"keepLast": 3, "protect": ["v*"]}, "team-a/ci": {"untaggedAfterDays": 1}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    directory = tmp_path_factory.mktemp("lab-retention")
    state = Lab(settings_with("dev", {"storage": {"retention": POLICIES}}), directory).up()
    try:
        yield state
    finally:
        Lab.down(directory)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stacks/ with dev's storage.retention replaced by POLICIES."""
    path = tmp_path_factory.mktemp("stacks") / "stacks"
    shutil.copytree(REPO_ROOT / "stacks", path)
    set_retention(path, POLICIES)
    return path


def set_retention(stacks: Path, policies: object) -> None:
    dev = stacks / "Pulumi.dev.yaml"
    doc = yaml.safe_load(dev.read_text())
    doc["config"]["registry-fleet:storage"] = {"retention": policies}
    dev.write_text(yaml.safe_dump(doc))


def fleet(lab: LabState, stacks: Path, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([*argv, "--lab", "--state-dir", lab.state_dir], out=out, err=err, stacks_dir=stacks)
    return code, out.getvalue() + err.getvalue()


def creds(lab: LabState) -> str:
    return f"{DEV}:{password(lab, DEV)}"


def put(lab: LabState, source: str, repo: str, tag: str, *all_: str) -> None:
    """Push, then wait for the next second: S3's LastModified (the push time retention reads) has whole
    seconds, and each push here must be newer than the one before."""
    argv = ["copy", "--quiet", *all_, "--dest-cert-dir", lab.cert_dir, "--dest-creds", creds(lab), source,
            f"docker://{host(lab)}/{repo}:{tag}"]  # fmt: skip
    proc = skopeo(lab, *argv)
    assert proc.returncode == 0, proc.stderr
    time.sleep(1.1)


def tags(lab: LabState, repo: str) -> set[str]:
    """The repository's tags that name a manifest. On moto the tag list keeps naming a tag whose manifest
    was deleted (a versioned bucket's ListObjectsV2 with a delimiter still lists the prefixes of keys under a
    delete marker; S3 lists current objects only), and its GET answers 404: such a tag is gone."""
    proc = skopeo(lab, "list-tags", "--cert-dir", lab.cert_dir, "--creds", creds(lab), f"docker://{host(lab)}/{repo}")
    assert proc.returncode == 0, proc.stderr
    return {t for t in json.loads(proc.stdout)["Tags"] or [] if raw(lab, repo, t) is not None}


def raw(lab: LabState, repo: str, ref: str) -> bytes | None:
    """A manifest's bytes straight from one instance (no gate), by tag or digest; None when it is gone."""
    sep = "@" if ref.startswith("sha256:") else ":"
    proc = skopeo(lab, "inspect", "--raw", "--cert-dir", lab.cert_dir, "--creds", creds(lab),
                  f"docker://{host(lab)}/{repo}{sep}{ref}")  # fmt: skip
    return proc.stdout.encode() if proc.returncode == 0 else None


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def blobs_of(lab: LabState, repo: str, digest: str) -> set[str]:
    """The blobs a manifest is in the registry: itself, its config and layers; an index's children's too."""
    body = raw(lab, repo, digest)
    assert body is not None, f"{repo}@{digest} is not there"
    doc = json.loads(body)
    out = {digest}
    for child in doc.get("manifests", []):
        out |= blobs_of(lab, repo, child["digest"])
    if "config" in doc:
        out.add(doc["config"]["digest"])
    out |= {layer["digest"] for layer in doc.get("layers", [])}
    return out


def add_index(layout: Path, tag: str, children: dict[str, str]) -> None:
    """A multi-arch index at `tag` over the layout's images tagged by `children` (architecture -> tag)."""
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    entries = [{"mediaType": by_tag[t]["mediaType"], "digest": by_tag[t]["digest"], "size": by_tag[t]["size"],
                "platform": {"architecture": arch, "os": "linux"}} for arch, t in children.items()]  # fmt: skip
    body = json.dumps({"schemaVersion": 2, "mediaType": cosign.OCI_INDEX, "manifests": entries}).encode()
    hex_digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs" / "sha256" / hex_digest).write_bytes(body)
    index["manifests"].append({"mediaType": cosign.OCI_INDEX, "digest": f"sha256:{hex_digest}", "size": len(body),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))


def test_retention_keeps_the_newest_n_the_protected_and_signatures_only_with_their_images(
    lab: LabState, stacks: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    for name in ("img1", "img2", "img3", "img4", "img5", "a-amd64", "a-arm64", "b-amd64", "b-arm64"):
        build_image(src, name, [{f"{name}.bin": 20_000}])
    add_index(src, "index-a", {"amd64": "a-amd64", "arm64": "a-arm64"})
    add_index(src, "index-b", {"amd64": "b-amd64", "arm64": "b-arm64"})
    # Oldest first; keepLast 3 counts every tag here but v1.0 (protected) and the signatures.
    put(lab, f"oci:{src}:img1", APP, "v1.0")
    put(lab, f"oci:{src}:img4", APP, "alias")  # the same digest as 4, pushed later: survives with it
    put(lab, f"oci:{src}:img2", APP, "1")
    put(lab, f"oci:{src}:index-a", APP, "multi-old", "--all")
    put(lab, f"oci:{src}:img3", APP, "2")
    put(lab, f"oci:{src}:img5", APP, "3")
    put(lab, f"oci:{src}:img4", APP, "4")
    put(lab, f"oci:{src}:index-b", APP, "multi", "--all")
    digest = {t: digest_of(raw(lab, APP, t) or b"") for t in ("v1.0", "1", "2", "3", "4", "multi-old", "multi")}
    for t in ("v1.0", "1", "4"):  # signed with the stack's KMS key, in cosign's format, beside the image
        code, out = fleet(lab, stacks, "sign", "dev", f"{APP}@{digest[t]}", "--username", DEV)
        assert code == 0, out
    sig = {t: cosign.signature_tag(digest[t]) for t in ("v1.0", "1", "4")}
    before = tags(lab, APP)
    assert before == {"v1.0", "alias", "1", "multi-old", "2", "3", "4", "multi", *sig.values()}

    deleted_manifests = [digest["1"], digest["2"], digest["multi-old"], digest_of(raw(lab, APP, sig["1"]) or b"")]
    kept_manifests = [digest[t] for t in ("v1.0", "3", "4", "multi")]
    kept_manifests += [digest_of(raw(lab, APP, sig[t]) or b"") for t in ("v1.0", "4")]
    doomed = set().union(*(blobs_of(lab, APP, d) for d in deleted_manifests))
    kept = set().union(*(blobs_of(lab, APP, d) for d in kept_manifests))
    children_a = [m["digest"] for m in json.loads(raw(lab, APP, digest["multi-old"]) or b"{}")["manifests"]]
    children_b = [m["digest"] for m in json.loads(raw(lab, APP, digest["multi"]) or b"{}")["manifests"]]

    # The dry run prints the plan and deletes nothing.
    code, out = fleet(lab, stacks, "retention", "dev", "--dry-run")
    assert code == 0, out
    assert f"delete {APP}:1 {digest['1']} (beyond keepLast 3" in out, out
    assert f"delete {APP}:{sig['1']} " in out and f"attachment of deleted {digest['1']}" in out, out
    assert f"keep   {APP}:alias {digest['4']} (same digest as kept tag 4)" in out, out
    assert "would delete 6 manifests" in out, out  # 1, 2, multi-old, its two platform manifests, 1's signature
    assert tags(lab, APP) == before

    s3 = s3_client(lab.s3_endpoint, lab.ca_file, "eu-west-1")
    blobs_before = current_blobs(s3, lab.bucket)
    code, out = fleet(lab, stacks, "retention", "dev")
    assert code == 0, out
    assert "deleted 6 manifests" in out, out
    assert tags(lab, APP) == {"v1.0", "alias", "3", "4", "multi", sig["v1.0"], sig["4"]}
    for d in (digest["1"], digest["2"], digest["multi-old"], *children_a):
        assert raw(lab, APP, d) is None, f"{d} still there"
    for d in children_b:
        assert raw(lab, APP, d) is not None, f"platform manifest {d} of the kept index lost"
    # The kept signatures still verify against the stack's key.
    for t in ("v1.0", "4"):
        code, out = fleet(lab, stacks, "verify", "dev", f"{APP}@{digest[t]}", "--username", DEV)
        assert code == 0, out
    assert current_blobs(s3, lab.bucket) == blobs_before, "retention deletes manifests; only GC frees blobs"

    # Idempotent: a second run plans nothing.
    code, out = fleet(lab, stacks, "retention", "dev")
    assert code == 0 and "deleted 0 manifests" in out, out

    # A GC after it frees exactly the blobs of what retention deleted.
    report = garbage_collect(fleet=LabFleet(Path(lab.state_dir)), stack="dev", s3=s3, bucket=lab.bucket,
                             dry_run=False, noncurrent_days=30, log=lambda line: None)  # fmt: skip
    after = current_blobs(s3, lab.bucket)
    assert set(blobs_before) - set(after) == doomed - kept, "GC freed something else than what retention deleted"
    assert report.freed_blobs == len(doomed - kept)
    assert kept <= set(after)


def test_an_interrupted_run_is_finished_by_the_next(lab: LabState, stacks: Path, tmp_path: Path) -> None:
    """Killed after deleting an image, before its signature: the next run finds the signature orphaned and
    deletes it (and nothing a kept image needs)."""
    repo = "team-a/resume"
    src = tmp_path / "src"
    for name in ("r1", "r2", "r3", "r4"):
        build_image(src, name, [{f"{name}.bin": 10_000}])
        put(lab, f"oci:{src}:{name}", repo, name)
    old = digest_of(raw(lab, repo, "r1") or b"")
    assert fleet(lab, stacks, "sign", "dev", f"{repo}@{old}", "--username", DEV)[0] == 0
    # What the run would have done first (the image), then "killed".
    url = f"/v2/{repo}/manifests/{old}"
    from retention.registry import delete, minting_client, registry_settings

    reg = registry_settings(Path(lab.state_dir) / f"{INSTANCES[0]}.yml")
    client = minting_client(
        f"https://127.0.0.1:{lab.services[INSTANCES[0]]['ports']['https']}", lab.ca_file, None,
        Path(lab.token["signing_key"]), Path(lab.token["signing_cert"]), reg["service"], reg["issuer"],
    )  # fmt: skip
    assert delete(client, repo, old), url
    assert cosign.signature_tag(old) in tags(lab, repo)
    code, out = fleet(lab, stacks, "retention", "dev")
    assert code == 0, out
    assert f"attachment of absent {old}" in out, out
    assert tags(lab, repo) == {"r2", "r3", "r4"}


def test_untagged_after_days_counts_from_when_the_tag_moved_on(lab: LabState, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("c1", "c2"):
        build_image(src, name, [{f"{name}.bin": 10_000}])
    put(lab, f"oci:{src}:c1", CI, "latest")
    first = digest_of(raw(lab, CI, "latest") or b"")
    put(lab, f"oci:{src}:c2", CI, "latest")  # c1 is untagged from now on
    policies = json.dumps(POLICIES)
    lines: list[str] = []
    lab_retention(Path(lab.state_dir), lab, INSTANCES[0], policies, False, lines.append)
    assert raw(lab, CI, first) is not None, f"deleted before it was untagged a day: {lines}"
    later = datetime.now(UTC) + timedelta(days=1, minutes=1)
    lab_retention(Path(lab.state_dir), lab, INSTANCES[0], policies, False, lines.append, now=later)
    assert raw(lab, CI, first) is None, lines
    assert any(f"delete {CI}:(untagged) {first} (untagged since" in line for line in lines), lines
    assert tags(lab, CI) == {"latest"}


def test_bad_input_changes_nothing(lab: LabState, stacks: Path, tmp_path: Path) -> None:
    before = tags(lab, APP)
    code, out = fleet(lab, stacks, "retention", "nosuch")
    assert code == 2 and "Pulumi.nosuch.yaml" in out and "Traceback" not in out, out
    for policies, says in (
        ({"team-a": {"keepLast": 0}}, "storage.retention.team-a.keepLast: 0 is outside 1..10000"),
        ({"team-z": {"keepLast": 1}}, 'storage.retention.team-z: "team-z" is not owned by any team'),
        ({"team-a": {"keepLast": 1, "protekt": ["v*"]}}, "storage.retention.team-a.protekt"),
    ):
        bad = tmp_path / f"stacks-{len(says)}"
        shutil.copytree(stacks, bad)
        set_retention(bad, policies)
        code, out = fleet(lab, bad, "retention", "dev")
        assert code == 2 and says in out and "Traceback" not in out, out
    assert tags(lab, APP) == before
