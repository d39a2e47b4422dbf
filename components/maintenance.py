"""RegistryMaintenance: the stack's weekly retention and garbage-collection window (practice 10).

An SSM maintenance window whose target is the stack's registry hosts (by the tags every host carries) and
whose three Run Command tasks (`AWS-RunShellScript`, host/files/registry-maintenance.sh) run in priority
order, one host at a time: every host read-only, `garbage-collect` (never `--delete-untagged`; the script
refuses on a host that is not read-only), every host restarted read-write. The same steps as
`python -m fleet gc STACK` (fleet/gc.py), which runs GC on one host only; SSM runs a task on every target,
so here each host collects in turn (the first frees, the others find nothing). What GC frees stays as
noncurrent versions until the bucket's lifecycle rule expires them.

A stack with retention policies (`storage.retention`) gets a fourth task that runs first, while the fleet is
still writable (the registry answers deletes 405 in read-only mode): `python -m retention` on each host in
turn, against its local registry, deleting through the API what the policies no longer keep (the first
host deletes, the others find nothing). GC then frees the blobs of what retention deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from host.maintenance import maintenance_commands

GC_SCHEDULE = "cron(0 4 ? * SUN *)"  # Sunday 04:00 UTC: after the daily backup, before the restore test
GC_TASKS = (("read-only", 1), ("gc", 2), ("read-write", 3))
RETENTION_PRIORITY = 0  # before read-only: SSM runs lower priorities first (0 is the lowest allowed)


@dataclass
class RegistryMaintenanceArgs:
    name_prefix: str
    # Tags every registry host carries (the fleet's launch template propagates them): the window's target.
    host_tags: dict[str, str]
    tags: dict[str, str]
    schedule: str = GC_SCHEDULE
    duration_hours: int = 2
    cutoff_hours: int = 1
    # The stack's retention policies as JSON (infra/retention.py); None: no retention task.
    retention_policies: str | None = None


class RegistryMaintenance(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegistryMaintenanceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("registry-fleet:index:RegistryMaintenance", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        window = aws.ssm.MaintenanceWindow(
            f"{name}-gc-window",
            name=f"{args.name_prefix}-gc",
            description="registry-fleet: read-only, garbage-collect, read-write",
            schedule=args.schedule,
            schedule_timezone="Etc/UTC",
            duration=args.duration_hours,
            cutoff=args.cutoff_hours,
            allow_unassociated_targets=False,
            tags=args.tags,
            opts=child,
        )
        target = aws.ssm.MaintenanceWindowTarget(
            f"{name}-gc-hosts",
            window_id=window.id,
            resource_type="INSTANCE",
            targets=[{"key": f"tag:{k}", "values": [v]} for k, v in sorted(args.host_tags.items())],
            opts=child,
        )
        tasks: list[tuple[str, int, str | None]] = [(action, priority, None) for action, priority in GC_TASKS]
        if args.retention_policies is not None:
            tasks.insert(0, ("retention", RETENTION_PRIORITY, args.retention_policies))
        for action, priority, policies in tasks:
            aws.ssm.MaintenanceWindowTask(
                f"{name}-gc-{action}",
                window_id=window.id,
                task_type="RUN_COMMAND",
                task_arn="AWS-RunShellScript",
                priority=priority,
                # One host at a time, and a single failure stops the task: no GC on a fleet not read-only.
                max_concurrency="1",
                max_errors="0",
                cutoff_behavior="CONTINUE_TASK",
                targets=[{"key": "WindowTargetIds", "values": [target.id]}],
                task_invocation_parameters={
                    "run_command_parameters": {
                        "comment": f"registry-fleet: {action}",
                        "timeout_seconds": 600,
                        "parameters": [{"name": "commands", "values": maintenance_commands(action, policies)}],
                    }
                },
                opts=child,
            )
        self.window_id = window.id
        self.register_outputs({"windowId": window.id})
