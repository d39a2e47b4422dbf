"""Point-in-time restore on moto's S3 (in process): the registry's key layout, versions and delete markers.
The same against the real registry in the lab (bit-identical pulls, a killed run resumed) is
tests/test_lab_restore.py."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fleet.restore import (
    BLOBS,
    JOURNAL_PREFIX,
    REPOSITORIES,
    Entry,
    Plan,
    RestoreError,
    apply_plan,
    at_time,
    load_journal,
    plan_restore,
    plan_undo,
    run,
)

BUCKET = "registry"
REGION = "eu-west-1"


def tag_key(repo: str, tag: str) -> str:
    return f"{REPOSITORIES}{repo}/_manifests/tags/{tag}/current/link"


def blob_key(hex_digest: str) -> str:
    return f"{BLOBS}sha256/{hex_digest[:2]}/{hex_digest}/data"


def revision_key(repo: str, hex_digest: str) -> str:
    return f"{REPOSITORIES}{repo}/_manifests/revisions/sha256/{hex_digest}/link"


def digest(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def put_image(s3: Any, repo: str, tag: str, n: int, bucket: str = BUCKET) -> None:
    s3.put_object(Bucket=bucket, Key=blob_key(digest(n)), Body=b"x" * (100 + n))
    s3.put_object(Bucket=bucket, Key=revision_key(repo, digest(n)), Body=f"sha256:{digest(n)}".encode())
    s3.put_object(Bucket=bucket, Key=tag_key(repo, tag), Body=f"sha256:{digest(n)}".encode())


def snapshot(s3: Any, bucket: str = BUCKET) -> dict[str, bytes]:
    """Every current key of the registry's root with its content."""
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="docker/")
        for o in page.get("Contents", [])
    ]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def tick() -> datetime:
    """A moment with whole seconds of S3 time on both sides (LastModified has a 1 s resolution)."""
    time.sleep(1.05)
    moment = datetime.now(UTC)
    time.sleep(1.05)
    return moment


def history_v1_then_v2(s3: Any) -> tuple[datetime, dict[str, bytes], dict[str, bytes]]:
    put_image(s3, "team-a/app", "1", 1)
    put_image(s3, "team-a/other", "1", 2)
    t = tick()
    v1 = snapshot(s3)
    put_image(s3, "team-a/app", "1", 3)  # the tag moves to a new image
    s3.delete_object(Bucket=BUCKET, Key=tag_key("team-a/other", "1"))  # a tag deleted
    s3.delete_object(Bucket=BUCKET, Key=blob_key(digest(2)))  # its blob collected
    s3.put_object(Bucket=BUCKET, Key=f"{REPOSITORIES}team-a/app/_uploads/u1/data", Body=b"scratch")
    return t, v1, snapshot(s3)


def apply(s3: Any, plan: Plan) -> None:
    apply_plan(s3, plan, lambda line: None)


def test_restore_puts_tags_back_and_undo_returns(s3: Any) -> None:
    t, v1, v2 = history_v1_then_v2(s3)
    plan = plan_restore(s3, BUCKET, t)
    tags = {c["tag"]: (c["now"], c["restored"]) for c in plan.tag_changes}
    assert tags == {
        "team-a/app:1": (f"sha256:{digest(3)}", f"sha256:{digest(1)}"),
        "team-a/other:1": ("(none)", f"sha256:{digest(2)}"),
    }
    assert plan.bytes_to_copy == sum(len(v1[a.key]) for a in plan.actions if a.copies)
    assert not any("/_uploads/" in a.key for a in plan.actions), "upload scratch files are not restored"
    apply(s3, plan)
    scratch = f"{REPOSITORIES}team-a/app/_uploads/u1/data"
    assert {k: v for k, v in snapshot(s3).items() if k != scratch} == v1
    assert plan_restore(s3, BUCKET, t).actions == [], "a second restore changes something"

    journal = load_journal(s3, BUCKET, plan.run_id)
    assert journal.status == "done" and len(journal.actions) == len(plan.actions)
    undo = plan_undo(s3, journal)
    apply(s3, undo)
    assert snapshot(s3) == v2
    assert plan_undo(s3, journal).actions == [], "a second undo changes something"
    versions = s3.list_object_versions(Bucket=BUCKET)
    assert all(v["Key"].startswith(("docker/", JOURNAL_PREFIX)) for v in versions["Versions"])


def test_undo_warns_about_keys_written_since_the_run(s3: Any) -> None:
    t, _, _ = history_v1_then_v2(s3)
    plan = plan_restore(s3, BUCKET, t)
    apply(s3, plan)
    assert plan_undo(s3, load_journal(s3, BUCKET, plan.run_id)).warnings == []
    put_image(s3, "team-a/app", "1", 4)  # a push after the restore
    warnings = plan_undo(s3, load_journal(s3, BUCKET, plan.run_id)).warnings
    assert len(warnings) == 1 and warnings[0].startswith("1 key(s) changed since run")
    assert warnings[0].endswith(tag_key("team-a/app", "1"))


def test_a_restore_deletes_no_version(s3: Any) -> None:
    t, _, _ = history_v1_then_v2(s3)
    before = {(v["Key"], v["VersionId"]) for v in s3.list_object_versions(Bucket=BUCKET)["Versions"]}
    apply(s3, plan_restore(s3, BUCKET, t))
    after = {(v["Key"], v["VersionId"]) for v in s3.list_object_versions(Bucket=BUCKET)["Versions"]}
    assert before <= after


def test_repository_scope_touches_only_that_repository_and_brings_its_blobs_back(s3: Any) -> None:
    t, v1, v2 = history_v1_then_v2(s3)
    plan = plan_restore(s3, BUCKET, t, ["team-a/other"])
    keys = {a.key for a in plan.actions}
    assert keys == {tag_key("team-a/other", "1"), blob_key(digest(2))}
    apply(s3, plan)
    now = snapshot(s3)
    assert now[tag_key("team-a/app", "1")] == v2[tag_key("team-a/app", "1")], "another repository changed"
    assert now[tag_key("team-a/other", "1")] == v1[tag_key("team-a/other", "1")]
    assert now[blob_key(digest(2))] == v1[blob_key(digest(2))]


def test_from_replica_copies_the_replicas_old_versions(s3: Any) -> None:
    s3.create_bucket(Bucket="replica", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket="replica", VersioningConfiguration={"Status": "Enabled"})
    for bucket in (BUCKET, "replica"):  # moto does not replicate: write both, as replication would
        put_image(s3, "team-a/app", "1", 1, bucket)
    t = tick()
    for bucket in (BUCKET, "replica"):
        put_image(s3, "team-a/app", "1", 3, bucket)
    # The primary lost its history (e.g. its old versions expired or were deleted):
    for v in s3.list_object_versions(Bucket=BUCKET)["Versions"]:
        if not v["IsLatest"]:
            s3.delete_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])
    lost = plan_restore(s3, BUCKET, t).tag_changes
    assert lost == [{"tag": "team-a/app:1", "now": f"sha256:{digest(3)}", "restored": "(none)"}]
    plan = plan_restore(s3, BUCKET, t, source_bucket="replica", source_s3=s3)
    apply(s3, plan)
    assert s3.get_object(Bucket=BUCKET, Key=tag_key("team-a/app", "1"))["Body"].read() == f"sha256:{digest(1)}".encode()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("future", "is in the future"),
        ("before", "before the oldest version in bucket registry"),
        ("expired", "more than storage.noncurrentVersionDays"),
        ("repository", "unknown repository team-a/nope: bucket registry has no version of it"),
        ("unversioned", "bucket plain has no versioning"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(s3: Any, case: str, message: str) -> None:
    put_image(s3, "team-a/app", "1", 1)
    now = datetime.now(UTC)
    s3.create_bucket(Bucket="plain", CreateBucketConfiguration={"LocationConstraint": REGION})
    args: dict[str, Any] = {
        "future": {"when": now + timedelta(hours=1)},
        "before": {"when": now - timedelta(days=1)},
        "expired": {"when": now - timedelta(days=40), "noncurrent_days": 30},
        "repository": {"when": now, "repositories": ["team-a/nope"]},
        "unversioned": {"when": now, "bucket": "plain"},
    }[case]
    before = s3.list_object_versions(Bucket=BUCKET)["Versions"]
    with pytest.raises(RestoreError, match=message):
        plan_restore(s3, args.pop("bucket", BUCKET), **args)
    assert s3.list_object_versions(Bucket=BUCKET)["Versions"] == before


def test_a_key_changed_within_times_second_is_flagged_not_guessed() -> None:
    t = datetime(2026, 12, 1, 12, 0, 0, 500000, tzinfo=UTC)
    old = Entry("k", "v1", t - timedelta(seconds=5), False, '"a"')
    same_second = Entry("k", "v2", t.replace(microsecond=0), False, '"b"', is_latest=True)
    assert at_time([same_second, old], t) == (None, True)
    assert at_time([old], t) == (old, False)
    marker = Entry("k", "m1", t - timedelta(seconds=2), True, is_latest=True)
    assert at_time([marker, old], t) == (None, False)
    tie = Entry("k", "v3", old.last_modified, True)
    assert at_time([tie, old], t)[1] is True, "a delete marker and a version in one second: which came last?"


def test_an_interrupted_run_resumes_and_ends_in_the_same_state(s3: Any) -> None:
    t, v1, _ = history_v1_then_v2(s3)
    lines: list[str] = []
    windows: list[str] = []

    class Window:
        def __enter__(self) -> None:
            windows.append("open")

        def __exit__(self, *exc: object) -> None:
            windows.append("error" if exc[0] else "closed")

    common: dict[str, Any] = {
        "s3": s3, "stack": "dev", "window": Window, "log": lines.append, "confirm": lambda q: True,
        "dry_run": False, "bucket": BUCKET,
    }  # fmt: skip
    params = {"to": t.isoformat(), "repositories": [], "source_bucket": BUCKET}

    def make_plan() -> Plan:
        return plan_restore(s3, BUCKET, t)

    import fleet.restore as restore

    calls = 0
    real = restore.apply_action

    def dies_after_two(client: Any, bucket: str, action: Any) -> str:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real(client, bucket, action)

    restore.apply_action = dies_after_two  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            run(make_plan=make_plan, resumable=lambda p: p.params == params, **common)
    finally:
        restore.apply_action = real  # type: ignore[assignment]
    assert windows == ["open", "error"], "the fleet must stay read-only after an interrupted run"
    (journal_obj,) = s3.list_objects_v2(Bucket=BUCKET, Prefix=JOURNAL_PREFIX)["Contents"]
    run_id = journal_obj["Key"].removeprefix(JOURNAL_PREFIX).removesuffix(".json")
    assert load_journal(s3, BUCKET, run_id).status == "running"

    with pytest.raises(RestoreError, match=f"run {run_id} .* is unfinished"):
        run(make_plan=make_plan, resumable=lambda p: False, **common)
    resumed = run(make_plan=make_plan, resumable=lambda p: p.params == params, **common)
    assert resumed is not None and resumed.run_id == run_id
    assert any(line.startswith(f"resuming run {run_id}") for line in lines)
    scratch = f"{REPOSITORIES}team-a/app/_uploads/u1/data"
    assert {k: v for k, v in snapshot(s3).items() if k != scratch} == v1
    assert load_journal(s3, BUCKET, run_id).status == "done"
    assert run(make_plan=make_plan, resumable=lambda p: p.params == params, **common) is None
    assert lines[-1] == "nothing to change"


def test_dry_run_and_no_confirmation_change_nothing(s3: Any) -> None:
    t, _, v2 = history_v1_then_v2(s3)
    lines: list[str] = []
    common: dict[str, Any] = {
        "s3": s3, "stack": "dev", "window": lambda: pytest.fail("no window for a dry run"),
        "log": lines.append, "bucket": BUCKET, "resumable": lambda p: False,
        "make_plan": lambda: plan_restore(s3, BUCKET, t),
    }  # fmt: skip
    assert run(confirm=lambda q: True, dry_run=True, **common) is None
    assert "tags:" in lines and lines[-1] == "dry run: nothing was changed"
    with pytest.raises(RestoreError, match="not confirmed"):
        run(confirm=lambda q: False, dry_run=False, **common)
    assert snapshot(s3) == v2
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=JOURNAL_PREFIX)


def test_cli_restore_needs_yes_without_a_terminal_and_names_bad_times(tmp_path: Any) -> None:
    from fleet.cli import main

    err = io.StringIO()
    assert main(["restore", "dev", "--to", "yesterday", "--lab", "--state-dir", str(tmp_path)], io.StringIO(), err)
    assert "no lab running" in err.getvalue()
    from fleet.restore import parse_time

    with pytest.raises(RestoreError, match="not an ISO 8601 time"):
        parse_time("yesterday")
    with pytest.raises(RestoreError, match="has no time zone"):
        parse_time("2026-12-01T10:00:00")
