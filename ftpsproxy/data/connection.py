"""One side of a data transfer: a data connection, held until it is coupled to the other.

It holds at most one read until the channel couples it to the other side, then relays
under flow control (the other side's transport is its producer); a TLS one is bounded
in its handshake and never shut down before the handshake is complete.
"""

from __future__ import annotations

import enum
from typing import Protocol as TypingProtocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.net.closing import CloseDeadline
from ftpsproxy.net.sockets import tune
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.tls.handshake import HandshakeWatch

log = Logger(namespace="ftpsproxy.data.relay")


class Side(enum.Enum):
    CLIENT = "client"
    BACKEND = "backend"


class ChannelLink(TypingProtocol):
    """What a data connection reports to, and reads from, its channel."""

    reactor: IReactorTime
    metrics: Metrics
    client_tls: bool
    backend_tls: bool
    handshake_timeout: float
    close_timeout: float

    @property
    def finished(self) -> bool: ...

    def side_connected(self, connection: DataConnection) -> None: ...

    def handshake_completed(self, connection: DataConnection) -> None: ...

    def side_lost(self, connection: DataConnection) -> None: ...

    def count(self, size: int) -> None: ...


@implementer(IHandshakeListener)
class DataConnection(Protocol):
    """One side's data socket; holds at most one read until it is coupled to the other side."""

    def __init__(self, channel: ChannelLink, side: Side) -> None:
        self.channel = channel
        self.side = side
        self.connected_ = False
        self.ended = False
        self.end_reason: Failure | None = None
        self._sink: DataConnection | None = None
        self._held: list[bytes] = []
        self._discard = False
        # A TLS data connection must finish its handshake before it can be shut
        # down cleanly (Twisted aborts a mid-handshake TLS connection instead).
        self.awaiting_handshake = channel.client_tls if side is Side.CLIENT else channel.backend_tls
        self._finish_after_handshake = False
        self.handshake = HandshakeWatch(
            channel.reactor,
            channel.handshake_timeout,
            channel.metrics,
            side=side.value,
            channel="data",
            on_timeout=self.abort,
        )
        self.has_producer = False  # the other side is registered as our producer
        self._closing = CloseDeadline(
            channel.reactor, channel.close_timeout, on_expired=self._close_timed_out
        )

    # -- Twisted callbacks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        tune(self.transport, bulk=True)
        self.connected_ = True
        if self.awaiting_handshake:
            self.handshake.start()
        self.channel.side_connected(self)

    def handshakeCompleted(self) -> None:
        self.awaiting_handshake = False
        self.handshake.done()
        self.channel.handshake_completed(self)
        if self._finish_after_handshake:
            self.finish()

    def dataReceived(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            self.channel.count(len(data))
            sink.transport.write(data)  # type: ignore[union-attr]
        elif self._discard:
            return
        else:
            self._held.append(data)
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _close_timed_out(self) -> None:
        log.info(
            "{side} data connection did not finish closing in time: reset",
            side=self.side.value,
        )
        self.channel.metrics.data_timeouts.labels(kind="close").inc()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._closing.cancel()
        # A handshake cut short by the channel's own end (ABOR, an error) is no failure.
        self.handshake.connection_lost(reason, count=not self.channel.finished)
        self.ended = True
        self.end_reason = reason
        self.channel.side_lost(self)

    # -- used by the channel ----------------------------------------------------------------

    @property
    def close_expired(self) -> bool:
        """Our close did not finish within the close timeout, and the connection was reset."""
        return self._closing.expired

    @property
    def clean_end(self) -> bool:
        return self.end_reason is not None and self.end_reason.check(ConnectionDone) is not None

    def take_held(self) -> bytes:
        """What was read before the transfer started (the kernel relay sends it first)."""
        held, self._held = self._held, []
        return b"".join(held)

    def forward_to(self, sink: DataConnection) -> None:
        """Start relaying our input to *sink*, with *sink* pausing us when it cannot keep up."""
        self._sink = sink
        self.channel.metrics.data_paths.labels(path="copy").inc()
        held, self._held = self._held, []
        for chunk in held:
            self.channel.count(len(chunk))
            sink.transport.write(chunk)  # type: ignore[union-attr]
        if not self.ended:
            sink.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
            sink.has_producer = True
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def discard_input(self) -> None:
        """The sink side: a peer should send nothing here; drop whatever it sends."""
        self._discard = True
        self._held = []
        if not self.ended:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def finish(self) -> None:
        """Close after everything written has been flushed (and TLS close_notify sent)."""
        if not self.connected_ or self.ended:
            return
        if self.awaiting_handshake:
            self._finish_after_handshake = True
            return
        self._unregister_producer()
        self._closing.close(self.transport)

    def abort(self) -> None:
        if not self.connected_ or self.ended:
            return
        self.transport.abortConnection()  # type: ignore[union-attr]

    def stop_relaying(self) -> None:
        """Relay nothing more: what still arrives (before an abort takes effect) is dropped."""
        self._sink = None
        self._discard = True
        self._held = []

    def detach(self) -> None:
        """Stop relaying, keep reading (and dropping) until the peer closes its side."""
        self.stop_relaying()
        if self.connected_ and not self.ended:
            self._unregister_producer()
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _unregister_producer(self) -> None:
        if self.has_producer:
            self.has_producer = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
