"""Shared fixtures: each stack's program is recorded once per test session.

`stack_recording` runs the real program for every stack file under the recording engine
(fleet/engine.py). `record_variant(stack, overrides)` records a stack with settings changed,
for the negative tests that break a practice and check that the guard catches it.
Helpers that test modules import by name live in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleet.engine import Recording, record
from tests.helpers import STACKS, recording, settings_with


@pytest.fixture(params=STACKS)
def stack_recording(request: pytest.FixtureRequest) -> Recording:
    return recording(request.param)


@pytest.fixture
def record_variant() -> Callable[..., Recording]:
    def run(stack: str, overrides: dict[str, Any]) -> Recording:
        return record(settings_with(stack, overrides))

    return run
