"""Point-in-time restore of the registry's storage from S3 object versions (practice 10).

`plan_restore` reads the bucket's version history and works out, key by key, what the registry's storage
(or some repositories' part of it) was at TIME; `apply_plan` puts it back by copying old versions forward
(`copy_object` with `VersionId`) and writing delete markers over what appeared later. No version is ever
deleted, so a restore is itself reversible: every run writes a journal with what each key was before and
what it was set to, and `plan_undo` builds the run that puts every key back.

Facts this is built on (measured on moto, docs/backups.md):
  - LastModified has a 1 s resolution: a key with an entry in TIME's own second cannot be placed before or
    after TIME. Such keys are named and the restore refused: pick a TIME a second earlier or later.
  - Versions are compared by content, never by version id: under `blobs/` the key is the content's digest
    (present or not is all that matters); other keys (links: a digest in a few bytes) by ETag, and where
    ETags differ (SSE-KMS ETags are not content hashes) by their bytes when they are small.
  - Upload scratch files (`_uploads/`) are never touched: they are not part of any image.

The journal lives in the same bucket, under JOURNAL_PREFIX, outside the registry's `docker/` root (the
registry never reads it, CloudFront's grant covers only blobs): so it is versioned and replicated like the
data it describes, survives the machine that ran the restore, and is found by whoever runs `--undo` or
resumes an interrupted run.

Resumable: a run's journal says `running` until it is done. Running the same restore again finds it and
carries on with the actions not yet applied (each action checks the key's current state first, so an
action applied before the interruption is not applied twice). Idempotent: a restore whose keys already
match TIME plans nothing and changes nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

REGISTRY_ROOT = "docker/registry/v2/"
REPOSITORIES = f"{REGISTRY_ROOT}repositories/"
BLOBS = f"{REGISTRY_ROOT}blobs/"
JOURNAL_PREFIX = "registry-fleet/restore-journal/"
TAG_LINK = re.compile(rf"^{REPOSITORIES}(?P<repo>.+)/_manifests/tags/(?P<tag>[^/]+)/current/link$")
REVISION_LINK = re.compile(
    rf"^{REPOSITORIES}(?P<repo>.+)/_manifests/revisions/(?P<algo>[a-z0-9]+)/(?P<hex>[a-f0-9]+)/link$"
)
LAYER_LINK = re.compile(rf"^{REPOSITORIES}(?P<repo>.+)/_layers/(?P<algo>[a-z0-9]+)/(?P<hex>[a-f0-9]+)/link$")
REPO_OF = re.compile(rf"^{REPOSITORIES}(?P<repo>.+?)/_(manifests|layers|uploads)/")
# Keys outside blobs/ are links (a digest in 71 bytes): those whose ETags differ are compared by their bytes.
SMALL_OBJECT_BYTES = 4096
MAX_COPY_OBJECT_BYTES = 5 * 1024**3  # above this, a managed multipart copy
WORKERS = 16
JOURNAL_EVERY_SECONDS = 2.0


class RestoreError(Exception):
    """A restore that must not start (bad input, an ambiguous TIME) or cannot go on; nothing was changed
    unless the message says so."""


# --- history ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One version or delete marker of a key."""

    key: str
    version_id: str
    last_modified: datetime
    deleted: bool
    etag: str = ""
    size: int = 0
    is_latest: bool = False


def read_history(s3: Any, bucket: str, prefix: str) -> dict[str, list[Entry]]:
    """Every key under `prefix` with its entries, newest first (upload scratch files left out)."""
    history: dict[str, list[Entry]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            history.setdefault(v["Key"], []).append(
                Entry(v["Key"], v["VersionId"], v["LastModified"], False, v["ETag"], int(v["Size"]), v["IsLatest"])
            )
        for m in page.get("DeleteMarkers", []):
            history.setdefault(m["Key"], []).append(
                Entry(m["Key"], m["VersionId"], m["LastModified"], True, is_latest=m["IsLatest"])
            )
    for entries in history.values():
        entries.sort(key=lambda e: (e.last_modified, e.is_latest), reverse=True)
    return {k: v for k, v in history.items() if "/_uploads/" not in k}


def current(entries: list[Entry]) -> Entry | None:
    """The key's current entry (None: absent or a delete marker on top)."""
    latest = next((e for e in entries if e.is_latest), None)
    return None if latest is None or latest.deleted else latest


def second(moment: datetime) -> int:
    return int(moment.timestamp() // 1)


def at_time(entries: list[Entry], when: datetime) -> tuple[Entry | None, bool]:
    """The key's entry at `when` (None: absent) and whether that cannot be told (an entry in `when`'s
    second, or two different entries in the same second as the newest before it)."""
    t = second(when)
    if any(second(e.last_modified) == t for e in entries):
        return None, True
    before = [e for e in entries if second(e.last_modified) < t]
    if not before:
        return None, False
    newest = before[0]
    ties = [e for e in before[1:] if second(e.last_modified) == second(newest.last_modified)]
    if any(e.deleted != newest.deleted or e.etag != newest.etag for e in ties):
        return None, True
    return (None if newest.deleted else newest), False


# --- plans --------------------------------------------------------------------------------------


@dataclass
class KeyState:
    """A key's state: absent, or a version (of `bucket`) with its ETag and size."""

    version_id: str | None = None
    etag: str = ""
    size: int = 0
    bucket: str = ""

    @property
    def present(self) -> bool:
        return self.version_id is not None

    @classmethod
    def of(cls, entry: Entry | None, bucket: str) -> KeyState:
        return cls() if entry is None else cls(entry.version_id, entry.etag, entry.size, bucket)


@dataclass
class Action:
    """Set `key` from `before` to `target`: copy `target`'s version forward, or a delete marker."""

    key: str
    before: KeyState
    target: KeyState
    after: str | None = None  # the version id (or delete marker id) the action wrote

    @property
    def copies(self) -> bool:
        return self.target.present


@dataclass
class Plan:
    run_id: str
    kind: str  # "restore" or "undo"
    bucket: str  # where keys are written
    params: dict[str, Any]  # what identifies the run (for resuming: the same command again)
    actions: list[Action] = field(default_factory=list)
    status: str = "planned"  # planned -> running -> done
    created: str = ""
    finished: str = ""
    tag_changes: list[dict[str, str]] = field(default_factory=list)
    manifest_changes: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_to_copy(self) -> int:
        return sum(a.target.size for a in self.actions if a.copies and a.after is None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        doc = json.loads(text)
        doc["actions"] = [
            Action(a["key"], KeyState(**a["before"]), KeyState(**a["target"]), a.get("after")) for a in doc["actions"]
        ]
        return cls(**doc)


def new_run_id(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise RestoreError(f"--to {text!r} is not an ISO 8601 time; use e.g. 2026-12-01T14:30:00Z") from None
    if when.tzinfo is None:
        raise RestoreError(f"--to {text!r} has no time zone; add one, e.g. {text}Z for UTC")
    return when.astimezone(UTC)


def check_versioning(s3: Any, bucket: str) -> None:
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status != "Enabled":
        raise RestoreError(
            f"bucket {bucket} has no versioning (status: {status or 'never enabled'}): there are no old versions "
            "to restore from; nothing was changed. Restore from AWS Backup instead (docs/backups.md)."
        )


def repositories_in(history: dict[str, list[Entry]]) -> set[str]:
    return {m["repo"] for key in history if (m := REPO_OF.match(key))}


def plan_restore(
    s3: Any,
    bucket: str,
    when: datetime,
    repositories: Iterable[str] = (),
    source_bucket: str | None = None,
    source_s3: Any = None,
    now: datetime | None = None,
    noncurrent_days: int | None = None,
) -> Plan:
    """What a restore of `bucket` to `when` would do; reads only. `source_bucket` (the replica): take the
    old versions from there. Raises RestoreError on bad input, naming it."""
    now = now or datetime.now(UTC)
    repositories = sorted(set(repositories))
    source_bucket = source_bucket or bucket
    source_s3 = source_s3 or s3
    if when > now:
        raise RestoreError(f"--to {when.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})")
    if noncurrent_days is not None and when < now - timedelta(days=noncurrent_days):
        raise RestoreError(
            f"--to {when.isoformat()} is more than storage.noncurrentVersionDays ({noncurrent_days}) days ago: "
            "versions made noncurrent since have expired, so the storage of that time is gone from the bucket; "
            "restore from AWS Backup instead (docs/backups.md)"
        )
    check_versioning(s3, bucket)
    if source_bucket != bucket:
        check_versioning(source_s3, source_bucket)

    prefixes = [f"{REPOSITORIES}{r}/" for r in repositories] or [REGISTRY_ROOT]
    source = {k: v for p in prefixes for k, v in read_history(source_s3, source_bucket, p).items()}
    dest = (
        source if source_bucket == bucket else {k: v for p in prefixes for k, v in read_history(s3, bucket, p).items()}
    )
    if repositories:
        known = repositories_in(source)
        unknown = [r for r in repositories if r not in known]
        if unknown:
            everything = repositories_in(read_history(source_s3, source_bucket, REPOSITORIES))
            listed = ", ".join(sorted(everything)[:20]) or "none"
            raise RestoreError(
                f"unknown repository {', '.join(unknown)}: bucket {source_bucket} has no version of it "
                f"(repositories it has: {listed}); nothing was changed"
            )
    oldest = min((e.last_modified for entries in source.values() for e in entries), default=None)
    if oldest is None or when < oldest:
        raise RestoreError(
            f"--to {when.isoformat()} is before the oldest version in bucket {source_bucket} "
            f"({oldest.isoformat() if oldest else 'it holds none'}): versioning began (or its versions expired) "
            "after that time; nothing was changed"
        )

    targets: dict[str, KeyState] = {}
    ambiguous = []
    for key, entries in source.items():
        entry, unclear = at_time(entries, when)
        if unclear:
            ambiguous.append(key)
        targets[key] = KeyState.of(entry, source_bucket)
    if ambiguous:
        shown = "\n  ".join(sorted(ambiguous)[:20])
        raise RestoreError(
            f"{len(ambiguous)} key(s) changed within the second of --to {when.isoformat()} (S3 times have a "
            f"1 s resolution: whether before or after TIME cannot be told); choose a TIME one second earlier "
            f"or later. Nothing was changed.\n  {shown}"
        )
    for key in dest:  # keys that appeared in the destination only (never in the source's history)
        targets.setdefault(key, KeyState())
    if repositories:
        # Blobs the restored repositories reference at TIME: brought back if they are gone, never deleted
        # (other repositories may share them).
        blobs = read_history(source_s3, source_bucket, BLOBS)
        dest_blobs = blobs if source_bucket == bucket else read_history(s3, bucket, BLOBS)
        for key, state in list(targets.items()):
            m = LAYER_LINK.match(key) or REVISION_LINK.match(key)
            if m is None or not state.present:
                continue
            blob = f"{BLOBS}{m['algo']}/{m['hex'][:2]}/{m['hex']}/data"
            entry, _ = at_time(blobs.get(blob, []), when)
            if entry is not None and current(dest_blobs.get(blob, [])) is None:
                targets[blob] = KeyState.of(entry, source_bucket)
                dest.setdefault(blob, dest_blobs.get(blob, []))

    pairs = [(key, KeyState.of(current(dest.get(key, [])), bucket), targets[key]) for key in sorted(targets)]
    actions = [
        Action(key, before, target)
        for (key, before, target), equal in zip(pairs, compare_all(pairs, s3, source_s3), strict=True)
        if not equal
    ]
    run = now.astimezone(UTC)
    plan = Plan(
        run_id=new_run_id(run),
        kind="restore",
        bucket=bucket,
        params={"to": when.isoformat(), "repositories": repositories, "source_bucket": source_bucket},
        actions=actions,
        created=run.isoformat(timespec="seconds"),
    )
    describe_changes(plan, s3, source_s3)
    return plan


def same_state(key: str, a: KeyState, b: KeyState, s3: Any, source_s3: Any) -> bool:
    if a.present != b.present:
        return False
    if not a.present or key.startswith(BLOBS) or a.etag == b.etag:
        return True
    if a.size != b.size or a.size > SMALL_OBJECT_BYTES:
        return False
    return read_key(s3 if a.bucket != b.bucket else source_s3, key, a) == read_key(source_s3, key, b)


def compare_all(pairs: list[tuple[str, KeyState, KeyState]], s3: Any, source_s3: Any) -> list[bool]:
    """same_state for each (key, a, b), in parallel (the comparisons that read bytes are one GET each)."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda p: same_state(p[0], p[1], p[2], s3, source_s3), pairs))


def read_key(s3: Any, key: str, state: KeyState) -> bytes:
    body: bytes = s3.get_object(Bucket=state.bucket, Key=key, VersionId=state.version_id)["Body"].read()
    return body


def describe_changes(plan: Plan, s3: Any, source_s3: Any) -> None:
    """Fill the plan's tag and manifest changes (what the diff shows): a tag's link holds its digest."""

    def digest(key: str, state: KeyState) -> str:
        if not state.present:
            return "(none)"
        client = s3 if state.bucket == plan.bucket else source_s3
        return read_key(client, key, state).decode(errors="replace").strip()

    for a in plan.actions:
        if m := TAG_LINK.match(a.key):
            plan.tag_changes.append(
                {"tag": f"{m['repo']}:{m['tag']}", "now": digest(a.key, a.before), "restored": digest(a.key, a.target)}
            )
        elif m := REVISION_LINK.match(a.key):
            plan.manifest_changes.append(
                {"manifest": f"{m['repo']}@{m['algo']}:{m['hex']}", "change": "back" if a.target.present else "gone"}
            )


def plan_undo(s3: Any, journal: Plan, now: datetime | None = None) -> Plan:
    """The run that puts every key of `journal` back to its state before that run."""
    run = (now or datetime.now(UTC)).astimezone(UTC)
    history = read_history(s3, journal.bucket, REGISTRY_ROOT)
    latest = {a.key: KeyState.of(current(history.get(a.key, [])), journal.bucket) for a in journal.actions}
    pairs = [(a.key, latest[a.key], a.before) for a in journal.actions]
    actions = [
        Action(key, now, before)
        for (key, now, before), equal in zip(pairs, compare_all(pairs, s3, s3), strict=True)
        if not equal
    ]
    # Keys written again since that run (a push, another restore): the undo puts them back all the same.
    newest = {k: next((e.version_id for e in v if e.is_latest), None) for k, v in history.items()}
    moved = [
        a.key for a in journal.actions if a.after not in (None, "applied", "already") and a.after != newest.get(a.key)
    ]
    plan = Plan(
        run_id=new_run_id(run),
        kind="undo",
        bucket=journal.bucket,
        params={"undo": journal.run_id},
        actions=actions,
        created=run.isoformat(timespec="seconds"),
        warnings=[
            f"{len(moved)} key(s) changed since run {journal.run_id} and will be put back to their state "
            f"before it too, e.g. {', '.join(moved[:3])}"
        ]
        if moved
        else [],
    )
    describe_changes(plan, s3, s3)
    return plan


# --- the journal --------------------------------------------------------------------------------


def journal_key(run_id: str) -> str:
    return f"{JOURNAL_PREFIX}{run_id}.json"


def save_journal(s3: Any, plan: Plan) -> None:
    s3.put_object(
        Bucket=plan.bucket, Key=journal_key(plan.run_id), Body=plan.to_json().encode(), ContentType="application/json"
    )


def load_journal(s3: Any, bucket: str, run_id: str) -> Plan:
    from botocore.exceptions import ClientError

    if not re.fullmatch(r"[0-9TZ]+-[0-9a-f]+", run_id):
        raise RestoreError(f"{run_id!r} is not a restore run id (e.g. 20261201T143000Z-1a2b3c)")
    try:
        body = s3.get_object(Bucket=bucket, Key=journal_key(run_id))["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise RestoreError(f"no restore run {run_id} in bucket {bucket} ({journal_key(run_id)})") from None
        raise
    return Plan.from_json(body.decode())


def unfinished_runs(s3: Any, bucket: str) -> list[Plan]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=JOURNAL_PREFIX):
        for obj in page.get("Contents", []):
            run_id = obj["Key"].removeprefix(JOURNAL_PREFIX).removesuffix(".json")
            plan = load_journal(s3, bucket, run_id)
            if plan.status != "done":
                found.append(plan)
    return found


# --- applying -----------------------------------------------------------------------------------


def apply_action(s3: Any, bucket: str, action: Action) -> str:
    """One key set to its target; the version id (or delete marker id) written."""
    if action.target.present:
        source = {"Bucket": action.target.bucket, "Key": action.key, "VersionId": action.target.version_id}
        if action.target.size > MAX_COPY_OBJECT_BYTES:
            s3.copy(source, bucket, action.key)
            return str(s3.head_object(Bucket=bucket, Key=action.key).get("VersionId", ""))
        return str(s3.copy_object(Bucket=bucket, Key=action.key, CopySource=source).get("VersionId", ""))
    return str(s3.delete_object(Bucket=bucket, Key=action.key).get("VersionId", ""))


def apply_plan(
    s3: Any,
    plan: Plan,
    log: Callable[[str], None],
    workers: int = WORKERS,
    apply: Callable[[Any, str, Action], str] | None = None,
) -> None:
    """Apply every action not yet applied, in parallel, saving the journal as it goes; the journal says
    `running` until the last action is done."""
    plan.status = "running"
    save_journal(s3, plan)
    pending = [a for a in plan.actions if a.after is None]
    last_save = time.monotonic()
    started = time.monotonic()
    done = 0

    write = apply or apply_action

    def one(action: Action) -> Action:
        action.after = write(s3, plan.bucket, action) or "applied"
        return action

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in pool.map(one, pending):
            done += 1
            if time.monotonic() - last_save > JOURNAL_EVERY_SECONDS:
                save_journal(s3, plan)
                last_save = time.monotonic()
                log(f"  {done}/{len(pending)} keys")
    except BaseException:
        # Stop handing out actions, let the ones under way finish, and record them (status stays running).
        pool.shutdown(wait=True, cancel_futures=True)
        save_journal(s3, plan)
        raise
    pool.shutdown()
    plan.status = "done"
    plan.finished = datetime.now(UTC).isoformat(timespec="seconds")
    save_journal(s3, plan)
    log(f"applied {done} key(s) in {time.monotonic() - started:.1f}s")


def diff_lines(plan: Plan) -> list[str]:
    copies = [a for a in plan.actions if a.copies]
    markers = len(plan.actions) - len(copies)
    what = f"undo of run {plan.params['undo']}" if plan.kind == "undo" else f"restore to {plan.params['to']}"
    lines = [
        f"{what} in bucket {plan.bucket}: {len(plan.actions)} key(s) change: {len(copies)} old version(s) "
        f"copied forward ({plan.bytes_to_copy} bytes), {markers} delete marker(s) over what appeared later"
    ]
    lines += [f"WARNING: {w}" for w in plan.warnings]
    if plan.tag_changes:
        lines.append("tags:")
        lines += [f"  {c['tag']}: {c['now']} -> {c['restored']}" for c in plan.tag_changes]
    if plan.manifest_changes:
        lines.append("manifests:")
        lines += [f"  {c['manifest']}: {c['change']}" for c in plan.manifest_changes]
    blobs = [a for a in plan.actions if a.key.startswith(BLOBS)]
    if blobs:
        lines.append(
            f"blobs: {sum(1 for a in blobs if a.copies)} back, {sum(1 for a in blobs if not a.copies)} gone "
            f"({sum(a.target.size for a in blobs if a.copies)} bytes back)"
        )
    return lines


# --- a whole run: resume, diff, confirm, read-only window -----------------------------------------


def settle_applied(s3: Any, plan: Plan) -> int:
    """Before resuming: mark the actions that were applied but not yet journaled when the run stopped
    (the key already holds its target), so none is applied twice. Returns how many were already done."""
    history = read_history(s3, plan.bucket, REGISTRY_ROOT)
    pending = [a for a in plan.actions if a.after is None]
    pairs = [(a.key, KeyState.of(current(history.get(a.key, [])), plan.bucket), a.target) for a in pending]
    for a, (_, now, _), equal in zip(pending, pairs, compare_all(pairs, s3, s3), strict=True):
        if equal:
            a.after = now.version_id or "already"
    return sum(1 for a in plan.actions if a.after is not None)


def _resume_or_refuse(s3: Any, bucket: str, matches: Callable[[Plan], bool]) -> Plan | None:
    unfinished = unfinished_runs(s3, bucket)
    for plan in unfinished:
        if matches(plan):
            return plan
    if unfinished:
        u = unfinished[0]
        what = f"undo of {u.params['undo']}" if u.kind == "undo" else f"restore to {u.params['to']}"
        raise RestoreError(
            f"run {u.run_id} ({what}) is unfinished: run the same command again to finish it, or put it back "
            f"with --undo {u.run_id}; nothing was changed"
        )
    return None


def run(
    *,
    s3: Any,
    stack: str,
    make_plan: Callable[[], Plan],
    resumable: Callable[[Plan], bool],
    window: Callable[[], Any],
    log: Callable[[str], None],
    confirm: Callable[[str], bool],
    dry_run: bool,
    bucket: str,
) -> Plan | None:
    """Resume an interrupted run of the same command, or plan, show the diff, confirm and apply inside the
    fleet's read-only window (every instance restarted at its end). Returns the run applied, if any."""
    resumed = _resume_or_refuse(s3, bucket, resumable)
    if resumed is not None:
        settled = settle_applied(s3, resumed)
        log(f"resuming run {resumed.run_id}: {settled} of {len(resumed.actions)} key(s) were already applied")
        if dry_run:
            return None
        with window():
            apply_plan(s3, resumed, log)
        log(f"done; undo with: python -m fleet restore {stack} --undo {resumed.run_id}")
        return resumed
    plan = make_plan()
    for line in diff_lines(plan):
        log(line)
    if not plan.actions:
        log("nothing to change")
        return None
    if dry_run:
        log("dry run: nothing was changed")
        return None
    if not confirm(f"apply these {len(plan.actions)} change(s) to bucket {bucket}?"):
        raise RestoreError("not confirmed; nothing was changed")
    with window():
        again = make_plan()  # writes are refused now: the exact plan, in case something changed meanwhile
        if len(again.actions) != len(plan.actions):
            log(f"the storage changed before the window opened: {len(again.actions)} key(s) change now")
        log(f"run {again.run_id}: journal s3://{bucket}/{journal_key(again.run_id)}")
        apply_plan(s3, again, log)
    log(f"done; undo with: python -m fleet restore {stack} --undo {again.run_id}")
    return again
