"""The fleet's maintenance switch: every registry instance read-only and back, every instance restarted.

Restore (fleet/restore.py) and garbage collection (fleet/gc.py) run inside a read-only window: the
registry's `storage.maintenance.readonly` makes every write answer `405 Method Not Allowed` (distribution
2.8: `Allow: GET, HEAD`), pulls keep working. Each switch restarts the instances one after another (the
load balancer keeps the others serving), and a restart is also what every instance needs after storage
changed under it: an instance caches blob descriptors, and one not restarted after GC keeps serving
deleted blobs and accepts a re-push that stores a broken image.

Two implementations of one small interface, :class:`Fleet`:
  - :class:`LabFleet`: the running lab of a stack (lab/lab.py): each instance's effective config is
    rendered again through the fleet's renderer with `read_only` set, and the instance restarted;
  - :class:`AwsFleet`: the stack's Auto Scaling group, found by its tags; the host script
    (host/files/registry-maintenance.sh) runs through SSM Run Command (`AWS-RunShellScript`), one
    instance at a time; on a host the switch is a systemd drop-in setting the registry's environment
    override of the same key (host/maintenance.py). While the window is open the group's Launch,
    ReplaceUnhealthy, AZRebalance and InstanceRefresh processes are suspended: a host launched inside it
    would come up writable.

If the work inside the window fails, the fleet stays read-only (storage may be half-changed) and the
message says how to leave it: `python -m fleet maintenance STACK read-write`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from host.maintenance import maintenance_commands

# Autoscaling processes suspended inside a window (a new host would not be read-only).
SUSPENDED_PROCESSES = ("Launch", "ReplaceUnhealthy", "AZRebalance", "InstanceRefresh")
SSM_DOCUMENT = "AWS-RunShellScript"
SSM_TIMEOUT_SECONDS = 600
SSM_TERMINAL = ("Success", "Cancelled", "TimedOut", "Failed", "Cancelling")


class MaintenanceError(Exception):
    """The switch could not be made; the message names the instance and what it answered."""


class Fleet(Protocol):
    """Where a stack's registry instances run."""

    description: str

    def instances(self) -> list[str]: ...

    def set_read_only(self, read_only: bool, log: Callable[[str], None]) -> None:
        """Every instance in (or out of) read-only mode, each restarted, one after another."""

    def restart_all(self, log: Callable[[str], None]) -> None: ...

    def garbage_collect(self, dry_run: bool, log: Callable[[str], None]) -> str:
        """`garbage-collect` on one instance (never `--delete-untagged`); its output."""

    def retention(self, policies_json: str, dry_run: bool, log: Callable[[str], None]) -> None:
        """Retention (retention/run.py) against one writable instance; its plan lines go to `log`."""


@contextmanager
def read_only_window(fleet: Fleet, stack: str, log: Callable[[str], None]) -> Iterator[None]:
    """Read-only for the body; read-write (every instance restarted) after it. If the body fails, the
    fleet stays read-only and the error says so."""
    fleet.set_read_only(True, log)
    try:
        yield
    except BaseException:
        log(
            f"the fleet of {stack} stays READ-ONLY (storage may be half-changed); when it is safe: "
            f"python -m fleet maintenance {stack} read-write"
        )
        raise
    fleet.set_read_only(False, log)


# --- the lab ------------------------------------------------------------------------------------


class LabFleet:
    """The instances of a running lab (lab/lab.py)."""

    def __init__(self, state_dir: Path) -> None:
        from lab.lab import LabState

        self.state_dir = state_dir.resolve()
        self.state = LabState.load(self.state_dir)
        self.description = f"the lab in {self.state_dir}"

    def instances(self) -> list[str]:
        from lab.lab import INSTANCES

        return [name for name in INSTANCES if name in self.state.services]

    def set_read_only(self, read_only: bool, log: Callable[[str], None]) -> None:
        from lab.lab import Lab, write_registry_config

        for name in self.instances():
            config = Lab.registry_config(self.state_dir, name)
            write_registry_config(self.state_dir, name, dataclasses.replace(config, read_only=read_only))
            Lab.restart(self.state_dir, name)
            log(f"{name}: restarted {'read-only' if read_only else 'read-write'}")

    def restart_all(self, log: Callable[[str], None]) -> None:
        from lab.lab import Lab

        for name in self.instances():
            Lab.restart(self.state_dir, name)
            log(f"{name}: restarted")

    def garbage_collect(self, dry_run: bool, log: Callable[[str], None]) -> str:
        import json

        from lab.lab import REGISTRY_BINARY

        name = self.instances()[0]
        config = self.state_dir / f"{name}.yml"
        env = json.loads((self.state_dir / f"{name}.env.json").read_text())
        argv = [REGISTRY_BINARY, "garbage-collect", *(["--dry-run"] if dry_run else []), str(config)]
        log(f"{name}: {' '.join(argv[1:])}")
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, check=False)
        if result.returncode != 0:
            raise MaintenanceError(f"{name}: garbage-collect failed ({result.returncode}): {result.stderr[-2000:]}")
        return result.stdout + result.stderr

    def retention(self, policies_json: str, dry_run: bool, log: Callable[[str], None]) -> None:
        from fleet.retention import lab_retention

        lab_retention(self.state_dir, self.state, self.instances()[0], policies_json, dry_run, log)


# --- AWS ----------------------------------------------------------------------------------------


class AwsFleet:
    """The instances of a deployed stack's Auto Scaling group, through SSM Run Command."""

    def __init__(
        self,
        stack: str,
        autoscaling: Any,
        ssm: Any,
        poll_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stack = stack
        self.autoscaling = autoscaling
        self.ssm = ssm
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.description = f"the Auto Scaling group of stack {stack}"
        self._group: dict[str, Any] | None = None

    def group(self) -> dict[str, Any]:
        """The stack's one group: tagged `stack` = STACK and `managed-by` = pulumi/registry-fleet."""
        if self._group is None:
            pages = self.autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
                Filters=[
                    {"Name": "tag:stack", "Values": [self.stack]},
                    {"Name": "tag:managed-by", "Values": ["pulumi/registry-fleet"]},
                ]
            )
            groups = [g for page in pages for g in page["AutoScalingGroups"]]
            if len(groups) != 1:
                names = ", ".join(g["AutoScalingGroupName"] for g in groups) or "none"
                raise MaintenanceError(
                    f"stack {self.stack}: expected one Auto Scaling group tagged stack={self.stack}, "
                    f"managed-by=pulumi/registry-fleet; found {names}"
                )
            self._group = groups[0]
        return self._group

    def instances(self) -> list[str]:
        # Standby hosts (S3 outage) run a registry too: they must switch with the others.
        return sorted(
            i["InstanceId"]
            for i in self.group()["Instances"]
            if not str(i["LifecycleState"]).startswith(("Terminat", "Pending", "Detach"))
        )

    def run(
        self, action: str, instance_ids: list[str], log: Callable[[str], None], policies_json: str | None = None
    ) -> dict[str, str]:
        """Run the host script with ACTION on each instance, one after another; their outputs."""
        outputs = {}
        for instance in instance_ids:
            command = self.ssm.send_command(
                InstanceIds=[instance],
                DocumentName=SSM_DOCUMENT,
                Comment=f"registry-fleet {self.stack}: {action}",
                TimeoutSeconds=SSM_TIMEOUT_SECONDS,
                Parameters={
                    "commands": maintenance_commands(action, policies_json),
                    "executionTimeout": [str(SSM_TIMEOUT_SECONDS)],
                },
            )["Command"]
            outputs[instance] = self._wait(command["CommandId"], instance, action)
            log(f"{instance}: {action} done")
        return outputs

    def _wait(self, command_id: str, instance: str, action: str) -> str:
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + SSM_TIMEOUT_SECONDS + 60
        while time.monotonic() < deadline:
            self.sleep(self.poll_seconds)
            try:
                inv = self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
            except ClientError as err:  # the invocation shows up a moment after send_command
                if err.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                    continue
                raise
            if inv["Status"] in SSM_TERMINAL:
                if inv["Status"] != "Success":
                    raise MaintenanceError(
                        f"{instance}: {action} ended {inv['Status']}: {inv.get('StandardErrorContent', '')[-2000:]}"
                    )
                return str(inv.get("StandardOutputContent", ""))
        raise MaintenanceError(f"{instance}: {action} did not finish within {SSM_TIMEOUT_SECONDS + 60} s")

    def set_read_only(self, read_only: bool, log: Callable[[str], None]) -> None:
        name = self.group()["AutoScalingGroupName"]
        if read_only:
            self.autoscaling.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=list(SUSPENDED_PROCESSES))
        self.run("read-only" if read_only else "read-write", self.instances(), log)
        if not read_only:
            self.autoscaling.resume_processes(AutoScalingGroupName=name, ScalingProcesses=list(SUSPENDED_PROCESSES))

    def restart_all(self, log: Callable[[str], None]) -> None:
        self.run("restart", self.instances(), log)

    def garbage_collect(self, dry_run: bool, log: Callable[[str], None]) -> str:
        first = self.instances()[:1]
        if not first:
            raise MaintenanceError(f"stack {self.stack}: its Auto Scaling group has no running instance")
        return self.run("gc-dry-run" if dry_run else "gc", first, log)[first[0]]

    def retention(self, policies_json: str, dry_run: bool, log: Callable[[str], None]) -> None:
        first = self.instances()[:1]
        if not first:
            raise MaintenanceError(f"stack {self.stack}: its Auto Scaling group has no running instance")
        action = "retention-dry-run" if dry_run else "retention"
        output = self.run(action, first, log, policies_json)[first[0]]
        for line in output.splitlines():  # SSM keeps the first 24,000 characters; the host's log has all
            log(line)


def aws_fleet(stack: str, region: str) -> AwsFleet:
    import boto3

    return AwsFleet(stack, boto3.client("autoscaling", region_name=region), boto3.client("ssm", region_name=region))


def fleet_for(stack: str, lab: bool, state_dir: str | None, region: str) -> Fleet:
    """The lab's instances with --lab, else the deployed stack's."""
    if lab:
        from fleet.cli import lab_dir

        return LabFleet(lab_dir(stack, state_dir))
    return aws_fleet(stack, region)


def switch(stack: str, action: str, fleet: Fleet, log: Callable[[str], None]) -> None:
    """`python -m fleet maintenance STACK read-only|read-write|restart`."""
    log(f"{action}: {fleet.description} ({len(fleet.instances())} instances)")
    if action == "restart":
        fleet.restart_all(log)
    else:
        fleet.set_read_only(action == "read-only", log)
