"""Waiting for a condition in tests: one bounded poll, with a message that says what."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between two looks at the condition.
POLL_INTERVAL = 0.05


def wait_until(
    condition: Callable[[], object],
    timeout: float = 15.0,
    what: str = "condition",
    *,
    interval: float = POLL_INTERVAL,
    error: Callable[[], BaseException] | None = None,
) -> float:
    """Poll *condition* until it is true; the seconds that took.

    After *timeout* seconds raises ``AssertionError`` naming *what*, or the exception
    ``error()`` returns (a process wrapper's, carrying its log). Exceptions from
    *condition* propagate at once: a condition may check that a process is still alive.
    """
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() >= deadline:
            if error is not None:
                raise error()
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started
