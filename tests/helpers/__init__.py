"""Helpers the test modules import: the stacks, their merged config, settings with overrides, recordings.

Anything a test module imports by name lives in this package, never in another test module, so that
it is imported once, as `tests.helpers...`, whichever module asks first. The stack helpers are here;
the others are in modules named for what they help with: `token_service` (the token service in
process), `registry` (the real registry on loopback), `lab` (skopeo against a running lab),
`waiting` (polling a process until it shows something), `bench` (concurrent clients for the
benchmarks), `sdk_shapes` (recorded inputs against the provider SDKs' own argument types). Fixtures
live in the test modules, or in tests/conftest.py when several modules use the same one.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from fleet.engine import Recording, record
from infra.settings import (
    Settings,
    available_stacks,
    deep_merge,
    merged_stack_config,
    settings_from_config,
)

STACKS = available_stacks()
DEV_PULL_POLICIES = (
    "    pullPolicies:\n      team-a/release: {requireSigned: true}\n"
    "      # Pulls from team-a/scanned are refused for images with a HIGH or CRITICAL finding, and for images\n"
    "      # not scanned yet (unscanned defaults to deny where blockSeverity is set): docs/scanning.md.\n"
    "      team-a/scanned: {blockSeverity: HIGH}\n"
)


def stacks_with_unprotected_dev(tmp_path: Path) -> Path:
    """A copy of stacks/ in which dev protects no namespace (its `access.pullPolicies` taken out)."""
    stacks = tmp_path / "stacks"
    shutil.copytree(Path(__file__).resolve().parent.parent.parent / "stacks", stacks)
    dev = stacks / "Pulumi.dev.yaml"
    text = dev.read_text()
    if DEV_PULL_POLICIES not in text:
        raise AssertionError(f"stacks/Pulumi.dev.yaml no longer has {DEV_PULL_POLICIES!r}: update this helper")
    dev.write_text(text.replace(DEV_PULL_POLICIES, ""))
    return stacks


def stack_config(stack: str) -> dict[str, Any]:
    return merged_stack_config(stack)


def settings_with(stack: str, overrides: dict[str, Any]) -> Settings:
    return settings_from_config(stack, deep_merge(stack_config(stack), overrides))


def htpasswd_settings(stack: str = "dev") -> Settings:
    """A stack in htpasswd mode: one lab user who may push and delete (the whole access object replaced)."""
    config = stack_config(stack)
    config["access"] = {"mode": "htpasswd"}
    return settings_from_config(stack, config)


@functools.cache
def recording(stack: str) -> Recording:
    """The stack's program recorded once per test session (fleet/engine.py)."""
    rec = record(settings_from_config(stack, stack_config(stack)))
    # The silent-mock trap: a program that registered nothing would pass every "for all" check.
    assert len(rec.resources) > 50, f"stack {stack}: only {len(rec.resources)} resources recorded"
    return rec
