"""The user map in use, read from its file at start, on SIGHUP, and when the file changes.

The file's identity (inode, size, modification time) is polled on the reactor every
``POLL_INTERVAL`` seconds: no inotify dependency, and an editor's save-by-rename is
seen like an in-place write.  A file that no longer reads (TOML error, an unknown
backend, gone) is logged once per change and the previous map stays in use: a typo
must not take every user's routing down.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from twisted.internet.task import LoopingCall

from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.pool.usermap import UserMap, UserMapError, parse_user_map
from ftpsproxy.settings.errors import ConfigError

POLL_INTERVAL = 2.0

_Stamp = tuple[int, int, int] | None


class UserMapFile:
    def __init__(
        self,
        path: Path,
        backend_names: Callable[[], Collection[str]],
        events: UserRoutingEvents,
    ) -> None:
        """Read the file now: at start-up a broken map is a configuration error."""
        self.path = path
        self._backend_names = backend_names
        self._events = events
        self._stamp: _Stamp = None
        self._poll: LoopingCall | None = None
        self.current: UserMap = self._read()
        events.map_loaded(str(path), len(self.current), "start")

    def _identity(self) -> _Stamp:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _read(self) -> UserMap:
        # Stamp first: a write that lands while reading is seen by the next poll.
        self._stamp = self._identity()
        source = f"user-map {self.path}"
        try:
            text = self.path.read_bytes().decode("utf-8")
        except OSError as error:
            raise UserMapError(f"{source}: cannot read: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise UserMapError(f"{source}: not UTF-8 ({error.reason} at {error.start})") from None
        return parse_user_map(text, self._backend_names(), source)

    def reload(self, cause: str) -> bool:
        """Read the file again; on an error keep the current map (one log line)."""
        try:
            fresh = self._read()
        except ConfigError as error:
            self._events.map_refused(str(error), cause)
            return False
        self.current = fresh
        self._events.map_loaded(str(self.path), len(fresh), cause)
        return True

    def check(self) -> None:
        """Reload if the file is not the one read last."""
        if self._identity() != self._stamp:
            self.reload("file changed")

    def start(self, clock: Any) -> None:
        self._poll = LoopingCall(self.check)
        self._poll.clock = clock
        self._poll.start(POLL_INTERVAL, now=False)

    def stop(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
