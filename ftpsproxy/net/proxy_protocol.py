"""A listener's connections that must start with a PROXY protocol header.

:class:`ProxyHeaderFactory` wraps a listener's factory.  A connection from outside the
trusted networks gets no protocol at all (closed at once); a trusted one gets a
:class:`ProxyHeaderProtocol` that reads the header (:mod:`ftpsproxy.net.proxy_header`)
within a deadline and only then asks the wrapped factory for the protocol, with the
client's address from the header: the session, the TLS wrapper of an implicit listener
(the header comes before the TLS handshake, so this wrapper is the outer one), or a
passive listener's source check see the client, never the balancer.  ``getPeer()`` is
the client's address from then on; ``getHost()`` stays the proxy's own address (it is
where passive ports are bound), and :func:`proxied_destination` says where the client
connected to.

Twisted's ``proxyEndpoint`` does not fit: it starts the wrapped protocol before the header
(so a session would read the balancer's address, and greet before the header arrived),
trusts any sender, waits forever, and cannot tell a health check from a client.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import ServerFactory
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ftpsproxy.net.proxy_header import HeaderReader, HealthCheck, InvalidHeader, Proxied
from ftpsproxy.net.timers import cancel_call

#: A header is at most 16 + 65535 bytes (v2), but a balancer sends it in its first
#: packet; more than this before the header ends is not a balancer.
MAX_HEADER_BYTES = 4096


class HeaderRules(Protocol):
    """Who may send a header, how long it may take, and who hears how it went."""

    @property
    def timeout(self) -> float: ...

    def trusts(self, host: str) -> bool: ...

    def refused(self, reason: str, peer: str) -> None:
        """A connection closed for *reason*: ``untrusted``, ``timeout`` or ``invalid``."""

    def health_check(self, peer: str) -> None:
        """A connection with no client behind it (a balancer's check), closed."""


def _host(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else ""


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(IHandshakeListener)
class ProxyHeaderProtocol(ProtocolWrapper):
    """Reads the header, then becomes a transparent wrapper around the real protocol."""

    wrappedProtocol: Any  # None until the header has arrived
    transport: Any  # the TCP connection

    def __init__(self, factory: ProxyHeaderFactory, balancer: str) -> None:
        self.wrappedProtocol = None
        self._header_factory = factory
        self._rules = factory.rules
        self._balancer = balancer
        self._reader: HeaderReader | None = HeaderReader()
        self._received = 0
        self._timer: IDelayedCall | None = None
        self.proxied: Proxied | None = None

    def logPrefix(self) -> str:
        return "ProxyHeader"

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper does, minus starting the wrapped protocol: it has to wait.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self._timer = self._header_factory.clock.callLater(self._rules.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse("timeout")

    def _refuse(self, reason: str) -> None:
        self._reader = None
        self._rules.refused(reason, self._balancer)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        reader = self._reader
        if reader is None:
            return  # refused, or closing after a health check
        self._received += len(data)
        try:
            header = reader.feed(data)
        except InvalidHeader:
            self._refuse("invalid")
            return
        if header is None:
            if self._received > MAX_HEADER_BYTES:
                self._refuse("invalid")
            return
        self._reader = None
        cancel_call(self._timer)
        self._timer = None
        if isinstance(header, HealthCheck):
            self._rules.health_check(self._balancer)
            self.transport.loseConnection()
            return
        self._start(header)

    def _start(self, header: Proxied) -> None:
        self.proxied = header
        client = _address(header.source, header.source_port)
        protocol: Any = self._header_factory.wrapped.buildProtocol(client)
        if protocol is None:
            self.transport.abortConnection()  # refused by the wrapped factory, which said why
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if header.rest:
            protocol.dataReceived(header.rest)

    def getPeer(self) -> IAddress:
        if self.proxied is not None:
            return _address(self.proxied.source, self.proxied.source_port)
        peer: IAddress = self.transport.getPeer()
        return peer

    def handshakeCompleted(self) -> None:
        # After AUTH TLS the TLS layer sits under this wrapper and tells it, not the session.
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        cancel_call(self._timer)
        self._timer = None
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        self.connected = 0
        if protocol is not None:
            protocol.connectionLost(reason)


def proxied_header(transport: object) -> Proxied | None:
    """The PROXY header under *transport* (looked for through TLS wrappers), or None."""
    for _ in range(4):
        if isinstance(transport, ProxyHeaderProtocol):
            return transport.proxied
        if not isinstance(transport, ProtocolWrapper):
            return None
        transport = transport.transport
    return None


def proxied_destination(transport: object) -> str | None:
    """The address the client connected to, per the PROXY header under *transport*
    (looked for through TLS wrappers), or None without one."""
    header = proxied_header(transport)
    return None if header is None else header.destination


class ProxyHeaderFactory(ServerFactory):
    """Wraps a listener's factory: connections start with a PROXY header from a trusted peer."""

    noisy = False

    def __init__(self, wrapped: IProtocolFactory, rules: HeaderRules, clock: Any) -> None:
        self.wrapped = wrapped
        self.rules = rules
        self.clock: IReactorTime = clock

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        balancer = _host(addr)
        if not self.rules.trusts(balancer):
            self.rules.refused("untrusted", balancer)
            return None  # Twisted closes the connection
        return ProxyHeaderProtocol(self, balancer)
