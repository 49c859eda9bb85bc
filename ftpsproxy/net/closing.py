"""A bound on closing a connection.

``loseConnection`` waits until the peer has read everything written and, on TLS,
until it has answered our close_notify with its own.  A peer that does neither
would hold the socket (and, for a data connection, the transfer's final reply)
forever; after the deadline the connection is reset instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ftpsproxy.net.timers import cancel_call


class CloseDeadline:
    """``close()`` gracefully now, abort if the connection is still there after *timeout*."""

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        on_expired: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_expired = on_expired
        self._timer: IDelayedCall | None = None
        self.expired = False

    def close(self, transport: Any) -> None:
        """Start a graceful close of *transport*, with the deadline armed (once)."""
        if self._timer is None and not self.expired:
            self._timer = self._clock.callLater(self._timeout, self._expire, transport)
        transport.loseConnection()

    def _expire(self, transport: Any) -> None:
        self._timer = None
        self.expired = True
        if self._on_expired is not None:
            self._on_expired()
        transport.abortConnection()

    def cancel(self) -> None:
        """The connection is gone: call from ``connectionLost``."""
        cancel_call(self._timer)
        self._timer = None
