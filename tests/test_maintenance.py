"""The maintenance switch without a lab: the renderer's read-only key, the host script run with stand-ins
for systemctl and the registry binary, and the AWS side (SSM Run Command, Auto Scaling) against a fake
client that checks every request against botocore's model of the API. The real registry in read-only
mode, in the lab and through the host's drop-in, is tests/test_lab_maintenance.py."""

from __future__ import annotations

import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.maintenance import SSM_DOCUMENT, SUSPENDED_PROCESSES, AwsFleet, MaintenanceError, read_only_window
from host.maintenance import maintenance_commands, read_only_environment_line, render_maintenance_script
from host.registry_config import READ_ONLY_ENV, RegistryConfig, render_registry_config
from host.scanner_host import ROLE_TAG
from tests.helpers.aws_fake import FakeClient

CONFIG = RegistryConfig(environment="dev", public_url="https://registry.example.com", bucket="b", region="eu-west-1")


def test_read_only_is_rendered_only_when_set() -> None:
    plain = yaml.safe_load(render_registry_config(CONFIG))
    assert "readonly" not in plain["storage"]["maintenance"], "the fleet's config.yml must not change"
    ro = yaml.safe_load(render_registry_config(RegistryConfig(**{**CONFIG.__dict__, "read_only": True})))
    assert ro["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert ro["storage"]["maintenance"]["uploadpurging"] == plain["storage"]["maintenance"]["uploadpurging"]


def host_script(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The rendered script, pointed at a temp drop-in, a systemctl stand-in and a registry stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("systemctl", "docker-registry"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >>{calls}\n')
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    dropin = tmp_path / "unit.d" / "50-read-only.conf"
    script = tmp_path / "registry-maintenance.sh"
    script.write_text(
        render_maintenance_script(
            dropin_file=str(dropin), registry_binary=str(bin_dir / "docker-registry"), config_file="/etc/c.yml"
        )
    )
    return script, dropin, calls


def run_script(script: Path, action: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{script.parent / 'bin'}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(script), action], capture_output=True, text=True, env=env, timeout=30)


def test_host_script_switches_with_a_dropin_and_restarts(tmp_path: Path) -> None:
    script, dropin, calls = host_script(tmp_path)
    refused = run_script(script, "gc")
    assert refused.returncode != 0 and "not in read-only mode" in refused.stderr
    assert not calls.exists(), "garbage-collect ran on a writable host"

    assert run_script(script, "read-only").returncode == 0
    assert dropin.read_text() == f"[Service]\n{read_only_environment_line()}\n"
    assert oct(dropin.stat().st_mode & 0o777) == "0o644"
    assert calls.read_text().splitlines() == [
        "systemctl daemon-reload",
        "systemctl restart docker-registry",
        "systemctl is-active --quiet docker-registry",
    ]
    calls.unlink()
    assert run_script(script, "gc").returncode == 0
    assert calls.read_text().splitlines() == ["docker-registry garbage-collect /etc/c.yml"]
    calls.unlink()
    assert run_script(script, "read-write").returncode == 0
    assert not dropin.exists()
    assert "systemctl restart docker-registry" in calls.read_text()
    assert run_script(script, "delete-everything").returncode != 0


def test_dropin_line_unquotes_to_the_value_the_registry_parses() -> None:
    # systemd splits and unquotes Environment= like a shell word (systemd.exec(5)); the registry reads the
    # value as YAML. The real registry refusing writes with it: tests/test_lab_maintenance.py.
    import shlex

    (assignment,) = shlex.split(read_only_environment_line().removeprefix("Environment="))
    name, value = assignment.split("=", 1)
    assert name == READ_ONLY_ENV
    assert yaml.safe_load(value) == {"enabled": True}


def test_ssm_commands_carry_the_script_byte_for_byte(tmp_path: Path) -> None:
    commands = maintenance_commands("read-only")
    assert render_maintenance_script() in commands[2]
    with pytest.raises(ValueError, match="unknown maintenance action"):
        maintenance_commands("rm -rf /")
    # What SSM runs: the lines as one sh script. Run it with the script's own actions stubbed by PATH.
    text = "\n".join(maintenance_commands("restart")).replace("/root/", f"{tmp_path}/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >>{tmp_path}/calls\n')
    (bin_dir / "systemctl").chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", text], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "restart docker-registry" in (tmp_path / "calls").read_text()
    assert not list(tmp_path.glob("registry-maintenance.*")), "the script file is left behind"


# --- AWS --------------------------------------------------------------------------------------------

GROUP = {
    "AutoScalingGroupName": "registry-dev-asg",
    "Instances": [
        {"InstanceId": "i-0bbbbbbbbbbbbbbbb", "LifecycleState": "InService"},
        {"InstanceId": "i-0aaaaaaaaaaaaaaaa", "LifecycleState": "Standby"},
        {"InstanceId": "i-0cccccccccccccccc", "LifecycleState": "Terminating"},
    ],
}


def aws(status: str = "Success", groups: list[dict[str, Any]] | None = None) -> tuple[AwsFleet, FakeClient, FakeClient]:
    autoscaling = FakeClient(
        "autoscaling",
        {
            "describe_auto_scaling_groups": lambda p: {"AutoScalingGroups": [GROUP] if groups is None else groups},
            "suspend_processes": lambda p: {},
            "resume_processes": lambda p: {},
        },
    )
    sent: list[str] = []

    def send(p: dict[str, Any]) -> dict[str, Any]:
        sent.append(p["InstanceIds"][0])
        return {"Command": {"CommandId": str(uuid.uuid4())}}

    ssm = FakeClient(
        "ssm",
        {
            "send_command": send,
            "get_command_invocation": lambda p: {
                "Status": status,
                "StandardOutputContent": f"ok {p['InstanceId']}",
                "StandardErrorContent": "boom",
            },
        },
    )
    return AwsFleet("dev", autoscaling, ssm, poll_seconds=0, sleep=lambda s: None), autoscaling, ssm


def test_aws_read_only_window_suspends_launches_and_switches_one_host_at_a_time() -> None:
    fleet, autoscaling, ssm = aws()
    lines: list[str] = []
    with read_only_window(fleet, "dev", lines.append):
        assert autoscaling.names()[-1] == "suspend_processes"
    filters = autoscaling.calls[0][1]["Filters"]
    assert {"Name": "tag:stack", "Values": ["dev"]} in filters
    assert autoscaling.names() == ["describe_auto_scaling_groups", "suspend_processes", "resume_processes"]
    assert autoscaling.calls[1][1]["ScalingProcesses"] == list(SUSPENDED_PROCESSES)
    sends = [p for name, p in ssm.calls if name == "send_command"]
    assert [p["InstanceIds"] for p in sends] == [
        ["i-0aaaaaaaaaaaaaaaa"],
        ["i-0bbbbbbbbbbbbbbbb"],
        ["i-0aaaaaaaaaaaaaaaa"],
        ["i-0bbbbbbbbbbbbbbbb"],
    ], "terminating hosts skipped"
    assert {p["DocumentName"] for p in sends} == {SSM_DOCUMENT}
    actions = [p["Parameters"]["commands"][4] for p in sends]
    assert [a.split()[2] for a in actions] == ["read-only", "read-only", "read-write", "read-write"]


def test_aws_failure_keeps_the_fleet_read_only_and_says_so() -> None:
    fleet, autoscaling, _ = aws(status="Failed")
    lines: list[str] = []
    window = read_only_window(fleet, "dev", lines.append)
    with pytest.raises(MaintenanceError, match="i-0aaaaaaaaaaaaaaaa: read-only ended Failed: boom"), window:
        pass
    assert "resume_processes" not in autoscaling.names()
    fleet, autoscaling, _ = aws()
    with pytest.raises(RuntimeError), read_only_window(fleet, "dev", lines.append):
        raise RuntimeError("restore failed")
    assert "resume_processes" not in autoscaling.names()
    assert "stays READ-ONLY" in lines[-1] and "maintenance dev read-write" in lines[-1]


def test_aws_gc_runs_on_one_host_and_needs_exactly_one_group() -> None:
    fleet, _, ssm = aws()
    assert fleet.garbage_collect(True, lambda line: None) == "ok i-0aaaaaaaaaaaaaaaa"
    assert [p["InstanceIds"] for name, p in ssm.calls if name == "send_command"] == [["i-0aaaaaaaaaaaaaaaa"]]
    fleet, _, _ = aws(groups=[])
    with pytest.raises(MaintenanceError, match="expected one Auto Scaling group tagged stack=dev"):
        fleet.instances()


def test_the_fake_client_refuses_a_request_aws_would_refuse() -> None:
    _, _, ssm = aws()
    with pytest.raises(AssertionError, match=r"InstanceIds|Parameters"):
        ssm.send_command(DocumentName=SSM_DOCUMENT, InstanceIds="i-0aaaaaaaaaaaaaaaa", Parameters={"commands": "ls"})


def test_cli_maintenance_without_a_lab_is_a_clear_error(tmp_path: Path) -> None:
    import io

    from fleet.cli import main

    err = io.StringIO()
    code = main(["maintenance", "dev", "read-only", "--lab", "--state-dir", str(tmp_path)], io.StringIO(), err)
    assert code == 2
    assert f"no lab running from {tmp_path}" in err.getvalue()


# --- the stack's GC window (components/maintenance.py), in the recorded graph ----------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_gc_window_targets_the_stacks_hosts_and_runs_the_host_script_in_order(stack: str) -> None:
    from policy.graph import prop
    from tests.helpers import recording

    rec = recording(stack)
    window = rec.named("maintenance-gc-window")
    assert prop(window, "schedule") == "cron(0 4 ? * SUN *)" and prop(window, "allowUnassociatedTargets") is False
    target = rec.named("maintenance-gc-hosts")
    wanted = {t["key"]: t["values"] for t in prop(target, "targets")}
    # Every host carries the tags the window targets (the launch template's instance tags).
    template = rec.named("fleet-lt")
    (instance,) = [s for s in prop(template, "tagSpecifications") if s["resourceType"] == "instance"]
    assert wanted == {f"tag:{k}": [instance["tags"][k]] for k in ("managed-by", "stack", ROLE_TAG)}
    # ...and no scanner worker does: GC runs on registry hosts only (a worker would fail the task).
    (worker,) = [
        s for s in prop(rec.named("scanning-worker-lt"), "tagSpecifications") if s["resourceType"] == "instance"
    ]
    assert not all(worker["tags"].get(k.removeprefix("tag:")) in v for k, v in wanted.items())
    for action, priority in (("read-only", 1.0), ("gc", 2.0), ("read-write", 3.0)):
        task = rec.named(f"maintenance-gc-{action}")
        assert prop(task, "priority") == priority
        assert (prop(task, "maxConcurrency"), prop(task, "maxErrors")) == ("1", "0")
        params = prop(task, "taskInvocationParameters")["runCommandParameters"]["parameters"]
        assert params == [{"name": "commands", "values": maintenance_commands(action)}]
