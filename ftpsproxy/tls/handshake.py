"""A TLS handshake bounded in time, and its failure counted once, for any connection.

Control and data connections, client side and backend side alike: a peer that opens a
connection and never finishes the handshake is cut off after the handshake timeout, and
``ftpsproxy_tls_handshake_failures_total`` counts each failed handshake once, by why
(``timeout``, ``verification``, ``protocol``, ``closed``).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ftpsproxy.net.timers import cancel_call
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.tls.server import failure_reason


class HandshakeWatch:
    """Watches one connection's handshake; *on_timeout* cuts the connection off."""

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        metrics: Metrics,
        *,
        side: str,
        channel: str,
        on_timeout: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._metrics = metrics
        self._side = side
        self._channel = channel
        self._on_timeout = on_timeout
        self._timer: IDelayedCall | None = None
        self.started = False
        self.completed = False
        self._counted = False

    def start(self) -> None:
        self.started = True
        self._timer = self._clock.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._count("timeout")
        self._on_timeout()

    def done(self) -> None:
        """The handshake completed."""
        self.completed = True
        self._cancel()

    def connection_lost(self, reason: Failure, *, count: bool = True) -> None:
        """The connection ended: a handshake begun and not completed failed, for *reason*
        (unless *count* is False: the owner ended it on purpose)."""
        self._cancel()
        if count and self.started and not self.completed:
            self._count(failure_reason(reason))

    def count(self, reason: str) -> None:
        """A failure the owner found itself (a data connection that did not resume)."""
        self._count(reason)

    def _count(self, reason: str) -> None:
        if self._counted:
            return
        self._counted = True
        self._metrics.tls_handshake_failures.labels(
            side=self._side, channel=self._channel, reason=reason
        ).inc()

    def _cancel(self) -> None:
        cancel_call(self._timer)
        self._timer = None
