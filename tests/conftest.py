"""Shared fixtures: each stack's program is recorded once per test session; the token service's clock.

`stack_recording` runs the real program for every stack file under the recording engine
(fleet/engine.py). `record_variant(stack, overrides)` records a stack with settings changed,
for the negative tests that break a practice and check that the guard catches it. `clock` is the
fake clock the in-process token service tests move by hand (test_auth_unit.py, test_auth_oauth.py).
Fixtures used by one test module stay in that module. Helpers that test modules import by name live
in the tests/helpers package: the stack helpers in tests/helpers/__init__.py, the others in a module
of it named for what they help with (token_service, registry, lab).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleet.engine import Recording, record
from tests.helpers import STACKS, recording, settings_with
from tests.helpers.token_service import Clock


@pytest.fixture(params=STACKS)
def stack_recording(request: pytest.FixtureRequest) -> Recording:
    return recording(request.param)


@pytest.fixture
def record_variant() -> Callable[..., Recording]:
    def run(stack: str, overrides: dict[str, Any]) -> Recording:
        return record(settings_with(stack, overrides))

    return run


@pytest.fixture
def clock() -> Clock:
    return Clock()
