"""Passive data listeners: one port of the range per PASV/EPSV, for one connection.

A listener accepts only connections from the session's client address; others
are closed at once and counted.  It logs no line of its own when it opens or closes
(Twisted's ports do, two per listener).  It stops listening after the first accepted
connection, and gives its port back to the allocator on every path.  With
``--proxy-protocol-data`` a connection must come from a trusted balancer and start
with a PROXY header; the client's address from the header is what is compared.  Ports are
held in the client address's name, so one address gets no more than its share
of the range (see :mod:`ftpsproxy.data.ports`).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger

from ftpsproxy.data.ports import PortAllocator, Refusal
from ftpsproxy.net.factories import PrebuiltFactory
from ftpsproxy.net.proxy_protocol import HeaderRules, ProxyHeaderFactory
from ftpsproxy.net.twisted_internals import listen_tcp_quietly
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.tls.bulk import BulkTLSFactory
from ftpsproxy.tls.server import ServerTLS

log = Logger()


def _host_of(address: IAddress) -> str | None:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def same_host(a: str, b: str) -> bool:
    """Compare addresses, treating ``::ffff:1.2.3.4`` as ``1.2.3.4``."""
    return a.removeprefix("::ffff:") == b.removeprefix("::ffff:")


class _Accepting(ServerFactory):
    """Asks its listener which protocol, if any, an incoming connection gets."""

    noisy = False

    def __init__(self, accept: Callable[[IAddress], Protocol | None]) -> None:
        self._accept = accept

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        return None if addr is None else self._accept(addr)


class PassiveListener:
    """One listening port of the passive range, waiting for one client data connection."""

    def __init__(
        self,
        reactor: IReactorTCP,
        allocator: PortAllocator,
        metrics: Metrics,
        client_host: str,
        build: Callable[[], Protocol],
        tls: ServerTLS | None,
        *,
        owner: str,
        headers: HeaderRules | None = None,
    ) -> None:
        self._reactor = reactor
        # Whose share of the range the port counts in: what the per-address limits count
        # the client by (ftpsproxy.net.client_address), not always its exact address.
        self._owner = owner
        self._headers = headers  # None: no header is read, whatever comes is data
        self._allocator = allocator
        self._metrics = metrics
        self._client_host = client_host
        self._build = build
        self._tls = tls
        self._listening: IListeningPort | None = None
        self.port: int | None = None
        self.accepted = False

    def start(self, interface: str) -> bool:
        """Listen on a free port of the range; False when none can be had."""
        refusal = Refusal.EXHAUSTED
        for _ in range(self._allocator.capacity):
            port = self._allocator.acquire(self._owner)
            if isinstance(port, Refusal):
                refusal = port
                break
            factory: ServerFactory = _Accepting(self._accept)
            if self._headers is not None:
                factory = ProxyHeaderFactory(factory, self._headers, self._reactor)
            try:
                self._listening = listen_tcp_quietly(self._reactor, port, factory, 8, interface)
            except CannotListenError as error:
                # Someone else holds this port; leave it out of rotation briefly.
                log.warn("passive port {port} unavailable: {error}", port=port, error=error)
                self._allocator.release(port)
                continue
            self.port = port
            self._metrics.passive_ports_in_use.set(self._allocator.in_use)
            return True
        if refusal is Refusal.SHARE:
            self._metrics.data_connections_refused.labels(reason=refusal.value).inc()
            log.warn(
                "refused a passive port to {client}: it holds {held} (its share is {share})",
                client=self._client_host,
                held=self._allocator.held_by(self._owner),
                share=self._allocator.share,
            )
        else:
            self._metrics.passive_ports_exhausted.inc()
        return False

    def _accept(self, addr: IAddress) -> Protocol | None:
        host = _host_of(addr)
        if self.accepted or host is None or not same_host(host, self._client_host):
            self._metrics.data_connections_refused.labels(reason="foreign_address").inc()
            log.warn(
                "refused data connection from {peer} (session client {client})",
                peer=host,
                client=self._client_host,
            )
            return None
        self.accepted = True
        self._stop_listening()
        protocol = self._build()
        if self._tls is not None:
            wrapper = BulkTLSFactory(self._tls, False, PrebuiltFactory(protocol))
            return wrapper.buildProtocol(addr)
        return protocol

    def _stop_listening(self) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            listening.stopListening()

    def close(self) -> None:
        """Stop listening (if still) and release the port.  Safe to call more than once."""
        self._stop_listening()
        if self.port is not None:
            self._allocator.release(self.port)
            self.port = None
            self._metrics.passive_ports_in_use.set(self._allocator.in_use)


class BackendDataListener:
    """Backend active mode: an ephemeral port the backend connects to, once, from its address.

    The backend stays the TLS server on its data connections (RFC 4217), so with
    ``PROT P`` the accepted connection is wrapped as a TLS *client*.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        backend_host: str,
        build: Callable[[], Protocol],
        tls: IOpenSSLClientConnectionCreator | None,
    ) -> None:
        self._reactor = reactor
        self._backend_host = backend_host
        self._build = build
        self._tls = tls
        self._listening: IListeningPort | None = None
        self.accepted = False

    def start(self, interface: str) -> tuple[str, int]:
        """Listen on *interface*; returns the (host, port) to announce to the backend."""
        accepting = _Accepting(self._accept)
        self._listening = listen_tcp_quietly(self._reactor, 0, accepting, 1, interface)
        address = self._listening.getHost()
        return interface, int(address.port)  # type: ignore[attr-defined]

    def _accept(self, addr: IAddress) -> Protocol | None:
        host = _host_of(addr)
        if self.accepted or host is None or not same_host(host, self._backend_host):
            log.warn("refused backend data connection from {peer}", peer=host)
            return None
        self.accepted = True
        self.close()
        protocol = self._build()
        if self._tls is not None:
            return BulkTLSFactory(self._tls, True, PrebuiltFactory(protocol)).buildProtocol(addr)
        return protocol

    def close(self) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            listening.stopListening()
