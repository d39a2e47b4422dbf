"""What `python -m fleet promote` (and `trust-policy`) need from Pulumi, behind a small interface.

:class:`StackRunner` is the four operations a promotion performs on a stack; :class:`StackOutputs` reads
a deployed stack's outputs (`python -m fleet trust-policy`: the public signing key). :class:`AutomationRunner`
implements them over the Pulumi Automation API (which drives the `pulumi` CLI against the project in
the repository root); :class:`FakeRunner` implements them in memory for the tests.

No Pulumi CLI can be installed on the machines this repository is developed and tested on, so
:class:`AutomationRunner` is never run against a real backend here: it is kept thin, and only its
error path for a missing CLI and its reading of engine events are tested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from infra.settings import REPO_ROOT

if TYPE_CHECKING:
    from pulumi.automation import Stack

# The stack tag holding the commit of the last successful `up` made by a promotion.
COMMIT_TAG = "registry-fleet:commit"

INSTALL_HINT = (
    "install the Pulumi CLI (https://www.pulumi.com/docs/install/; in CI the pulumi/actions step does it) "
    "and make sure `pulumi` is on PATH"
)


class RunnerError(Exception):
    """Pulumi could not be driven: no CLI, no such stack, a failed preview or tag operation."""


class StackMissingError(RunnerError):
    """The stack does not exist in the backend the CLI is logged in to."""


@dataclass(frozen=True)
class Change:
    """One step of a preview. `op` is one of Pulumi's OpType values (create, update, replace, ...)."""

    urn: str
    type: str
    name: str
    op: str


@dataclass(frozen=True)
class PreviewResult:
    changes: list[Change]


@dataclass(frozen=True)
class UpResult:
    ok: bool
    summary: str


class StackRunner(Protocol):
    def last_deployed_commit(self, stack: str) -> str | None:
        """The commit recorded by the last successful promotion `up`; None if never deployed."""
        ...

    def preview(self, stack: str) -> PreviewResult: ...

    def up(self, stack: str, on_output: Callable[[str], None]) -> UpResult: ...

    def record_commit(self, stack: str, commit: str) -> None:
        """Record `commit` as the stack's deployed commit (after a successful `up` only)."""
        ...


class StackOutputs(Protocol):
    def stack_outputs(self, stack: str) -> dict[str, Any]:
        """The deployed stack's outputs, by name (secret ones included as values: callers read public ones)."""
        ...


def name_of(urn: str) -> str:
    """The logical name at the end of a URN (`urn:pulumi:dev::registry-fleet::aws:s3/bucket:Bucket::primary`)."""
    return urn.rsplit("::", 1)[-1]


# --- the real runner ---------------------------------------------------------------------------


class AutomationRunner:
    """The Automation API over the CLI-driven program in `work_dir` (Pulumi.yaml, stacks/).

    The backend (`pulumi login ...`), cloud credentials and the secrets provider come from the
    environment and the stack files, exactly as for a `pulumi up` typed in `work_dir`.
    """

    def __init__(
        self,
        work_dir: Path = REPO_ROOT,
        policy_packs: Sequence[str] = (),
        env_vars: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.policy_packs = list(policy_packs)
        self.env_vars = dict(env_vars or {})

    def _select(self, stack: str) -> Stack:
        from pulumi import automation as auto

        opts = auto.LocalWorkspaceOptions(env_vars=self.env_vars or None)
        try:
            return auto.select_stack(stack_name=stack, work_dir=str(self.work_dir), opts=opts)
        except FileNotFoundError as err:  # LocalWorkspace runs `pulumi version` first
            raise RunnerError(f"the Pulumi CLI was not found ({err.filename or 'pulumi'}): {INSTALL_HINT}") from err
        except auto.InvalidVersionError as err:
            raise RunnerError(f"the Pulumi CLI is too old for this SDK ({err}): {INSTALL_HINT}") from err
        except auto.StackNotFoundError as err:
            raise StackMissingError(
                f"stack {stack} does not exist in the backend you are logged in to: create it once with "
                f"`pulumi stack init {stack} --secrets-provider awskms://...` (docs/operating.md), "
                "or `pulumi login` to the right backend"
            ) from err
        except auto.CommandError as err:
            raise RunnerError(f"pulumi could not select stack {stack}: {err}") from err

    def last_deployed_commit(self, stack: str) -> str | None:
        from pulumi import automation as auto

        try:
            selected = self._select(stack)
        except StackMissingError:
            return None
        try:
            tags = selected.workspace.list_tags(stack)
        except auto.CommandError as err:
            raise RunnerError(f"pulumi could not read the tags of stack {stack}: {err}") from err
        return tags.get(COMMIT_TAG) or None

    def preview(self, stack: str) -> PreviewResult:
        from pulumi import automation as auto

        selected = self._select(stack)
        changes: list[Change] = []

        def on_event(event: auto.EngineEvent) -> None:
            change = change_from_event(event)
            if change is not None:
                changes.append(change)

        try:
            selected.preview(on_event=on_event, policy_packs=self.policy_packs or None, color="never")
        except auto.CommandError as err:
            raise RunnerError(f"pulumi preview of stack {stack} failed: {err}") from err
        return PreviewResult(changes)

    def up(self, stack: str, on_output: Callable[[str], None]) -> UpResult:
        from pulumi import automation as auto

        selected = self._select(stack)
        try:
            result = selected.up(
                on_output=on_output, on_error=on_output, policy_packs=self.policy_packs or None, color="never"
            )
        except auto.ConcurrentUpdateError as err:
            return UpResult(ok=False, summary=f"another update of stack {stack} is in progress:\n{_tail(err)}")
        except auto.CommandError as err:
            return UpResult(ok=False, summary=f"pulumi up of stack {stack} failed; its last lines:\n{_tail(err)}")
        summary = result.summary
        counts = ", ".join(f"{op}: {n}" for op, n in sorted((summary.resource_changes or {}).items()))
        return UpResult(ok=summary.result == "succeeded", summary=f"{summary.result} ({counts or 'no changes'})")

    def stack_outputs(self, stack: str) -> dict[str, Any]:
        from pulumi import automation as auto

        selected = self._select(stack)
        try:
            outputs = selected.outputs()
        except auto.CommandError as err:
            raise RunnerError(f"pulumi could not read the outputs of stack {stack}: {err}") from err
        return {name: output.value for name, output in outputs.items()}

    def record_commit(self, stack: str, commit: str) -> None:
        from pulumi import automation as auto

        selected = self._select(stack)
        try:
            selected.set_tag(COMMIT_TAG, commit)
        except auto.CommandError as err:
            raise RunnerError(f"pulumi could not tag stack {stack} with {COMMIT_TAG}={commit}: {err}") from err


def _tail(err: Exception, lines: int = 15) -> str:
    """The end of a CLI error (its output was streamed already)."""
    return "\n".join(str(err).strip().splitlines()[-lines:])


def change_from_event(event: object) -> Change | None:
    """The step announced by an engine event (a ResourcePreEvent), or None for any other event."""
    pre = getattr(event, "resource_pre_event", None)
    if pre is None:
        return None
    meta = pre.metadata
    op = getattr(meta.op, "value", meta.op)
    return Change(urn=meta.urn, type=meta.type, name=name_of(meta.urn), op=str(op))


# --- the fake runner ---------------------------------------------------------------------------


@dataclass
class FakeStack:
    """One stack of a :class:`FakeRunner`: what it reports and how its `up` ends."""

    last_commit: str | None = None
    changes: list[Change] = field(default_factory=list)
    up_output: list[str] = field(default_factory=lambda: ["Updating (fake):", "Resources: 0 changed"])
    up_ok: bool = True
    # Raised by `up` after `up_output` was emitted (the CLI dying halfway, say).
    up_error: Exception | None = None
    # What `stack_outputs` returns (the outputs of the last `up`).
    outputs: dict[str, Any] = field(default_factory=dict)


class FakeRunner:
    """In memory. Unknown stacks were never deployed and cannot be previewed or updated."""

    def __init__(self, stacks: Mapping[str, FakeStack] | None = None) -> None:
        self.stacks: dict[str, FakeStack] = dict(stacks or {})
        self.calls: list[tuple[str, str]] = []
        self.recorded: dict[str, str] = {}

    def _get(self, stack: str) -> FakeStack:
        if stack not in self.stacks:
            raise StackMissingError(f"stack {stack} does not exist (fake runner)")
        return self.stacks[stack]

    def last_deployed_commit(self, stack: str) -> str | None:
        self.calls.append(("last_deployed_commit", stack))
        return self.stacks[stack].last_commit if stack in self.stacks else None

    def preview(self, stack: str) -> PreviewResult:
        self.calls.append(("preview", stack))
        return PreviewResult(list(self._get(stack).changes))

    def up(self, stack: str, on_output: Callable[[str], None]) -> UpResult:
        self.calls.append(("up", stack))
        fake = self._get(stack)
        for line in fake.up_output:
            on_output(line)
        if fake.up_error is not None:
            raise fake.up_error
        return UpResult(ok=fake.up_ok, summary="succeeded" if fake.up_ok else "failed: fake up error")

    def stack_outputs(self, stack: str) -> dict[str, Any]:
        self.calls.append(("stack_outputs", stack))
        return dict(self._get(stack).outputs)

    def record_commit(self, stack: str, commit: str) -> None:
        self.calls.append(("record_commit", stack))
        self._get(stack).last_commit = commit
        self.recorded[stack] = commit
