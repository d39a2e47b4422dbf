"""Practice 10, regular backups: versioned buckets whose old versions expire, an AWS Backup plan over the
primary bucket, encrypted vaults, and restore testing of that bucket's recovery points."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from typing import Any

from policy.graph import (
    BACKUP_PLAN,
    BACKUP_SELECTION,
    BACKUP_VAULT,
    LIFECYCLE,
    MAINTENANCE_WINDOW,
    MAINTENANCE_WINDOW_TASK,
    RESTORE_TESTING_PLAN,
    RESTORE_TESTING_SELECTION,
    UNKNOWN_VALUES,
    VERSIONING,
    Res,
    arn_of,
    as_list,
    is_unknown,
    mapping,
    of_type,
    primary_buckets,
    prop,
    registry_buckets,
    satellites,
)
from policy.registry import STACK, Finding, rule


@rule("buckets-versioned", 10, "Every registry bucket has versioning Enabled.")
def find_buckets_versioned(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in registry_buckets(resources):
        versionings = satellites(resources, bucket, VERSIONING)
        if not versionings:
            yield bucket.name, f"no {VERSIONING} names this bucket"
        for v in versionings:
            status = prop(v, "versioningConfiguration", "status")
            if not is_unknown(status) and status != "Enabled":
                yield v.name, f"versioningConfiguration.status is {status!r}, expected 'Enabled'"


def _expires_noncurrent(rule: Any) -> bool:
    days = mapping(mapping(rule).get("noncurrentVersionExpiration")).get("noncurrentDays")
    return mapping(rule).get("status") in ("Enabled", *UNKNOWN_VALUES) and bool(days)


@rule(
    "noncurrent-versions-expire",
    10,
    "Every registry bucket has an enabled lifecycle rule that expires noncurrent versions.",
)
def find_noncurrent_versions_expire(resources: Sequence[Res]) -> Iterator[Finding]:
    for bucket in registry_buckets(resources):
        configs = satellites(resources, bucket, LIFECYCLE)
        if not configs:
            yield bucket.name, f"no {LIFECYCLE} names this bucket"
            continue
        rules = [prop(c, "rules") for c in configs]
        if any(is_unknown(r) or any(_expires_noncurrent(x) for x in as_list(r)) for r in rules):
            continue
        yield configs[0].name, "rules has no enabled rule with noncurrentVersionExpiration.noncurrentDays"


@rule("backup-plan", 10, "An AWS Backup plan exists and a backup selection covers the primary registry bucket.")
def find_backup_plan(resources: Sequence[Res]) -> Iterator[Finding]:
    plans, selections = of_type(resources, BACKUP_PLAN), of_type(resources, BACKUP_SELECTION)
    if not plans:
        yield STACK, f"no {BACKUP_PLAN}"
    for plan in plans:
        if not is_unknown(prop(plan, "rules")) and not as_list(prop(plan, "rules")):
            yield plan.name, "rules is empty: the plan never backs anything up"
    if not selections:
        yield STACK, f"no {BACKUP_SELECTION}: no resource is backed up"
        return
    chosen = [x for s in selections for x in as_list(prop(s, "resources"))]
    for s in selections:
        if not as_list(prop(s, "resources")) and not prop(s, "selectionTags") and not prop(s, "conditions"):
            yield s.name, "resources is empty"
    if any(is_unknown(x) for x in chosen):
        return  # a selection names something not known yet: it may be the bucket
    for bucket in primary_buckets(resources):
        arn = arn_of(bucket)
        if arn is not None and not any(fnmatch.fnmatchcase(arn, str(pattern)) for pattern in chosen):
            yield selections[0].name, f"resources is {chosen!r}, without {bucket.name} ({arn})"


@rule("backup-vaults-encrypted", 10, "Every AWS Backup vault is encrypted with a customer KMS key (kmsKeyArn).")
def find_backup_vaults_encrypted(resources: Sequence[Res]) -> Iterator[Finding]:
    for vault in of_type(resources, BACKUP_VAULT):
        if not prop(vault, "kmsKeyArn"):
            yield vault.name, f"kmsKeyArn is {prop(vault, 'kmsKeyArn')!r}: backups need a customer KMS key"


@rule(
    "restore-testing",
    10,
    "An AWS Backup restore testing plan picks recovery points from a vault, and a restore testing selection of "
    "that plan restores the primary registry bucket (a backup never restored is a hope).",
)
def find_restore_testing(resources: Sequence[Res]) -> Iterator[Finding]:
    plans = of_type(resources, RESTORE_TESTING_PLAN)
    if not plans:
        yield STACK, f"no {RESTORE_TESTING_PLAN}: no recovery point is ever restored"
        return
    for plan in plans:
        vaults = prop(plan, "recoveryPointSelection", "includeVaults")
        if not is_unknown(vaults) and not as_list(vaults):
            yield plan.name, f"recoveryPointSelection.includeVaults is {vaults!r}: the plan restores nothing"
    names = {prop(p, "name") for p in plans}
    selections = [
        s
        for s in of_type(resources, RESTORE_TESTING_SELECTION)
        if is_unknown(prop(s, "restoreTestingPlanName")) or prop(s, "restoreTestingPlanName") in names
    ]
    if not selections:
        yield plans[0].name, f"no {RESTORE_TESTING_SELECTION} names this plan"
        return
    chosen = [x for s in selections for x in as_list(prop(s, "protectedResourceArns"))]
    if any(is_unknown(x) for x in chosen):
        return
    for bucket in primary_buckets(resources):
        arn = arn_of(bucket)
        if arn is not None and arn not in chosen:
            yield selections[0].name, f"protectedResourceArns is {chosen!r}, without {bucket.name} ({arn})"


_ACTION = re.compile(r'bash "\$script" (read-only|read-write|gc|retention)(?![\w-])')


def _window_actions(task: Res) -> list[str]:
    """The host script's actions a Run Command task runs (fleet's maintenance_commands)."""
    params = mapping(mapping(prop(task, "taskInvocationParameters")).get("runCommandParameters"))
    commands = [str(v) for p in as_list(params.get("parameters")) for v in as_list(mapping(p).get("values"))]
    lines = [line for c in commands for line in c.splitlines() if not line.lstrip().startswith("#")]
    return [m[1] for line in lines for m in _ACTION.finditer(line)] + [
        "delete-untagged" for line in lines if "--delete-untagged" in line
    ]


@rule(
    "gc-window",
    10,
    "A scheduled SSM maintenance window garbage-collects the registry: every host read-only first, then "
    "garbage-collect (never --delete-untagged), then read-write, one host at a time, stopping at the first error; "
    "a stack with retention policies runs retention before all of them (deletes need a writable registry, and GC "
    "frees what retention deleted).",
)
def find_gc_window(resources: Sequence[Res]) -> Iterator[Finding]:
    windows = [w for w in of_type(resources, MAINTENANCE_WINDOW) if prop(w, "enabled") is not False]
    if not windows:
        yield STACK, f"no enabled {MAINTENANCE_WINDOW}: deleted images never free their storage"
        return
    tasks = of_type(resources, MAINTENANCE_WINDOW_TASK)
    priority: dict[str, float] = {}
    for task in tasks:
        actions = _window_actions(task)
        if "delete-untagged" in actions:
            yield (
                task.name,
                "runs garbage-collect --delete-untagged: it deletes the platform manifests of multi-arch indexes",
            )
        for action in actions:
            priority[action] = prop(task, "priority")
        if {"gc", "read-only", "retention"} & set(actions):
            for key, want in (("maxConcurrency", "1"), ("maxErrors", "0")):
                if prop(task, key) != want and not is_unknown(prop(task, key)):
                    yield task.name, f"{key} is {prop(task, key)!r}, expected {want!r}"
    if "gc" not in priority:
        yield windows[0].name, "no task runs garbage-collect"
        return
    if not priority.get("read-only", 1e9) < priority["gc"] < priority.get("read-write", -1e9):
        yield (
            windows[0].name,
            (f"task priorities {priority}: garbage-collect must run after read-only and before read-write"),
        )
    if "retention" in priority and not priority["retention"] < min(priority.get("read-only", 1e9), priority["gc"]):
        yield (
            windows[0].name,
            f"task priorities {priority}: retention must run before read-only and garbage-collect (a read-only "
            "registry refuses its deletes; GC after it frees what it deleted)",
        )
