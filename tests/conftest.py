"""Shared fixtures: each stack's program is recorded once per test session.

`recording(stack)` runs the real program for a stack file under the recording engine
(fleet/engine.py). `record_variant(stack, **overrides)` records a stack with settings changed,
for the negative tests that break a practice and check that the guard catches it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from fleet.engine import Recording, record
from infra.settings import (
    Settings,
    available_stacks,
    deep_merge,
    merged_stack_config,
    settings_from_config,
)

STACKS = available_stacks()


def stack_config(stack: str) -> dict[str, Any]:
    return merged_stack_config(stack)


def settings_with(stack: str, overrides: dict[str, Any]) -> Settings:
    return settings_from_config(stack, deep_merge(stack_config(stack), overrides))


@functools.cache
def recording(stack: str) -> Recording:
    rec = record(settings_from_config(stack, stack_config(stack)))
    # The silent-mock trap: a program that registered nothing would pass every "for all" check.
    assert len(rec.resources) > 50, f"stack {stack}: only {len(rec.resources)} resources recorded"
    return rec


@pytest.fixture(params=STACKS)
def stack_recording(request: pytest.FixtureRequest) -> Recording:
    return recording(request.param)


@pytest.fixture
def record_variant() -> Callable[..., Recording]:
    def run(stack: str, overrides: dict[str, Any]) -> Recording:
        return record(settings_with(stack, overrides))

    return run
