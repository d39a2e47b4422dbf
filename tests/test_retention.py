"""Retention's planning without a registry (retention/plan.py, retention/storage.py): which tags and
digests a policy keeps, in which order the rest is deleted, and since when a manifest has been untagged;
the policies' JSON form and their settings (`storage.retention`). The real registry: test_lab_retention.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retention.plan import (
    Manifest,
    Policy,
    PolicyError,
    Repository,
    Tag,
    parse_policies,
    plan_repository,
    policy_for,
)
from retention.storage import untagged_since

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def d(n: int) -> str:
    return f"sha256:{n:064x}"


def sig(n: int) -> str:
    return f"sha256-{n:064x}.sig"


def day(n: int) -> datetime:
    return NOW - timedelta(days=n)


def repo(tags: list[tuple[str, int, datetime | None]], manifests: list[Manifest] = ()) -> Repository:  # type: ignore[assignment]
    ms = {m.digest: m for m in manifests}
    for _, n, _ in tags:
        ms.setdefault(d(n), Manifest(d(n)))
    return Repository("team-a/app", tuple(Tag(name, d(n), when) for name, n, when in tags), ms)


def deleted(plan: object) -> list[str]:
    return [x.digest for x in plan.deletions]  # type: ignore[attr-defined]


def kept_tags(plan: object) -> set[str]:
    return {k.tag for k in plan.kept}  # type: ignore[attr-defined]


def test_keeps_exactly_the_newest_n_and_the_protected() -> None:
    r = repo([("a", 1, day(5)), ("b", 2, day(4)), ("c", 3, day(3)), ("v1.0", 4, day(10)), ("d", 5, day(2))])
    plan = plan_repository(r, Policy(keep_last=2, protect=("v*",)), NOW)
    assert kept_tags(plan) == {"c", "d", "v1.0"}
    assert deleted(plan) == [d(1), d(2)]
    assert "beyond keepLast 2: #4" in plan.deletions[0].why


def test_no_keep_last_deletes_no_tag_and_no_policy_key_deletes_nothing() -> None:
    r = repo([("a", 1, day(5)), ("b", 2, day(4))], [Manifest(d(9), untagged_since=day(400))])
    assert deleted(plan_repository(r, Policy(protect=("v*",)), NOW)) == []
    assert kept_tags(plan_repository(r, Policy(), NOW)) == {"a", "b"}


def test_a_digest_with_a_kept_tag_survives_with_all_its_tags() -> None:
    r = repo([("old", 1, day(9)), ("new", 1, day(1)), ("mid", 2, day(5))])
    plan = plan_repository(r, Policy(keep_last=1), NOW)
    assert deleted(plan) == [d(2)]
    why = {k.tag: k.why for k in plan.kept}
    assert why["old"] == "same digest as kept tag new"


def test_unknown_push_time_counts_as_newest_and_ties_go_by_name() -> None:
    r = repo([("a", 1, day(1)), ("b", 2, day(1)), ("racing", 3, None)])
    plan = plan_repository(r, Policy(keep_last=2), NOW)
    assert kept_tags(plan) == {"racing", "b"}
    assert deleted(plan) == [d(1)]


def test_signatures_never_count_and_go_with_their_image() -> None:
    r = repo([("a", 1, day(3)), ("b", 2, day(2)), (sig(1), 11, day(1)), (sig(2), 12, day(1))])
    plan = plan_repository(r, Policy(keep_last=1), NOW)
    assert kept_tags(plan) == {"b", sig(2)}
    assert deleted(plan) == [d(1), d(11)], "the image first, then its signature"
    assert plan.deletions[1].why == f"attachment of deleted {d(1)}" and plan.deletions[1].tags == (sig(1),)


def test_an_orphan_signature_is_deleted_and_a_signature_of_an_untagged_image_kept() -> None:
    r = repo(
        [("a", 1, day(3)), (sig(7), 17, day(1)), (sig(8), 18, day(1))],
        [Manifest(d(8), untagged_since=day(1))],
    )
    plan = plan_repository(r, Policy(keep_last=5), NOW)
    assert deleted(plan) == [d(17)] and plan.deletions[0].why == f"attachment of absent {d(7)}"
    assert sig(8) in kept_tags(plan)


def test_index_children_survive_with_their_index_and_go_before_it() -> None:
    index = Manifest(d(10), children=(d(11), d(12)))
    old_index = Manifest(d(20), children=(d(21), d(12)))
    children = [Manifest(x, untagged_since=day(1)) for x in (d(11), d(12), d(21))]  # young: kept on their own
    r = repo([("new", 10, day(1)), ("old", 20, day(50))], [index, old_index, *children])
    plan = plan_repository(r, Policy(keep_last=1, untagged_after_days=30), NOW)
    assert deleted(plan) == [d(21), d(20)], "the child the kept index shares stays; the child goes first"
    assert plan.deletions[0].why == f"referenced only by deleted {d(20)}"


def test_untagged_after_days_deletes_old_untagged_and_keeps_young_ones_and_referrers() -> None:
    r = repo(
        [("a", 1, day(1))],
        [
            Manifest(d(2), untagged_since=day(31)),
            Manifest(d(3), untagged_since=day(29)),
            Manifest(d(4), subject=d(1), untagged_since=day(100)),  # a referrer of a kept image
            Manifest(d(5), untagged_since=None),  # unknown: never old enough
        ],
    )
    plan = plan_repository(r, Policy(untagged_after_days=30), NOW)
    assert deleted(plan) == [d(2)]
    assert "untagged since" in plan.deletions[0].why and "untaggedAfterDays 30" in plan.deletions[0].why


def test_a_second_plan_after_applying_plans_nothing() -> None:
    r = repo([("a", 1, day(3)), ("b", 2, day(2)), ("c", 3, day(1)), (sig(1), 11, day(1))])
    plan = plan_repository(r, Policy(keep_last=1), NOW)
    gone = set(deleted(plan))
    left = Repository(r.name, tuple(t for t in r.tags if t.digest not in gone),
                      {k: v for k, v in r.manifests.items() if k not in gone})  # fmt: skip
    assert deleted(plan_repository(left, Policy(keep_last=1), NOW)) == []
    # Interrupted after the image, before its signature: the next plan finds the orphan.
    half = Repository(r.name, tuple(t for t in r.tags if t.digest != d(1)),
                      {k: v for k, v in r.manifests.items() if k != d(1)})  # fmt: skip
    assert d(11) in deleted(plan_repository(half, Policy(keep_last=1), NOW))


def test_policy_for_takes_the_nearest_namespace_and_adds_protect_patterns() -> None:
    policies = {
        "team-a": Policy(keep_last=5, untagged_after_days=30, protect=("v*",)),
        "team-a/release": Policy(keep_last=50, protect=("release-*",)),
    }
    assert policy_for("team-a/release/app", policies) == Policy(50, 30, ("v*", "release-*"))
    assert policy_for("team-a/app", policies) == Policy(5, 30, ("v*",))
    assert policy_for("team-ab/app", policies) is None
    assert policy_for("team-b/app", policies) is None


def test_untagged_since_is_when_the_tag_moved_on_never_earlier() -> None:
    pushed = day(100)
    # latest: X (day 100) -> Y (day 40) -> Z (day 10): X untagged since day 40.
    history = {"latest": {d(1): day(100), d(2): day(40), d(3): day(10)}}
    assert untagged_since(d(1), pushed, history, {"latest": day(10)}) == day(40)
    # X -> Y -> Z -> Y again: Y's history moved to day 5; the bound is Z's day 10 (later than the truth).
    history = {"latest": {d(1): day(100), d(2): day(5), d(3): day(10)}}
    assert untagged_since(d(1), pushed, history, {"latest": day(5)}) == day(10)
    # No tag ever named it: its push time.
    assert untagged_since(d(9), pushed, history, {"latest": day(5)}) == pushed
    assert untagged_since(d(9), None, history, {}) is None


def test_policies_json_round_trip_and_bad_input_names_the_key() -> None:
    policies = {"team-a": Policy(3, 30, ("v*",))}
    assert parse_policies({ns: p.to_json() for ns, p in policies.items()}) == policies
    for doc, key in (
        ({"team-a": {"keepLast": 0}}, "retention.team-a.keepLast"),
        ({"team-a": {"keepLast": True}}, "retention.team-a.keepLast"),
        ({"team-a": {"keeplast": 3}}, "retention.team-a"),
        ({"Team A": {"keepLast": 3}}, "retention.Team A"),
        ({"team-a": {"protect": "v*"}}, "retention.team-a.protect"),
    ):
        with pytest.raises(PolicyError, match=key.replace(".", r"\.")):
            parse_policies(doc)


def test_the_window_runs_retention_first_only_for_a_stack_with_policies(record_variant: Any) -> None:
    import base64

    from tests.helpers import recording

    def tasks(resources: Any) -> dict[str, Any]:
        return {r.name: r.inputs for r in resources if r.type == "aws:ssm/maintenanceWindowTask:MaintenanceWindowTask"}

    plain = tasks(recording("dev").resources)
    assert sorted(plain) == ["maintenance-gc-gc", "maintenance-gc-read-only", "maintenance-gc-read-write"]
    policies = {"team-a": {"keepLast": 20, "protect": ["v*"]}}
    with_retention = tasks(record_variant("dev", {"storage": {"retention": policies}}).resources)
    task = with_retention["maintenance-gc-retention"]
    assert task["priority"] == 0 and task["maxConcurrency"] == "1" and task["maxErrors"] == "0"
    assert min(t["priority"] for name, t in with_retention.items() if name != "maintenance-gc-retention") == 1
    commands = task["taskInvocationParameters"]["runCommandParameters"]["parameters"][0]["values"]
    (line,) = [c for c in commands if c.startswith('bash "$script" retention ')]
    sent = line.split()[3]
    assert json.loads(base64.b64decode(sent)) == policies, "the host gets exactly the stack's policies"


# --- the host side: the script's retention action (stand-ins), and SSM ------------------------------


def host_script(tmp_path: Any) -> tuple[Any, Any, Any]:
    """The rendered maintenance script with a stand-in release whose python records its arguments."""
    import stat

    from host.maintenance import render_maintenance_script

    release = tmp_path / "release"
    (release / "venv" / "bin").mkdir(parents=True)
    python = release / "venv" / "bin" / "python"
    calls = tmp_path / "calls"
    python.write_text(f'#!/bin/bash\necho "PYTHONPATH=$PYTHONPATH $*" >>{calls}\ncat "${{4}}" >>{calls}\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    dropin = tmp_path / "unit.d" / "50-read-only.conf"
    script = tmp_path / "registry-maintenance.sh"
    script.write_text(render_maintenance_script(dropin_file=str(dropin), release_dir=str(release)))
    return script, dropin, calls


def test_the_host_script_runs_retention_only_on_a_writable_host(tmp_path: Any) -> None:
    import base64
    import subprocess

    script, dropin, calls = host_script(tmp_path)
    policies = '{"team-a":{"keepLast":3}}'
    arg = base64.b64encode(policies.encode()).decode()

    def run(*argv: str) -> Any:
        return subprocess.run(["bash", str(script), *argv], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})  # fmt: skip

    done = run("retention-dry-run", arg)
    assert done.returncode == 0, done.stderr
    first, policy = calls.read_text().splitlines()
    assert first.startswith(f"PYTHONPATH={tmp_path}/release/app -m retention --policy-file ")
    assert "--registry-url https://127.0.0.1:5000" in first and "--server-name registry.internal" in first
    assert "--signing-key /etc/registry-token/signing.key" in first and first.endswith("--dry-run")
    assert policy == policies
    calls.unlink()
    assert run("retention").returncode != 0, "no policies: refused"
    dropin.parent.mkdir()
    dropin.write_text("[Service]\n")
    refused = run("retention", arg)
    assert refused.returncode != 0 and "read-only" in refused.stderr and not calls.exists()


def test_maintenance_commands_take_policies_for_retention_only() -> None:
    from host.maintenance import maintenance_commands

    with pytest.raises(ValueError, match="the retention actions, and only they"):
        maintenance_commands("retention")
    with pytest.raises(ValueError, match="the retention actions, and only they"):
        maintenance_commands("gc", "{}")


def test_aws_retention_runs_on_one_host_through_ssm() -> None:
    import base64
    import uuid

    from fleet.maintenance import AwsFleet
    from tests.helpers.aws_fake import FakeClient

    group = {
        "AutoScalingGroupName": "g",
        "Instances": [{"InstanceId": "i-0aaaaaaaaaaaaaaaa", "LifecycleState": "InService"}],
    }
    autoscaling = FakeClient("autoscaling", {"describe_auto_scaling_groups": lambda p: {"AutoScalingGroups": [group]}})
    ssm = FakeClient(
        "ssm",
        {
            "send_command": lambda p: {"Command": {"CommandId": str(uuid.uuid4())}},
            "get_command_invocation": lambda p: {"Status": "Success", "StandardOutputContent": "delete x\nkeep y\n"},
        },
    )
    lines: list[str] = []
    AwsFleet("dev", autoscaling, ssm, poll_seconds=0, sleep=lambda s: None).retention(
        '{"team-a":{"keepLast":3}}', True, lines.append
    )
    (send,) = [p for name, p in ssm.calls if name == "send_command"]
    action = send["Parameters"]["commands"][4].split()
    assert action[2] == "retention-dry-run" and base64.b64decode(action[3]) == b'{"team-a":{"keepLast":3}}'
    assert lines[-2:] == ["delete x", "keep y"]
    assert "suspend_processes" not in autoscaling.names(), "retention needs a writable fleet: no window"


def test_cli_retention_for_a_stack_without_policies_deletes_nothing() -> None:
    from fleet.retention import retention_command
    from tests.helpers import settings_with

    class NoFleet:
        description = "none"

        def retention(self, *args: Any) -> None:
            raise AssertionError("retention ran without policies")

    lines: list[str] = []
    retention_command("dev", settings_with("dev", {}), NoFleet(), False, lines.append)  # type: ignore[arg-type]
    assert lines == ["stack dev sets no storage.retention: retention keeps everything; nothing was deleted"]


def test_retention_imports_only_what_a_host_has() -> None:
    """A host runs retention/ from the token service's release: the artifact's packages (host/artifact.py)
    and the pinned lock's distributions, nothing of infra/, fleet/, host/ or lab/."""
    import ast
    import sys
    from pathlib import Path

    from host.artifact import shipped_packages

    shipped = set(shipped_packages())
    assert "retention" in shipped
    locked = {"yaml", "boto3", "botocore", "urllib3", "jwt", "cryptography"}
    for path in sorted(Path("retention").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in shipped | locked | set(sys.stdlib_module_names) | {"__future__"}, f"{path}: {name}"


def test_the_host_command_refuses_bad_input_before_any_request(tmp_path: Any, capsys: Any) -> None:
    """`python -m retention` on a host: a config without token auth or without deletes, bad policies, a
    missing key: exit 2, the problem named, nothing asked of the registry (no URL answers here)."""
    import yaml

    from host.registry_config import RegistryConfig, TokenAuth, render_registry_config
    from retention.__main__ import main

    token = TokenAuth("https://r.example.com/auth", "r.example.com", "registry-fleet-dev", "/etc/t.crt")
    config = RegistryConfig(environment="dev", public_url="https://r.example.com", bucket="b", region="eu-west-1")
    files = {
        "htpasswd.yml": render_registry_config(config),
        "token.yml": render_registry_config(RegistryConfig(**{**config.__dict__, "token": token})),
    }
    no_delete = yaml.safe_load(files["token.yml"])
    no_delete["storage"]["delete"] = {"enabled": False}
    files["no-delete.yml"] = yaml.safe_dump(no_delete)
    for name, text in {
        **files,
        "good.json": '{"team-a":{"keepLast":2}}',
        "bad.json": '{"team-a":{"keepLast":0}}',
    }.items():
        (tmp_path / name).write_text(text)

    def run(config_file: str, policy: str) -> tuple[int, str]:
        none = str(tmp_path / "none")
        code = main(["--policy-file", str(tmp_path / policy), "--registry-config", str(tmp_path / config_file),
                     "--registry-url", "https://127.0.0.1:9", "--ca-file", none, "--signing-key", none,
                     "--signing-cert", none])  # fmt: skip
        return code, capsys.readouterr().err

    for config_file, policy, says in (
        ("htpasswd.yml", "good.json", "no auth.token: retention mints tokens, it needs token mode"),
        ("no-delete.yml", "good.json", "storage.delete.enabled is not true"),
        ("token.yml", "bad.json", "retention.team-a.keepLast: 0 is not a whole number of at least 1"),
        ("token.yml", "good.json", "signing key"),
    ):
        code, err = run(config_file, policy)
        assert code == 2 and says in err and "nothing was deleted" in err, err
