"""The client-facing control connection: bytes in, lines to the session, replies out.

Three modes share this protocol: ``plain`` (no TLS configured), ``explicit``
(``AUTH TLS`` upgrades the connection in place) and ``implicit`` (the factory
is wrapped in TLS, so TLS starts with the first byte).

Replies are flow-controlled like the data relay: the protocol is the push
producer of its own transport's output.  Once the client leaves more than
the transport's buffer size of replies unread, the protocol stops reading
from it, stops handing lines to the session, and the session stops reading
the backend's replies, until the client has read.  Lines already read wait as
bytes; more than ``MAX_PIPELINED`` of them end the session.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocolFactory,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.control.context import ProxyContext
from ftpsproxy.control.queue import MAX_PIPELINED
from ftpsproxy.control.session import Session
from ftpsproxy.ftp.errors import LineTooLong
from ftpsproxy.ftp.lines import LineBuffer
from ftpsproxy.net.client_address import limit_key
from ftpsproxy.net.closing import CloseDeadline
from ftpsproxy.net.proxy_header_out import ClientFacts, ClientTLS
from ftpsproxy.net.proxy_protocol import ProxyHeaderFactory, proxied_header
from ftpsproxy.net.sockets import tune
from ftpsproxy.settings.listeners import Listener
from ftpsproxy.tls.handshake import HandshakeWatch
from ftpsproxy.tls.server import certificate_names

log = Logger()


@implementer(IHandshakeListener, IPushProducer)
class FrontendProtocol(Protocol):
    """Implements the session's ``ClientLink`` on top of a TCP (or TLS) transport."""

    def __init__(self, context: ProxyContext, listener: str, mode: str) -> None:
        self._context = context
        self._listener = listener
        self._mode = mode
        self._lines = LineBuffer()
        self._stop_reading_lines = False
        self._output_blocked = False  # the client is not reading our replies
        self._reading_paused = False  # ... and so we do not read from it
        self._producing = False  # registered as the producer of our own transport
        self.tls_active = False
        self._tls_started = mode == "implicit"
        self.peer_host = ""
        self.counted_as = ""
        self.local_host = ""
        self.proxied_destination: str | None = None
        self._ports = (0, 0)  # the client's port, and the one it connected to
        self._tls: ClientTLS | None = None
        self.session: Session | None = None
        self.certificate_names: list[str] | None = None  # None: no client certificate
        self._handshake = HandshakeWatch(
            context.reactor,
            context.config.tls_handshake_timeout,
            context.metrics,
            side="client",
            channel="control",
            on_timeout=self._handshake_timed_out,
        )
        self._closing = CloseDeadline(context.reactor, context.config.close_timeout)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.peer_host, self.local_host = str(peer.host), str(host.host)  # type: ignore[union-attr]
        self._ports = (getattr(peer, "port", 0), getattr(host, "port", 0))
        header = proxied_header(self.transport)
        if header is not None:  # getPeer() is already the header's client
            self.proxied_destination = header.destination
            self._ports = (header.source_port, header.destination_port)
        self.counted_as = limit_key(self.peer_host, self._context.config.ipv6_prefix_length)
        tune(self.transport)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._producing = True
        if self._tls_started:
            self._handshake.start()
        refusal = self._context.admission_refusal(self.counted_as)
        if refusal is not None:
            reason, text = refusal
            log.warn("refused a session from {client}: {why}", client=self.peer_host, why=text)
            self._context.metrics.sessions_refused.labels(reason=reason).inc()
            self.transport.write(b"421 " + text.encode() + b"\r\n")  # type: ignore[union-attr]
            self.close()
            return
        mode = "explicit" if self._mode == "plain" and self._context.server_tls else self._mode
        self.session = Session(self._context, self, listener=self._listener, mode=mode)
        self.session.start()

    def _handshake_timed_out(self) -> None:
        log.info("TLS handshake with {client} timed out", client=self.peer_host)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self._handshake.done()
        self.tls_active = True
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        self._context.metrics.tls_handshakes.labels(
            side="client", channel="control", version=handle.get_protocol_version_name()
        ).inc()
        certificate = handle.get_peer_certificate()
        server_name = handle.get_servername()
        self._tls = ClientTLS(
            version=handle.get_protocol_version_name(),
            cipher=handle.get_cipher_name() or "",
            server_name=server_name.decode("utf-8", "replace") if server_name else None,
            certificate=certificate is not None,  # the handshake verified it
        )
        if certificate is not None:
            subject, self.certificate_names = certificate_names(certificate)
            log.info(
                "client {client} presented certificate {subject}",
                client=self.peer_host,
                subject=subject,
            )

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session is None or session.closed:
            return  # refused, or closing: nothing more is read into memory
        try:
            self._lines.append(data)
        except LineTooLong:
            self._lines.clear()
            session.client_line_too_long()
            return
        self._stop_reading_lines = False
        self._hand_over_lines(session)

    def _hand_over_lines(self, session: Session) -> None:
        """Give the session every complete line, unless the client stopped reading replies."""
        while not self._stop_reading_lines and not session.closed:
            if self._output_blocked:
                if self._lines.complete_lines > MAX_PIPELINED:
                    session.too_many_pipelined()
                return
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self._lines.clear()
                session.client_line_too_long()
                return
            if line is None:
                return
            session.client_line(line)

    # -- IPushProducer: our transport's output buffer is full, or drained -------------------

    def pauseProducing(self) -> None:
        if self._output_blocked or self.transport is None:
            return
        self._output_blocked = True
        # During a TLS handshake this means "replies wait for the handshake": reading on
        # is what completes it.
        if not (self._tls_started and not self.tls_active):
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        if self.session is not None:
            self.session.client_output_blocked()

    def resumeProducing(self) -> None:
        if not self._output_blocked or self.transport is None:
            return
        self._output_blocked = False
        self._resume_reading()
        if self.session is not None:
            self.session.client_output_unblocked()
            self._hand_over_lines(self.session)

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self._producing = False

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._closing.cancel()
        self._handshake.connection_lost(reason)
        if self.session is not None:
            self.session.client_lost()

    # -- ClientLink -------------------------------------------------------------------------

    def facts(self, unique_id: str) -> ClientFacts:
        """The client for a backend's PROXY header: with PROXY protocol in, the header's."""
        return ClientFacts(
            source=self.peer_host,
            source_port=self._ports[0],
            destination=self.proxied_destination or self.local_host,
            destination_port=self._ports[1],
            tls=self._tls,
            unique_id=unique_id,
        )

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def start_tls(self) -> None:
        """Upgrade after ``234``; bytes sent behind ``AUTH`` are dropped (CVE-2011-0411)."""
        assert self.session is not None and self.session.server_tls is not None
        self._stop_reading_lines = True
        dropped = self._lines.clear()  # complete lines not yet handed over, too
        if dropped:
            log.warn(
                "dropped {count} bytes sent in clear behind AUTH TLS from {client}",
                count=len(dropped),
                client=self.peer_host,
            )
        self._tls_started = True
        self._handshake.start()
        self.transport.startTLS(self.session.server_tls)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is None:
            return
        if self._producing:
            # A TLS transport closes only once no producer is registered.
            self._producing = False
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._output_blocked:
            # It does not read: the last reply cannot reach it, and a graceful close
            # would only hold the connection until the close deadline.
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._closing.close(self.transport)


class FrontendFactory(Factory):
    noisy = False

    def __init__(self, context: ProxyContext, listener: str, mode: str) -> None:
        self._context = context
        self._listener = listener
        self._mode = mode

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return FrontendProtocol(self._context, self._listener, self._mode)


def frontend_factory(
    context: ProxyContext, listener: Listener, *, implicit: bool
) -> IProtocolFactory:
    """The factory for one listener; implicit listeners get TLS from the first byte.

    On a proxied listener (``--proxy-protocol``, or its ``haproxy:`` prefix) the PROXY
    header comes before anything else, TLS included.
    """
    factory: IProtocolFactory
    name = listener.description
    if implicit:
        assert context.server_tls is not None
        inner = FrontendFactory(context, name, "implicit")
        factory = TLSMemoryBIOFactory(context.server_tls, False, inner)
    else:
        mode = "explicit" if context.server_tls is not None else "plain"
        factory = FrontendFactory(context, name, mode)
    if listener.proxied:
        factory = ProxyHeaderFactory(factory, context.control_headers, context.reactor)
    return factory
