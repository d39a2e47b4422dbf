"""Waiting for a process the tests started (a registry, the token service, a lab's instances) to show
what a test expects: `wait_for` polls a check until it holds, and fails naming what was not seen once
the timeout passes, so that a test never sleeps a fixed time and a slow machine only waits longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s")
