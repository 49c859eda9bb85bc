"""The commands a client pipelined while an earlier one waits for the backend's reply.

FTP answers commands in order; the proxy sends the backend one command at a time, so
what the client sends meanwhile waits here, at most ``MAX_PIPELINED`` lines, and runs
in order once the command in flight is answered and the client reads its replies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MAX_PIPELINED = 64


class CommandQueue:
    def __init__(self, execute: Callable[[bytes], None], limit: int = MAX_PIPELINED) -> None:
        self._execute = execute
        self._limit = limit
        self._lines: deque[bytes] = deque()
        self._running = False
        self.busy = False  # a command is waiting for its final reply
        self.blocked = False  # the client is not reading our replies
        self.stopped = False  # the session has ended

    def add(self, line: bytes) -> bool:
        """Queue *line*; False when that would exceed the limit."""
        if len(self._lines) >= self._limit:
            return False
        self._lines.append(line)
        return True

    def clear(self) -> None:
        self._lines.clear()

    def run(self) -> None:
        """Execute queued lines while nothing is in flight (never re-entered)."""
        if self._running:
            return
        self._running = True
        try:
            while self._lines and not (self.busy or self.blocked or self.stopped):
                self._execute(self._lines.popleft())
        finally:
            self._running = False
