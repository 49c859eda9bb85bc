"""The backend control connection: commands out, replies matched back to their command.

Replies are matched first-in first-out: each command receives its 1xx replies
and then exactly one final reply (RFC 959 §4.2).  A reply that arrives with no
command waiting (``421`` on idle timeout, say) goes to ``on_unsolicited``.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import BackendAddress
from .ftp.errors import FTPSyntaxError
from .ftp.replies import Reply, ReplyParser
from .sockets import tune

log = Logger()

ReplyHandler = Callable[[Reply], None]


class BackendGreetingError(Exception):
    """The backend answered the connection with something other than 220."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"backend greeting {reply.code}: {reply.text}")
        self.reply = reply


class BackendControl(Protocol):
    """One backend control connection, owned by one client session."""

    def __init__(self) -> None:
        self._parser = ReplyParser()
        self._waiting: deque[ReplyHandler] = deque()
        self.greeting: Deferred[Reply] = Deferred()
        self._greeted = False
        self.on_unsolicited: Callable[[Reply], None] = lambda reply: None
        self.on_lost: Callable[[str], None] = lambda why: None
        self.closing = False

    @property
    def peer_host(self) -> str:
        return str(self.transport.getPeer().host)  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        tune(self.transport)

    def request(self, line: bytes, handler: ReplyHandler) -> None:
        """Send one command line (CRLF included) and route its replies to *handler*."""
        self._waiting.append(handler)
        self.transport.write(line)  # type: ignore[union-attr]

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except FTPSyntaxError as error:
            log.warn("backend sent a malformed reply: {error}", error=error)
            self.on_lost(f"malformed reply from backend ({error})")
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            self._dispatch(reply)

    def _dispatch(self, reply: Reply) -> None:
        if not self._greeted:
            if reply.is_preliminary:
                return  # 120: service ready in nnn minutes (RFC 959)
            self._greeted = True
            if reply.code == 220:
                self.greeting.callback(reply)
            else:
                self.greeting.errback(Failure(BackendGreetingError(reply)))
            return
        if not self._waiting:
            self.on_unsolicited(reply)
            return
        handler = self._waiting[0]
        if not reply.is_preliminary:
            self._waiting.popleft()
        handler(reply)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if not self._greeted:
            self._greeted = True
            self.greeting.errback(reason)
        if not self.closing:
            self.on_lost(reason.getErrorMessage())


class BackendConnector:
    """Opens connections to the configured backend: control connections and data connections.

    Sessions get this from the shared context, so tests can substitute in-memory
    connections and later work (TLS to the backend) changes one place.
    """

    def __init__(self, reactor: IReactorTCP, address: BackendAddress, timeout: float) -> None:
        self._reactor = reactor
        self.address = address
        self.timeout = timeout

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        """A TCP endpoint; names are resolved, IP literals are not (no resolver thread)."""
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            return HostnameEndpoint(self._reactor, host, port, timeout=self.timeout)
        if version == 4:
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=self.timeout)
        return TCP6ClientEndpoint(self._reactor, host, port, timeout=self.timeout)

    def control(self) -> Deferred[BackendControl]:
        """Connect and wait for the greeting; fails with the reason otherwise."""
        endpoint = self._endpoint(self.address.host, self.address.port)
        factory = Factory.forProtocol(BackendControl)
        factory.noisy = False
        connected: Deferred[BackendControl] = endpoint.connect(factory)  # type: ignore[assignment]
        return connected.addCallback(self._greeted)

    def _greeted(self, control: BackendControl) -> Deferred[BackendControl]:
        timer = self._reactor.callLater(self.timeout, control.greeting.cancel)  # type: ignore[attr-defined]

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        def failed(reason: Failure) -> Failure:
            control.close()
            return reason

        control.greeting.addBoth(done)
        return control.greeting.addCallbacks(lambda _: control, failed)

    def data(self, host: str, port: int, protocol: Protocol) -> Deferred[Protocol]:
        """Connect *protocol* to a backend data port."""
        endpoint = self._endpoint(host, port)
        connected: Deferred[Protocol] = endpoint.connect(_Prebuilt(protocol))  # type: ignore[assignment]
        return connected


class _Prebuilt(Factory):
    """Connects an already-built protocol."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol
