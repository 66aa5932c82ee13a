"""The one bounded wait of the tests: poll a condition until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(check: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy, and return that. It is checked once more
    after the deadline, so a loaded machine that slept past it still gets its last look."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
