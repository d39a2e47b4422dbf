"""Promotion gates (fleet/promote.py) over the fake runner, and the real runner's seams.

Each gate has a case that passes and one that refuses. The real AutomationRunner needs the Pulumi
CLI, which cannot be installed here: only its missing-CLI error and its reading of the SDK's own
engine events are tested.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from fleet.promote import (
    DESTRUCTIVE_OPS,
    ENVIRONMENTS,
    STATEFUL_REASONS,
    STATEFUL_TYPES,
    PromotionFailed,
    PromotionRefused,
    promote,
    route,
)
from fleet.runner import (
    COMMIT_TAG,
    AutomationRunner,
    Change,
    FakeRunner,
    FakeStack,
    RunnerError,
    change_from_event,
)
from infra.settings import STACKS_DIR, SettingsError, load_stack_settings
from tests.helpers import recording

C1 = "1" * 40
C2 = "2" * 40
BUCKET = "aws:s3/bucket:Bucket"
KEY = "aws:kms/key:Key"


def change(op: str, type_: str, name: str, stack: str = "prod") -> Change:
    return Change(urn=f"urn:pulumi:{stack}::registry-fleet::{type_}::{name}", type=type_, name=name, op=op)


def real_validate(stack: str) -> None:
    load_stack_settings(stack)


class Run:
    """One promotion with every collaborator recorded."""

    def __init__(self, runner: FakeRunner, audit_passes: bool = True, validate: Callable[[str], object] | None = None):
        self.runner = runner
        self.audit_passes = audit_passes
        self.validate = validate or real_validate
        self.out: list[str] = []
        self.audited: list[str] = []

    def audit(self, stack: str) -> bool:
        self.audited.append(stack)
        return self.audit_passes

    def __call__(
        self,
        to_env: str,
        *,
        commit: str = C1,
        from_env: str | None = None,
        stack: str | None = None,
        allow_replace: Sequence[str] = (),
    ) -> None:
        promote(
            to_env=to_env,
            from_env=from_env,
            stack=stack,
            commit=commit,
            allow_replace=allow_replace,
            runner=self.runner,
            audit=self.audit,
            validate=self.validate,
            out=self.out.append,
        )

    def refused(self, to_env: str, **kwargs: Any) -> PromotionRefused:
        with pytest.raises(PromotionRefused) as info:
            self(to_env, **kwargs)
        assert "up" not in [call for call, _ in self.runner.calls], "a refused promotion must not run up"
        assert not self.runner.recorded
        return info.value


def staged(changes: Sequence[Change] = (), *, source: str | None = C1, **target: Any) -> FakeRunner:
    """staging runs `source`; prod previews `changes`."""
    return FakeRunner({"staging": FakeStack(last_commit=source), "prod": FakeStack(changes=list(changes), **target)})


# --- the happy path -------------------------------------------------------------------------------


def test_success_streams_output_and_records_the_commit() -> None:
    runner = staged(
        [change("update", "aws:autoscaling/group:Group", "hosts")],
        up_output=["Updating (prod):", "~ aws:autoscaling/group:Group hosts updated", "Resources: 1 updated"],
    )
    run = Run(runner)
    run("prod")
    assert runner.recorded == {"prod": C1}
    assert runner.stacks["prod"].last_commit == C1
    assert runner.calls == [
        ("last_deployed_commit", "staging"),
        ("preview", "prod"),
        ("up", "prod"),
        ("record_commit", "prod"),
    ]
    assert run.audited == ["prod"]
    streamed = run.out[run.out.index(f"pulumi up prod at {C1}") + 1 :]
    assert streamed[:3] == ["Updating (prod):", "~ aws:autoscaling/group:Group hosts updated", "Resources: 1 updated"]
    assert streamed[-1].startswith(f"promoted {C1} to prod")


def test_promoting_to_dev_has_no_source_rule() -> None:
    runner = FakeRunner({"dev": FakeStack()})
    run = Run(runner)
    run("dev")
    assert ("last_deployed_commit", "staging") not in runner.calls
    assert [c for c, _ in runner.calls] == ["preview", "up", "record_commit"]
    assert runner.recorded == {"dev": C1}


def test_a_promoted_commit_becomes_the_next_source() -> None:
    runner = FakeRunner({"dev": FakeStack(), "staging": FakeStack(), "prod": FakeStack()})
    run = Run(runner)
    for env in ENVIRONMENTS:
        run(env, commit=C2)
    assert runner.recorded == {"dev": C2, "staging": C2, "prod": C2}


# --- rule 1: the target's settings ----------------------------------------------------------------


def test_invalid_target_config_is_refused_with_every_problem(tmp_path: Path) -> None:
    shutil.copy(STACKS_DIR / "Pulumi.prod.yaml", tmp_path / "Pulumi.prod.yaml")
    text = (tmp_path / "Pulumi.prod.yaml").read_text()
    text = text.replace("minSize: 3", "minSize: 1").replace("cidr: 10.42.0.0/16", "cidr: 8.8.0.0/16")
    (tmp_path / "Pulumi.prod.yaml").write_text(text)

    def validate(stack: str) -> object:
        return load_stack_settings(stack, stacks_dir=tmp_path)

    with pytest.raises(SettingsError):  # the callable really raises the settings model's error
        validate("prod")
    runner = staged()
    err = Run(runner, validate=validate).refused("prod")
    assert err.rule == "target-config"
    message = str(err)
    assert "fleet.minSize: 1 is below 2" in message
    assert "network.cidr" in message and "private" in message
    assert "2 problem(s)" in message
    assert "python -m fleet validate prod" in message
    assert runner.calls == [], "the config rule runs first, before any backend call"


def test_unknown_target_stack_is_refused_by_the_config_rule() -> None:
    runner = FakeRunner({"staging": FakeStack(last_commit=C1), "nosuch-prod": FakeStack()})
    err = Run(runner).refused("prod", stack="nosuch-prod")
    assert err.rule == "target-config"
    assert "known stacks" in str(err)


# --- rule 2: the source runs this commit ----------------------------------------------------------


def test_source_that_deployed_another_commit_is_refused_naming_both() -> None:
    runner = staged(source=C2)
    err = Run(runner).refused("prod", commit=C1)
    assert err.rule == "source-commit"
    assert C1 in str(err) and C2 in str(err) and "staging" in str(err)
    assert ("preview", "prod") not in runner.calls


def test_source_never_deployed_is_refused() -> None:
    err = Run(staged(source=None)).refused("prod")
    assert err.rule == "source-commit"
    assert "source stack staging has no recorded deployment" in str(err)
    assert f"promote {C1} to staging first" in str(err)


def test_source_stack_unknown_to_the_backend_counts_as_never_deployed() -> None:
    runner = FakeRunner({"prod": FakeStack()})
    assert Run(runner).refused("prod").rule == "source-commit"


# --- rule 3: stateful resources -------------------------------------------------------------------


def test_preview_replacing_the_bucket_is_refused() -> None:
    bucket = [change(op, BUCKET, "registry-primary") for op in ("create-replacement", "replace", "delete-replaced")]
    runner = staged([change("same", BUCKET, "registry-logs"), *bucket, change("update", KEY, "registry")])
    err = Run(runner).refused("prod")
    assert err.rule == "stateful-replace"
    message = str(err)
    assert "1 stateful resource(s)" in message
    assert f"create-replacement/replace/delete-replaced {BUCKET} registry-primary" in message
    assert bucket[0].urn in message
    assert "registry-logs" not in message
    assert f"--allow-replace {BUCKET}" in message


def test_every_offending_resource_is_listed() -> None:
    runner = staged(
        [
            change("replace", BUCKET, "registry-primary"),
            change("delete", KEY, "registry-replica"),
            change("replace", "aws:lb/loadBalancer:LoadBalancer", "registry"),
            change("delete", "aws:secretsmanager/secret:Secret", "http-secret"),
        ]
    )
    message = str(Run(runner).refused("prod"))
    assert "4 stateful resource(s)" in message
    for name in ("registry-primary", "registry-replica", "registry (", "http-secret"):
        assert name in message


def test_deleting_a_kms_key_is_refused() -> None:
    runner = staged([change("delete", KEY, "registry-replica")])
    err = Run(runner).refused("prod", allow_replace=[BUCKET])  # allowing buckets does not allow keys
    assert err.rule == "stateful-replace"
    assert f"delete {KEY} registry-replica" in str(err)
    assert STATEFUL_REASONS[KEY] in str(err)


def test_replace_allowed_by_type_goes_ahead_and_says_so() -> None:
    runner = staged([change("replace", BUCKET, "registry-primary"), change("create-replacement", BUCKET, "x")])
    run = Run(runner)
    run("prod", allow_replace=[BUCKET])
    assert runner.recorded == {"prod": C1}
    assert any("allowed by --allow-replace" in line and "registry-primary" in line for line in run.out)


def test_replacing_stateless_resources_needs_no_leave() -> None:
    runner = staged(
        [
            change("replace", "aws:ec2/launchTemplate:LaunchTemplate", "hosts"),
            change("delete", "aws:iam/rolePolicy:RolePolicy", "old"),
            change("create", BUCKET, "registry-new"),
            change("update", BUCKET, "registry-primary"),
        ]
    )
    Run(runner)("prod")
    assert runner.recorded == {"prod": C1}


def test_unknown_allow_replace_type_is_refused_with_the_known_list() -> None:
    runner = staged()
    err = Run(runner).refused("prod", allow_replace=["aws:s3/bucketV2:BucketV2", "Bucket"])
    assert err.rule == "arguments"
    assert "unknown: Bucket, aws:s3/bucketV2:BucketV2" in str(err)
    for known in STATEFUL_TYPES:
        assert known in str(err)
    assert runner.calls == []


def test_stateful_types_are_real_type_tokens_of_the_program() -> None:
    recorded = {r.type for r in recording("prod").resources}
    assert recorded >= STATEFUL_TYPES, f"not in the program's graph: {sorted(STATEFUL_TYPES - recorded)}"
    assert {"aws:s3/bucket:Bucket", KEY, "aws:backup/vault:Vault", "aws:secretsmanager/secret:Secret"} <= (
        STATEFUL_TYPES
    )
    assert "aws:lb/loadBalancer:LoadBalancer" in STATEFUL_TYPES
    assert {"replace", "create-replacement", "delete-replaced", "delete"} == DESTRUCTIVE_OPS
    assert {op.value for op in auto.OpType} >= DESTRUCTIVE_OPS


# --- rule 4: the audit ----------------------------------------------------------------------------


def test_failing_audit_is_refused() -> None:
    run = Run(staged(), audit_passes=False)
    err = run.refused("prod")
    assert err.rule == "audit"
    assert "python -m fleet audit prod" in str(err)
    assert run.audited == ["prod"]


# --- up -------------------------------------------------------------------------------------------


def test_up_failing_halfway_records_nothing() -> None:
    runner = staged(up_output=["Updating (prod):", "+ aws:ec2/subnet:Subnet private-0 creating"], up_ok=False)
    run = Run(runner)
    with pytest.raises(PromotionFailed) as info:
        run("prod")
    assert info.value.rule == "up"
    assert "nothing was recorded" in str(info.value)
    assert runner.recorded == {}
    assert runner.stacks["prod"].last_commit is None
    assert "+ aws:ec2/subnet:Subnet private-0 creating" in run.out  # the output was streamed before failing


def test_up_raising_halfway_records_nothing() -> None:
    runner = staged(up_output=["Updating (prod):"], up_error=RunnerError("pulumi exited with signal 9"))
    run = Run(runner)
    with pytest.raises(PromotionFailed) as info:
        run("prod")
    assert "signal 9" in str(info.value) and "nothing was recorded" in str(info.value)
    assert isinstance(info.value.__cause__, RunnerError)
    assert runner.recorded == {}
    assert "Updating (prod):" in run.out


def test_recording_failure_after_a_good_up_is_reported() -> None:
    class TagFails(FakeRunner):
        def record_commit(self, stack: str, commit: str) -> None:
            raise RunnerError("backend unreachable")

    runner = TagFails({"staging": FakeStack(last_commit=C1), "prod": FakeStack()})
    with pytest.raises(PromotionFailed) as info:
        Run(runner)("prod")
    assert info.value.rule == "record"
    assert "was updated" in str(info.value) and "backend unreachable" in str(info.value)


# --- routes: team stacks and arguments ------------------------------------------------------------


def test_team_stack_is_promoted_from_the_same_teams_previous_environment() -> None:
    assert route("prod", None, "payments-prod").source == "payments-staging"
    assert route("prod", "dev", "payments-prod").source == "payments-dev"
    assert route("prod", None, None).source == "staging"
    assert route("staging", None, None).source == "dev"
    assert route("dev", None, "payments-dev").source is None

    # payments has only prod in stacks/: the source is given by name to the fake backend.
    refused = Run(FakeRunner({"staging": FakeStack(last_commit=C1), "payments-prod": FakeStack()}))
    err = refused.refused("prod", stack="payments-prod")
    assert err.rule == "source-commit" and "payments-staging" in str(err)

    runner = FakeRunner({"payments-staging": FakeStack(last_commit=C1), "payments-prod": FakeStack()})
    run = Run(runner)
    run("prod", stack="payments-prod")
    assert ("last_deployed_commit", "payments-staging") in runner.calls
    assert run.audited == ["payments-prod"]
    assert runner.recorded == {"payments-prod": C1}


@pytest.mark.parametrize(
    ("to_env", "from_env", "stack", "says"),
    [
        ("staging", None, "payments-prod", "is not a staging stack"),
        ("prod", "prod", None, "cannot promote from 'prod' to 'prod'"),
        ("staging", "prod", None, "cannot promote from 'prod' to 'staging'"),
        ("dev", "dev", None, "none: dev is deployed from main"),
        ("qa", None, None, "unknown environment 'qa'"),
    ],
)
def test_bad_routes_are_refused(to_env: str, from_env: str | None, stack: str | None, says: str) -> None:
    runner = FakeRunner()
    err = Run(runner).refused(to_env, from_env=from_env, stack=stack)
    assert err.rule == "arguments"
    assert says in str(err)
    assert runner.calls == []


@pytest.mark.parametrize("commit", ["1111111", "1" * 39, "A" * 40, "main", ""])
def test_commit_must_be_a_full_sha(commit: str) -> None:
    err = Run(staged()).refused("prod", commit=commit)
    assert err.rule == "arguments" and "full commit SHA" in str(err)


# --- the real runner's seams ----------------------------------------------------------------------


def test_engine_events_become_changes() -> None:
    urn = "urn:pulumi:prod::registry-fleet::registry-fleet:index:RegistryStorage$aws:s3/bucket:Bucket::primary"
    pre = auto.EngineEvent.from_json(
        {
            "sequence": 3,
            "timestamp": 0,
            "resourcePreEvent": {"metadata": {"op": "replace", "urn": urn, "type": BUCKET, "provider": ""}},
        }
    )
    assert change_from_event(pre) == Change(urn=urn, type=BUCKET, name="primary", op="replace")
    other = auto.EngineEvent.from_json({"sequence": 4, "timestamp": 0, "diagnosticEvent": {"message": "hi"}})
    assert change_from_event(other) is None


@pytest.mark.parametrize("call", ["preview", "up", "last_deployed_commit", "record_commit"])
def test_missing_pulumi_cli_is_a_clear_runner_error(call: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `pulumi` anywhere
    runner = AutomationRunner(work_dir=tmp_path)
    actions: dict[str, Callable[[], object]] = {
        "preview": lambda: runner.preview("dev"),
        "up": lambda: runner.up("dev", print),
        "last_deployed_commit": lambda: runner.last_deployed_commit("dev"),
        "record_commit": lambda: runner.record_commit("dev", C1),
    }
    with pytest.raises(RunnerError, match="install the Pulumi CLI"):
        actions[call]()


def test_commit_tag_is_namespaced_by_the_project() -> None:
    assert COMMIT_TAG == "registry-fleet:commit"
