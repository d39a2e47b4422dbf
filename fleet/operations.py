"""The storage operations' commands: `maintenance`, `restore`, `gc`, `retention` (their cores:
fleet/maintenance.py, fleet/restore.py, fleet/gc.py, fleet/retention.py). fleet/cli.py only adds these
parsers and hands the parsed arguments here.

Each acts on a deployed stack (AWS credentials from the environment, the stack's region from its settings),
or with `--lab` on the running lab of that stack (`--state-dir` as for `lab up`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from infra.settings import Settings, load_stack_settings

if TYPE_CHECKING:
    from fleet.maintenance import Fleet


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lab", action="store_true", help="act on the running lab of the stack, not on AWS")
    p.add_argument("--state-dir", help="with --lab: the lab's state directory (default .lab/STACK)")


def add_parsers(sub: Any, stacks: str) -> None:
    p = sub.add_parser("maintenance", help="every registry instance read-only or read-write (restarted), or restarted")
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("action", choices=("read-only", "read-write", "restart"))
    _target(p)

    p = sub.add_parser(
        "restore",
        help="put the registry's storage back to a point in time from S3 object versions (reversible), "
        "or undo a restore",
    )
    p.add_argument("stack", help=f"stack name ({stacks})")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="TIME", help="ISO 8601 time with a zone, e.g. 2026-12-01T14:30:00Z")
    what.add_argument("--undo", metavar="RUN_ID", help="put back every key a restore run changed")
    what.add_argument(
        "--from-backup", metavar="RECOVERY_POINT_ARN", help="start an AWS Backup restore job into --into BUCKET"
    )
    p.add_argument("--into", metavar="BUCKET", help="with --from-backup: the new bucket to restore into")
    p.add_argument(
        "--repository", action="append", default=[], metavar="REPO", help="only this repository (repeatable)"
    )
    p.add_argument("--from-replica", action="store_true", help="take the old versions from the replica bucket")
    p.add_argument("--dry-run", action="store_true", help="show the diff and change nothing")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.add_argument("--bucket", help="the registry bucket (default: the stack's output bucketName)")
    p.add_argument("--replica-bucket", help="the replica bucket (default: the stack's output replicaBucketName)")
    _target(p)

    p = sub.add_parser(
        "gc",
        help="garbage-collect unreferenced blobs in a read-only window (never --delete-untagged); freed bytes",
    )
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("--dry-run", action="store_true", help="what would be freed; no window, nothing deleted")
    p.add_argument("--bucket", help="the registry bucket (default: the stack's output bucketName)")
    _target(p)

    p = sub.add_parser(
        "retention",
        help="delete what the stack's storage.retention policies no longer keep, through the registry API "
        "(before gc); prints the plan",
    )
    p.add_argument("stack", help=f"stack name ({stacks})")
    p.add_argument("--dry-run", action="store_true", help="print the plan; delete nothing")
    _target(p)


def run_operation(args: argparse.Namespace, out: TextIO, err: TextIO, stacks_dir: Path) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from fleet.backup_restore import BackupRestoreError
    from fleet.cli import UserError
    from fleet.maintenance import MaintenanceError, fleet_for, switch
    from fleet.restore import RestoreError
    from fleet.retention import RetentionError
    from lab.lab import LabError

    settings = load_stack_settings(args.stack, stacks_dir=stacks_dir)

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        fleet = fleet_for(args.stack, args.lab, args.state_dir, settings.region)
        if args.command == "maintenance":
            switch(args.stack, args.action, fleet, log)
        elif args.command == "restore":
            restore_command(args, settings, fleet, log)
        elif args.command == "gc":
            from fleet.gc import garbage_collect

            s3, bucket = registry_storage(args, settings)
            garbage_collect(
                fleet=fleet,
                stack=args.stack,
                s3=s3,
                bucket=bucket,
                dry_run=args.dry_run,
                noncurrent_days=settings.storage.noncurrent_version_days,
                log=log,
            )
        elif args.command == "retention":
            from fleet.retention import retention_command

            retention_command(args.stack, settings, fleet, args.dry_run, log)
    except (MaintenanceError, LabError, RestoreError, BackupRestoreError, RetentionError) as e:
        raise UserError(str(e)) from None
    except (BotoCoreError, ClientError) as e:  # no credentials, no permission, throttled: the operator's to fix
        raise UserError(f"AWS: {e}") from None
    return 0


def registry_storage(args: argparse.Namespace, settings: Settings) -> tuple[Any, str]:
    """An S3 client and the registry bucket: the lab's moto, or the deployed stack's bucket."""
    if args.lab:
        from lab.lab import LabState, s3_client

        state = LabState.load(fleet_state_dir(args))
        return s3_client(state.s3_endpoint, state.ca_file, settings.region), state.bucket
    import boto3

    bucket = args.bucket or str(stack_outputs(args.stack)["bucketName"])
    return boto3.client("s3", region_name=settings.region), bucket


def stack_outputs(stack: str) -> dict[str, Any]:
    """The deployed stack's outputs (bucket names), through the Automation API."""
    from fleet.restore import RestoreError
    from fleet.runner import AutomationRunner, RunnerError

    try:
        return AutomationRunner().stack_outputs(stack)
    except RunnerError as e:
        raise RestoreError(f"{e}; or name the buckets with --bucket and --replica-bucket") from None


def confirm_on_terminal(question: str) -> bool:
    import sys

    from fleet.restore import RestoreError

    if not sys.stdin.isatty():
        raise RestoreError("stdin is not a terminal: pass --yes to apply without a prompt (or --dry-run)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def restore_command(args: argparse.Namespace, settings: Settings, fleet: Fleet, log: Any) -> None:
    from functools import partial

    from fleet.maintenance import read_only_window
    from fleet.restore import RestoreError, load_journal, parse_time, plan_restore, plan_undo, run

    if args.from_backup:
        backup_restore_command(args, settings, log)
        return
    if args.lab and args.from_replica:
        raise RestoreError("the lab has no replica bucket (moto stores replication rules, it does not replicate)")
    s3, bucket = registry_storage(args, settings)
    replica, replica_s3 = None, None
    if args.from_replica:
        import boto3

        replica_s3 = boto3.client("s3", region_name=settings.replica_region)
        replica = args.replica_bucket or str(stack_outputs(args.stack)["replicaBucketName"])

    window = partial(read_only_window, fleet, args.stack, log)
    confirm = (lambda question: True) if args.yes else confirm_on_terminal
    common = {"s3": s3, "stack": args.stack, "window": window, "log": log, "confirm": confirm,
              "dry_run": args.dry_run, "bucket": bucket}  # fmt: skip
    if args.undo:
        journal = load_journal(s3, bucket, args.undo)
        run(
            make_plan=lambda: plan_undo(s3, journal),
            resumable=lambda p: p.kind == "undo" and p.params == {"undo": args.undo},
            **common,
        )
        return
    when = parse_time(args.to)
    repositories = sorted(set(args.repository))
    params = {"to": when.isoformat(), "repositories": repositories, "source_bucket": replica or bucket}
    run(
        make_plan=lambda: plan_restore(
            s3,
            bucket,
            when,
            repositories,
            source_bucket=replica,
            source_s3=replica_s3,
            noncurrent_days=settings.storage.noncurrent_version_days,
        ),
        resumable=lambda p: p.kind == "restore" and p.params == params,
        **common,
    )


def backup_restore_command(args: argparse.Namespace, settings: Settings, log: Any) -> None:
    from fleet.backup_restore import start_backup_restore
    from fleet.restore import RestoreError

    if args.lab:
        raise RestoreError("--from-backup has no lab: moto runs no AWS Backup jobs (docs/backups.md)")
    if not args.into:
        raise RestoreError("--from-backup needs --into BUCKET, a new bucket to restore into")
    import boto3

    outputs = stack_outputs(args.stack)
    start_backup_restore(
        boto3.client("backup", region_name=settings.region),
        args.from_backup,
        args.into,
        str(outputs["backupRoleArn"]),
        str(outputs["bucketKeyArn"]),
        args.stack,
        str(outputs["bucketName"]),
        log,
    )


def fleet_state_dir(args: argparse.Namespace) -> Path:
    from fleet.cli import lab_dir

    return lab_dir(args.stack, args.state_dir)
