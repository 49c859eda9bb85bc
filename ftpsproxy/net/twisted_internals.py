"""Every private part of Twisted that ftpsproxy uses, and only here.

Twisted's public API does not offer some things the proxy needs: batching TLS writes
and holding back TLS 1.3 session tickets on data connections (``tls/bulk.py``), taking
a connection's queued output when ``splice(2)`` takes over its socket
(``data/splice.py``), passive listeners that do not log two lines each (``data/passive.py``),
failing at start-up when a listening port is taken, knowing when a listener is bound, and
closing a listening socket a worker process shares without ``shutdown()`` (``ops/``),
an HTTP client that does not log two lines per request (``control/user_lookup.py``),
and the PROXY protocol parsers, which Twisted keeps in private modules behind
``proxyEndpoint`` (``net/proxy_header.py``; the endpoint reads the header after the
wrapped protocol has started, and trusts any sender).
Each of those touches a name Twisted may rename or drop in any release without a
deprecation.  So the rest of the package goes through the functions and the
:class:`TLSMemoryBIOHooks` and :class:`QuietPort` classes below, and :data:`INTERNALS`
lists what they rely on: :func:`problems` checks each against the installed Twisted, and
``tests/test_internals.py`` fails, naming the internal and the Twisted version, when
one has changed.  ``pyproject.toml`` bounds Twisted to the releases that test passed on.

pyOpenSSL's private parts have their fence in ``tls/openssl_internals.py``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from OpenSSL.SSL import Connection
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ServerFactory
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = [
    "INTERNALS",
    "Internal",
    "InvalidProxyHeader",
    "QuietPort",
    "TLSMemoryBIOHooks",
    "V1Parser",
    "V2Parser",
    "aborting",
    "close_without_shutdown",
    "listen_tcp_quietly",
    "listener_bound",
    "pending_output",
    "problems",
    "raise_listen_errors_at_start",
    "take_pending_output",
]


# -- TLS: TLSMemoryBIOProtocol's private steps ---------------------------------------------


class TLSMemoryBIOHooks(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, its private steps open to a subclass under names of ours.

    A subclass overrides :meth:`tls_write`, :meth:`flush_send_bio`,
    :meth:`shutdown_tls` or :meth:`tls_shutdown_finished` and reads
    :attr:`tls_connection`, :attr:`handshake_done` and :attr:`tls_lost`; each default
    is Twisted's own step, so this class alone behaves as ``TLSMemoryBIOProtocol``.
    """

    # Twisted calls these; they hand over to the hooks.
    def _write(self, bytes: Any) -> None:  # Twisted's parameter name
        self.tls_write(bytes)

    def _flushSendBIO(self) -> None:
        self.flush_send_bio()

    def _shutdownTLS(self) -> None:
        self.shutdown_tls()

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        self.tls_shutdown_finished(reason)

    # The hooks.
    def tls_write(self, data: Any) -> None:
        """Give application bytes to OpenSSL and send what comes out (``write`` calls it)."""
        TLSMemoryBIOProtocol._write(self, data)

    def flush_send_bio(self) -> None:
        """Move what OpenSSL has produced to the transport."""
        TLSMemoryBIOProtocol._flushSendBIO(self)

    def shutdown_tls(self) -> None:
        """Send our close_notify (or answer the peer's); close the transport when done."""
        TLSMemoryBIOProtocol._shutdownTLS(self)

    def tls_shutdown_finished(self, reason: Failure | None) -> None:
        """TLS is over: *reason* for the application (None: the transport's own end)."""
        TLSMemoryBIOProtocol._tlsShutdownFinished(self, reason)

    # Helpers and state.
    def buffer_write(self, data: bytes) -> None:
        """Keep *data* until OpenSSL can take it (it wants to read first); pauses a producer."""
        self._bufferedWrite(data)

    @property
    def tls_connection(self) -> Connection | None:
        """The OpenSSL connection, from ``makeConnection`` until ``connectionLost``."""
        connection: Connection | None = self._tlsConnection
        return connection

    @property
    def handshake_done(self) -> bool:
        return bool(self._handshakeDone)

    @property
    def tls_lost(self) -> bool:
        """TLS is over (shut down or failed): writes are dropped."""
        return bool(self._lostTLSConnection)


# -- TCP connections: the write buffer -----------------------------------------------------


def pending_output(conn: tcp.Connection) -> int:
    """Bytes queued in Twisted's write buffer of *conn* and not yet sent."""
    return len(conn.dataBuffer) - conn.offset + conn._tempDataLen


def take_pending_output(conn: tcp.Connection) -> bytes:
    """Remove and return the bytes queued in Twisted's write buffer of *conn*."""
    data = bytes(memoryview(conn.dataBuffer)[conn.offset :]) + b"".join(conn._tempDataBuffer)
    conn.dataBuffer = b""
    conn.offset = 0
    conn._tempDataBuffer = []
    conn._tempDataLen = 0
    return data


def aborting(conn: tcp.Connection) -> bool:
    """Whether ``abortConnection()`` was called on *conn* (it closes on the next turn)."""
    return bool(getattr(conn, "_aborting", False))


# -- listeners -----------------------------------------------------------------------------


def raise_listen_errors_at_start(service: StreamServerEndpointService) -> None:
    """Make a port that cannot be bound fail the start instead of being only logged."""
    service._raiseSynchronously = True


def listener_bound(service: StreamServerEndpointService) -> bool:
    """Whether the service's ``listen`` has completed (the port is bound, or failed)."""
    waiting = service._waitingForPort
    return waiting is not None and bool(waiting.called)


class QuietPort(tcp.Port):
    """A TCP listening port that logs neither its start nor its close.

    ``tcp.Port`` logs ``<factory> starting on N`` and ``(TCP Port N Closed)`` for every
    port, whatever the factory's ``noisy``: for passive listeners (one per ``PASV``)
    that was a third of all log lines.
    """

    def startListening(self) -> None:
        # The start line is a legacy ``log.msg``, which takes its fields from the log
        # context: an empty format makes it an event no observer writes as a line.
        legacy_log.callWithContext({"log_format": ""}, super().startListening)

    def _logConnectionLostMsg(self) -> None:
        """Twisted's close line: none."""


def quiet_http_pool(reactor: Any) -> HTTPConnectionPool:
    """A non-persistent ``Agent`` pool whose connections log no start and stop lines.

    ``HTTPConnectionPool._factory`` makes a factory per connection, and a noisy one
    logs two lines per user lookup.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietHTTP11ClientFactory
    return pool


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


def listen_tcp_quietly(
    reactor: Any, port: int, factory: ServerFactory, backlog: int, interface: str
) -> IListeningPort:
    """``reactor.listenTCP`` with a :class:`QuietPort` (a test's memory reactor: its own)."""
    if not isinstance(reactor, PosixReactorBase):
        listening: IListeningPort = reactor.listenTCP(port, factory, backlog, interface)
        return listening
    quiet = QuietPort(port, factory, backlog, interface, reactor)
    quiet.startListening()
    return quiet


def close_without_shutdown(port: tcp.Port) -> None:
    """Make closing *port* only close our descriptor, without ``shutdown()``.

    ``shutdown()`` acts on the socket, not the descriptor: on a listening socket other
    processes share (the workers), it would stop their accepts too.
    """
    port._shouldShutdown = False


# -- PROXY protocol parsers (twisted.protocols.haproxy's private modules) -----------------
# ``V1Parser`` and ``V2Parser`` are used as Twisted's own wrapper uses them: ``feed(data)``
# returns ``(None, None)`` until a header is complete, then ``(ProxyInfo, rest)``, and
# raises ``InvalidProxyHeader`` (or its subclasses) on a malformed one.


# -- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Internal:
    """One private name of Twisted's that this module relies on, and how.

    ``parameters``: a method's parameter names as Twisted calls it (we override it or
    call it). ``set_in``: the method of *owner* that creates an instance attribute (else
    it is a class attribute). ``used_in``: a method of *owner* whose code must still
    use the name (a flag we set is read there; a step we override is called there).
    """

    owner: type
    name: str
    why: str
    parameters: tuple[str, ...] | None = None
    set_in: str | None = None
    used_in: str | None = None

    @property
    def where(self) -> str:
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"


_TLS = TLSMemoryBIOProtocol
INTERNALS: tuple[Internal, ...] = (
    Internal(_TLS, "_write", "is overridden: one SSL_write per relay chunk (tls/bulk.py)",
             parameters=("self", "bytes"), used_in="write"),
    Internal(_TLS, "_flushSendBIO", "is overridden: one socket write per flush, TLS 1.3 "
             "tickets held back (tls/bulk.py)", parameters=("self",), used_in="_flushReceiveBIO"),
    Internal(_TLS, "_shutdownTLS", "is overridden: held output goes out before close_notify "
             "(tls/bulk.py)", parameters=("self",), used_in="loseConnection"),
    Internal(_TLS, "_tlsShutdownFinished", "is overridden: a close_notify read is a clean end "
             "(tls/bulk.py)", parameters=("self", "reason"), used_in="_flushReceiveBIO"),
    Internal(_TLS, "_bufferedWrite", "is called when OpenSSL refuses a write (tls/bulk.py)",
             parameters=("self", "octets")),
    Internal(_TLS, "_tlsConnection", "is read: the OpenSSL connection (tls/bulk.py)",
             set_in="makeConnection"),
    Internal(_TLS, "_handshakeDone", "is read: tickets are held only after the handshake "
             "(tls/bulk.py)", used_in="dataReceived"),
    Internal(_TLS, "_lostTLSConnection", "is read: no writes after TLS ended (tls/bulk.py)",
             used_in="_write"),
    Internal(abstract.FileDescriptor, "dataBuffer", "is read and emptied: queued output "
             "goes first when splice takes a socket (data/splice.py)", used_in="doWrite"),
    Internal(abstract.FileDescriptor, "offset", "is read and reset with dataBuffer "
             "(data/splice.py)", used_in="doWrite"),
    Internal(abstract.FileDescriptor, "_tempDataBuffer", "is read and emptied with "
             "dataBuffer (data/splice.py)", set_in="__init__", used_in="write"),
    Internal(abstract.FileDescriptor, "_tempDataLen", "is read and reset with dataBuffer "
             "(data/splice.py)", set_in="__init__", used_in="write"),
    Internal(tcp.Connection, "_aborting", "is read: an aborted connection is not handed "
             "back to the reactor (data/splice.py)", used_in="abortConnection"),
    Internal(StreamServerEndpointService, "_raiseSynchronously", "is set: a taken port "
             "stops the start (ops/)", used_in="privilegedStartService"),
    Internal(StreamServerEndpointService, "_waitingForPort", "is read: /readyz waits for "
             "the listeners (ops/)", set_in="__init__", used_in="privilegedStartService"),
    Internal(tcp.Port, "_logConnectionLostMsg", "is overridden: passive listeners log no "
             "close line (data/passive.py)", parameters=("self",), used_in="connectionLost"),
    Internal(tcp.Port, "_shouldShutdown", "is set: the master closes its listening "
             "sockets without shutdown(), which would stop the workers' accepts (ops/)",
             used_in="_closeSocket"),
    Internal(HTTPConnectionPool, "_factory", "is replaced by a quiet factory: no log lines "
             "per user lookup (control/user_lookup.py)", used_in="_newConnection"),
    Internal(V1Parser, "feed", "is called: PROXY v1 headers (net/proxy_header.py)",
             parameters=("self", "data")),
    Internal(V1Parser, "PROXYSTR", "is read: how a v1 header starts (net/proxy_header.py)"),
    Internal(V2Parser, "feed", "is called: PROXY v2 headers (net/proxy_header.py)",
             parameters=("self", "data")),
    Internal(V2Parser, "PREFIX", "is read: how a v2 header starts (net/proxy_header.py)"),
)  # fmt: skip


_MISSING = object()


def _source(owner: type, method: str) -> str | None:
    function = inspect.getattr_static(owner, method, None)
    if function is None:
        return None
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None


def _problem(internal: Internal) -> str | None:
    owner, name = internal.owner, internal.name
    if internal.set_in is not None:
        source = _source(owner, internal.set_in)
        if source is None:
            return f"cannot read the code of {internal.set_in}() that should set it"
        if not re.search(rf"self\.{name}\s*(:[^=\n]+)?=[^=]", source):
            return f"is no longer set in {internal.set_in}()"
    else:
        value = inspect.getattr_static(owner, name, _MISSING)
        if value is _MISSING:
            return "no longer exists"
        if internal.parameters is not None:
            if not inspect.isfunction(value):
                return f"is no longer a method (it is {type(value).__name__})"
            found = tuple(inspect.signature(value).parameters)
            if found != internal.parameters:
                return f"now takes ({', '.join(found)}), not ({', '.join(internal.parameters)})"
    if internal.used_in is not None:
        source = _source(owner, internal.used_in)
        if source is None:
            return f"cannot read the code of {internal.used_in}() that should use it"
        if not re.search(rf"self\.{name}\b", source):
            return f"is no longer used by {internal.used_in}()"
    return None


def problems() -> list[str]:
    """What no longer holds of :data:`INTERNALS` in the installed Twisted (empty: all)."""
    found = []
    for internal in INTERNALS:
        problem = _problem(internal)
        if problem is not None:
            found.append(
                f"Twisted {version('Twisted')}: {internal.where} {problem}, but ftpsproxy "
                f"relies on it (it {internal.why}); see ftpsproxy/net/twisted_internals.py"
            )
    return found
