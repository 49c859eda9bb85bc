"""The CI rule: what this machine lacks skips a test, but fails it under CI=true.

CI installs every tool, server and kernel feature the tests use (``tests/run.sh``), so
a missing one there is a broken setup, not a reason to skip: a skipped test proves
nothing, and a suite that skips quietly looks as green as one that ran.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """Whether this run is CI's (the environment has ``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Skip the test for something missing here, naming it; fail it under CI=true."""
    if under_ci():
        pytest.fail(f"{message} (CI=true: missing here is a failure, not a skip)")
    pytest.skip(message)


def require(available: bool, message: str) -> None:
    """:func:`unavailable` with *message* unless *available*."""
    if not available:
        unavailable(message)
