"""The backend control connection: commands out, replies matched back to their command.

Replies are matched first-in first-out: each command receives its 1xx replies
and then exactly one final reply (RFC 959 §4.2).  A reply that arrives with no
command waiting (``421`` on idle timeout, say) goes to ``on_unsolicited``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.ftp.errors import FTPSyntaxError
from ftpsproxy.ftp.greeting import Greeting, judge_greeting, refusal
from ftpsproxy.ftp.replies import Reply, ReplyParser
from ftpsproxy.net.closing import CloseDeadline
from ftpsproxy.net.factories import PrebuiltFactory
from ftpsproxy.net.proxy_header_out import (
    V1_UNKNOWN_HEADER,
    V2_LOCAL_HEADER,
    ClientFacts,
    encode_v1,
    encode_v2,
)
from ftpsproxy.net.sockets import tune
from ftpsproxy.net.timers import cancel_call
from ftpsproxy.settings.backends import Backend
from ftpsproxy.settings.config import BackendAddress
from ftpsproxy.settings.values import DataProtection, ProxyProtocolOut
from ftpsproxy.tls.backend import BackendSessionTLS, BackendTLSSettings
from ftpsproxy.tls.bulk import BulkTLSFactory

ReplyHandler = Callable[[Reply], None]


class BackendLoss(enum.Enum):
    """Why an established backend control connection ended: the class the client is told."""

    CLOSED = "closed"  # the backend closed or reset the connection
    TIMEOUT = "timeout"  # a command went unanswered for the reply timeout
    INVALID_REPLY = "invalid_reply"  # a reply that is malformed or over the size cap
    ENDED = "ended"  # the backend said 421 with no command outstanding


class BackendSetupError(Exception):
    """The backend session could not be set up: a refused greeting, AUTH TLS, PBSZ or PROT.

    ``kind`` is a fixed label for metrics: ``refused``, ``timeout``, and for TLS
    failures ``verification`` or ``protocol``.
    """

    def __init__(self, why: str, reply: Reply | None = None, *, kind: str = "refused") -> None:
        super().__init__(why)
        self.reply = reply
        self.kind = kind


class BackendTLSError(BackendSetupError):
    """The TLS handshake with the backend failed (verification or protocol)."""


class BackendLink(TypingProtocol):
    """What the session needs from the backend control connection."""

    tls: BackendSessionTLS | None
    protect_data: bool
    tls_version: str | None
    on_lost: Callable[[BackendLoss, str], None]
    on_unsolicited: Callable[[Reply], None]

    @property
    def peer_host(self) -> str: ...

    @property
    def local_host(self) -> str: ...

    def watch_replies(self, clock: IReactorTime, timeout: float, close_timeout: float) -> None: ...

    def request(self, line: bytes, handler: ReplyHandler) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


@implementer(IHandshakeListener)
class BackendControl(Protocol):
    """One backend control connection, owned by one client session.

    ``ready`` fires once the backend has greeted us and, for FTPS backends, TLS is
    up and the data protection level is set (``AUTH TLS``, ``PBSZ 0``, ``PROT``).
    """

    def __init__(
        self,
        tls: BackendSessionTLS | None = None,
        *,
        explicit: bool = False,
        protect: bool = True,
        proxy_header: bytes = b"",
    ) -> None:
        self.tls = tls
        self._proxy_header = proxy_header  # sent first, on a connection TLS does not wrap yet
        self.protect_data = tls is not None and protect
        self._explicit = explicit
        self._parser = ReplyParser()
        self._waiting: deque[ReplyHandler] = deque()
        self.ready: Deferred[BackendControl] = Deferred()
        self._greeted = False
        self._is_ready = False
        self.on_unsolicited: Callable[[Reply], None] = lambda reply: None
        self.on_lost: Callable[[BackendLoss, str], None] = lambda kind, why: None
        self.closing = False
        self.tls_version: str | None = None
        self._clock: IReactorTime | None = None
        self._reply_timeout = 60.0
        self._reply_timer: IDelayedCall | None = None
        self._closing: CloseDeadline | None = None
        self._reading_paused = False
        self._rearm_on_resume = False

    @property
    def peer_host(self) -> str:
        return str(self.transport.getPeer().host)  # type: ignore[union-attr]

    @property
    def local_host(self) -> str:
        """Our address on the backend's network: where backend active-mode data lands."""
        return str(self.transport.getHost().host)  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        tune(self.transport)
        if self._proxy_header:
            self.transport.write(self._proxy_header)  # type: ignore[union-attr]

    def watch_replies(self, clock: IReactorTime, timeout: float, close_timeout: float) -> None:
        """From now on, a command unanswered for *timeout* seconds ends the connection,
        and so does a close the backend has not completed after *close_timeout*.

        Only the first reply is bounded: after a 1xx the final reply of a transfer may
        rightly take as long as the transfer.
        """
        self._clock = clock
        self._reply_timeout = timeout
        self._closing = CloseDeadline(clock, close_timeout)

    def pause_reading(self) -> None:
        """Read no more replies (the client is not reading ours); the reply timeout waits too:
        a backend cannot answer in time what we do not read."""
        if self._reading_paused or self.transport is None:
            return
        self._reading_paused = True
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._rearm_on_resume = self._reply_timer is not None and self._reply_timer.active()
        self._disarm_reply_timer()

    def resume_reading(self) -> None:
        if not self._reading_paused or self.transport is None:
            return
        self._reading_paused = False
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        if self._rearm_on_resume:
            self._arm_reply_timer()

    def _arm_reply_timer(self) -> None:
        if self._clock is None or self._reading_paused:
            return
        if self._reply_timer is None or not self._reply_timer.active():
            self._reply_timer = self._clock.callLater(self._reply_timeout, self._reply_timed_out)
        else:
            self._reply_timer.reset(self._reply_timeout)

    def _disarm_reply_timer(self) -> None:
        cancel_call(self._reply_timer)
        self._reply_timer = None

    def _reply_timed_out(self) -> None:
        self._reply_timer = None
        why = f"no reply from the backend within {self._reply_timeout:g}s"
        self.on_lost(BackendLoss.TIMEOUT, why)
        self.abort()

    def request(self, line: bytes, handler: ReplyHandler) -> None:
        """Send one command line (CRLF included) and route its replies to *handler*."""
        self._waiting.append(handler)
        self._arm_reply_timer()
        self.transport.write(line)  # type: ignore[union-attr]

    def close(self) -> None:
        self.closing = True
        if self.transport is None:
            return
        if self._closing is not None:
            self._closing.close(self.transport)
        else:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except FTPSyntaxError as error:
            self._fail(BackendSetupError(f"malformed reply from backend ({error})"))
            self.on_lost(BackendLoss.INVALID_REPLY, f"malformed reply from backend ({error})")
            self.abort()
            return
        for reply in replies:
            self._dispatch(reply)

    def _dispatch(self, reply: Reply) -> None:
        if not self._greeted:
            greeting = judge_greeting(reply)
            if greeting is Greeting.PENDING:
                return
            self._greeted = True
            if greeting is Greeting.REFUSED:
                self._fail(BackendSetupError(refusal(reply), reply))
            elif self.tls is not None and self._explicit:
                self.request(b"AUTH TLS\r\n", self._auth_reply)
            elif self.tls is not None:
                self._protect()
            else:
                self._become_ready()
            return
        if not self._waiting:
            self.on_unsolicited(reply)
            return
        handler = self._waiting[0]
        if not reply.is_preliminary:
            self._waiting.popleft()
        if reply.is_preliminary or not self._waiting:
            self._disarm_reply_timer()
        else:
            self._arm_reply_timer()
        handler(reply)

    # -- FTPS set-up (RFC 4217 §4-§9) ---------------------------------------------------------

    def _auth_reply(self, reply: Reply) -> None:
        if reply.code != 234:
            self._fail(BackendSetupError(f"AUTH TLS refused: {reply.code} {reply.text}", reply))
            return
        self.transport.startTLS(self.tls)  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        self.tls_version = handle.get_protocol_version_name()
        if self._explicit:
            self._protect()
        # Implicit: the greeting arrives next and continues the set-up.

    def _protect(self) -> None:
        def prot_reply(reply: Reply) -> None:
            if reply.code // 100 != 2:
                self._fail(BackendSetupError(f"PROT refused: {reply.code} {reply.text}", reply))
            else:
                self._become_ready()

        def pbsz_reply(reply: Reply) -> None:
            if reply.code // 100 != 2:
                self._fail(BackendSetupError(f"PBSZ refused: {reply.code} {reply.text}", reply))
            else:
                self.request(b"PROT P\r\n" if self.protect_data else b"PROT C\r\n", prot_reply)

        self.request(b"PBSZ 0\r\n", pbsz_reply)

    def _become_ready(self) -> None:
        self._is_ready = True
        self.ready.callback(self)

    def _fail(self, error: Exception) -> None:
        if not self._is_ready and not self.ready.called:
            self._is_ready = True
            self.ready.errback(Failure(error))
            self.abort()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._disarm_reply_timer()
        if self._closing is not None:
            self._closing.cancel()
        if not self._is_ready and not self.ready.called:
            if self.tls is not None and self.tls.failure is not None:
                self._fail(BackendTLSError(self.tls.failure, kind="verification"))
            elif self.tls is not None and reason.check(SSL.Error):
                why = f"TLS handshake failed: {reason.getErrorMessage()}"
                self._fail(BackendTLSError(why, kind="protocol"))
            else:
                self._fail(BackendSetupError(f"connection lost: {reason.getErrorMessage()}"))
        if not self.closing:
            self.on_lost(BackendLoss.CLOSED, reason.getErrorMessage())


class BackendConnector:
    """Opens connections to the configured backend: control connections and data connections.

    Sessions get this from the shared context, so tests can substitute in-memory
    connections, and the TLS details of the backend live in this one place.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        address: BackendAddress,
        timeout: float,
        tls: BackendTLSSettings | None = None,
        *,
        protect_data: bool = True,
        proxy_protocol: ProxyProtocolOut = ProxyProtocolOut.OFF,
    ) -> None:
        self._reactor = reactor
        self.address = address
        self.timeout = timeout
        self.tls = tls
        self.protect_data = protect_data
        self.proxy_protocol = proxy_protocol
        if (address.scheme == "ftp") != (tls is None):
            raise ValueError("TLS settings go with ftpes:// and ftps:// backends only")

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        """A TCP endpoint; names are resolved, IP literals are not (no resolver thread)."""
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            return HostnameEndpoint(self._reactor, host, port, timeout=self.timeout)
        if version == 4:
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=self.timeout)
        return TCP6ClientEndpoint(self._reactor, host, port, timeout=self.timeout)

    def proxy_header(self, facts: ClientFacts | None) -> bytes:
        """The PROXY header this backend gets first: none, the client's, or (no *facts*:
        a probe) one saying there is no client behind the connection."""
        version = self.proxy_protocol
        if version is ProxyProtocolOut.OFF:
            return b""
        if facts is None:
            return V2_LOCAL_HEADER if version is ProxyProtocolOut.V2 else V1_UNKNOWN_HEADER
        return encode_v2(facts) if version is ProxyProtocolOut.V2 else encode_v1(facts)

    def control(self, facts: ClientFacts | None = None) -> Deferred[BackendControl]:
        """Connect and set the session up; fails with the reason otherwise.

        ``timeout`` bounds the whole set-up: connect, TLS handshake, greeting, PBSZ/PROT.
        *facts* are the session's client, for a PROXY header; None for a probe.
        """
        header = self.proxy_header(facts)
        implicit = self.address.scheme == "ftps"
        session_tls = BackendSessionTLS(self.tls) if self.tls is not None else None
        control = BackendControl(
            session_tls,
            explicit=self.address.scheme == "ftpes",
            protect=self.protect_data,
            proxy_header=b"" if implicit else header,
        )
        endpoint = self._endpoint(self.address.host, self.address.port)
        factory: IProtocolFactory = PrebuiltFactory(control)
        if session_tls is not None and implicit and header:
            factory = HeaderFirstTLSFactory(session_tls, header, factory)
        elif session_tls is not None and implicit:
            endpoint = wrapClientTLS(session_tls, endpoint)
        connected: Deferred[Protocol] = endpoint.connect(factory)  # type: ignore[assignment]
        timer = self._reactor.callLater(self.timeout, self._set_up_timed_out, control, connected)  # type: ignore[attr-defined]

        def done(result: object) -> object:
            cancel_call(timer)
            return result

        control.ready.addBoth(done)

        def connect_failed(reason: Failure) -> None:
            why = f"cannot connect: {reason.getErrorMessage()}"
            control._fail(ConnectionError(why))

        connected.addErrback(connect_failed)
        return control.ready

    def _set_up_timed_out(self, control: BackendControl, connected: Deferred[Protocol]) -> None:
        if not connected.called:
            connected.cancel()  # fails the set-up with "cannot connect" first
        if not control._greeted:
            why = f"no greeting within {self.timeout:g}s"
        else:
            why = f"no ready backend session within {self.timeout:g}s"
        control._fail(BackendSetupError(why, kind="timeout"))

    def data(self, control: BackendLink, port: int, protocol: Protocol) -> Deferred[Protocol]:
        """Connect *protocol* to a backend data port, at the control connection's peer.

        With ``PROT P`` the data connection resumes the control connection's TLS session.
        No PROXY header here: the spec's receivers (ProFTPD's mod_proxy_protocol, HAProxy
        in front of one port) expect it on the control connection only, and a server that
        read none on a data connection would store the header in the uploaded file.
        """
        endpoint = self._endpoint(control.peer_host, port)
        factory: IProtocolFactory = PrebuiltFactory(protocol)
        if control.tls is not None and control.protect_data:
            factory = BulkTLSFactory(control.tls.for_data(), True, factory)
        connected: Deferred[Protocol] = endpoint.connect(factory)  # type: ignore[assignment]
        return connected


class _HeaderFirstTLS(TLSMemoryBIOProtocol):
    """Implicit TLS after a PROXY header: the header goes out in clear, before the ClientHello."""

    factory: HeaderFirstTLSFactory

    def makeConnection(self, transport: Any) -> None:
        transport.write(self.factory.proxy_header)
        super().makeConnection(transport)


class HeaderFirstTLSFactory(TLSMemoryBIOFactory):
    """``wrapClientTLS``'s factory, with a PROXY header written first (``ftps://`` backends)."""

    protocol = _HeaderFirstTLS

    def __init__(self, tls: BackendSessionTLS, header: bytes, wrapped: IProtocolFactory) -> None:
        super().__init__(tls, True, wrapped)
        self.proxy_header = header


def connector_for(reactor: IReactorTCP, spec: Backend, timeout: float) -> BackendConnector:
    """The connector of one configured backend; its TLS files are checked now, at start-up."""
    tls = None
    if spec.tls:
        tls = BackendTLSSettings(
            server_name=spec.server_name or spec.address.host,
            ca_file=spec.ca,
            insecure=spec.insecure,
            client_certificate=spec.client_certificate,
            client_key=spec.client_key,
            maximum_version=spec.tls_max_version,
        )
        tls.validate()
    return BackendConnector(
        reactor,
        spec.address,
        timeout,
        tls,
        protect_data=spec.data_protection == DataProtection.PRIVATE,
        proxy_protocol=spec.proxy_protocol,
    )
