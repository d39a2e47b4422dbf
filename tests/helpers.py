"""Helpers the test modules import: the stacks, their merged config, settings with overrides, recordings.

Fixtures live in tests/conftest.py (pytest finds them there); anything a test module imports by name
lives here, so that it is imported once, as `tests.helpers`, whichever module asks first.
"""

from __future__ import annotations

import functools
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


def stack_config(stack: str) -> dict[str, Any]:
    return merged_stack_config(stack)


def settings_with(stack: str, overrides: dict[str, Any]) -> Settings:
    return settings_from_config(stack, deep_merge(stack_config(stack), overrides))


@functools.cache
def recording(stack: str) -> Recording:
    """The stack's program recorded once per test session (fleet/engine.py)."""
    rec = record(settings_from_config(stack, stack_config(stack)))
    # The silent-mock trap: a program that registered nothing would pass every "for all" check.
    assert len(rec.resources) > 50, f"stack {stack}: only {len(rec.resources)} resources recorded"
    return rec
