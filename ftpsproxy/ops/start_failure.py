"""A start-up that cannot go on: one line on stderr naming the option, no traceback.

Raised once twistd runs the services, where its own error path prints a traceback:
by then its logger has taken over ``sys.stderr`` (so Python's own one-line exit
message would go to the log, not the terminal), and twistd removes its pid file and
tells a daemonizing parent why only for an ``Exception``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from twisted.logger import Logger

log = Logger()


class StartFailure(SystemExit, Exception):
    """Both an ``Exception`` (twistd cleans up and reports it) and a ``SystemExit``
    (Python then exits with status 1 and prints nothing more)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1


def fail_start(message: str) -> NoReturn:
    """Stop the start: *message* (``listen tcp:21: ...``) on the real stderr and in the log."""
    stderr = sys.__stderr__
    if stderr is not None:
        stderr.write(f"ftpsproxy: {message}\n")
        stderr.flush()
    log.critical("start-up failed: {message}", message=message)
    raise StartFailure(message)
