"""The session state machine, driven through in-memory transports (no sockets, no clock waits).

Each test reads as a playbook: what the client sends, what the backend
receives and answers, what the client sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from ftpsproxy.control.backend import BackendControl
from ftpsproxy.control.context import ProxyContext
from ftpsproxy.control.frontend import FrontendProtocol
from ftpsproxy.control.routing import BackendRouter
from ftpsproxy.control.states import State
from ftpsproxy.data.ports import PortAllocator
from ftpsproxy.net.proxy_header_out import ClientFacts, ClientTLS
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.routing_events import RoutingEvents
from ftpsproxy.pool import Pool
from ftpsproxy.settings.config import Config, PortRange, parse_backend_url

CLIENT = IPv4Address("TCP", "127.0.0.5", 50000)
PROXY = IPv4Address("TCP", "127.0.0.1", 2121)
BACKEND = IPv4Address("TCP", "127.0.0.1", 2100)


class TLSCapableTransport(StringTransport):
    """Records ``startTLS`` instead of performing it."""

    tls_started = False

    def startTLS(self, context: Any) -> None:
        self.tls_started = True


class EphemeralPortReactor(MemoryReactorClock):
    """Like the kernel, gives ``listenTCP(0, …)`` a real-looking port number."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = super().listenTCP(port, factory, backlog, interface)
        if port == 0:
            listening._hostAddress = IPv4Address("TCP", interface or "0.0.0.0", 50123)
        return listening


class InMemoryBackend:
    """Stands in for ``BackendConnector``: each connection is a StringTransport we control."""

    def __init__(self) -> None:
        self.pending: list[Deferred[BackendControl]] = []
        self.facts: list[ClientFacts | None] = []  # what each control() was told of the client
        self.data_connections: list[tuple[str, int, Protocol, Deferred[Protocol]]] = []

    def control(self, facts: ClientFacts | None = None) -> Deferred[BackendControl]:
        self.facts.append(facts)
        waiting: Deferred[BackendControl] = Deferred()
        self.pending.append(waiting)
        return waiting

    def data(self, control: BackendControl, port: int, protocol: Protocol) -> Deferred[Protocol]:
        connected: Deferred[Protocol] = Deferred()
        self.data_connections.append((control.peer_host, port, protocol, connected))
        return connected

    def accept(self) -> tuple[BackendControl, StringTransport]:
        control = BackendControl()
        transport = StringTransport(peerAddress=BACKEND)
        control.makeConnection(transport)
        control.dataReceived(b"220 backend ready\r\n")
        self.pending.pop(0).callback(control)
        return control, transport


class Harness:
    def __init__(
        self,
        *,
        tls: bool = False,
        require_tls: bool = False,
        ports: int = 2,
        peer: IPv4Address | IPv6Address = CLIENT,
        **settings: Any,
    ) -> None:
        self.reactor = EphemeralPortReactor()
        self.backend = InMemoryBackend()
        config = Config(
            backend=parse_backend_url("ftp://127.0.0.1:2100"),
            listen=("tcp:2121",),
            passive_ports=PortRange(41000, 41000 + ports - 1),
            public_address="192.0.2.1",
        )
        config = replace(config, require_tls=require_tls, **settings)
        self.metrics = Metrics()
        connectors = {"default": self.backend}
        router = BackendRouter(
            self.reactor,
            Pool(config.pool),
            connectors,  # type: ignore[arg-type]
            RoutingEvents(self.metrics, connectors),
        )
        self.context = ProxyContext(
            reactor=self.reactor,
            config=config,
            metrics=self.metrics,
            allocator=PortAllocator(41000, 41000 + ports - 1),
            server_tls=SimpleNamespace(current=object()) if tls else None,  # type: ignore[arg-type]
            router=router,
        )
        self.client = FrontendProtocol(self.context, "test", "explicit" if tls else "plain")
        self.client_transport = TLSCapableTransport(hostAddress=PROXY, peerAddress=peer)
        self.client.makeConnection(self.client_transport)
        self.control: BackendControl | None = None
        self.backend_transport: StringTransport | None = None

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def replies(self) -> bytes:
        value = self.client_transport.value()
        self.client_transport.clear()
        return value

    def sent_to_backend(self) -> bytes:
        assert self.backend_transport is not None
        value = self.backend_transport.value()
        self.backend_transport.clear()
        return value

    def backend_says(self, data: bytes) -> None:
        assert self.control is not None
        self.control.dataReceived(data)

    def login(self) -> None:
        self.replies()
        self.send(b"USER demo\r\n")
        self.control, self.backend_transport = self.backend.accept()
        assert self.sent_to_backend() == b"USER demo\r\n"
        self.backend_says(b"331 Password required\r\n")
        self.send(b"PASS secret\r\n")
        assert self.sent_to_backend() == b"PASS secret\r\n"
        self.backend_says(b"230 Logged in\r\n")
        assert self.replies() == b"331 Password required\r\n230 Logged in\r\n"

    @property
    def state(self) -> State:
        assert self.client.session is not None
        return self.client.session.state


@pytest.fixture
def harness() -> Iterator[Harness]:
    yield Harness()


def test_proxy_greets_client_itself(harness: Harness) -> None:
    assert harness.replies() == b"220 ftpsproxy ready.\r\n"
    assert harness.backend.pending == []


def test_pre_login_commands_are_answered_without_backend(harness: Harness) -> None:
    harness.replies()
    harness.send(b"SYST\r\nNOOP\r\nOPTS UTF8 ON\r\nPWD\r\nPASS x\r\nAUTH TLS\r\n")
    assert harness.replies() == (
        b"215 UNIX Type: L8\r\n200 NOOP ok.\r\n200 UTF8 mode is always on.\r\n"
        b"530 Please login with USER and PASS.\r\n503 Login with USER first.\r\n"
        b"502 TLS is not configured on this server.\r\n"
    )
    assert harness.backend.pending == []


def test_feat_before_login_shows_proxy_features() -> None:
    harness = Harness(tls=True)
    harness.replies()
    harness.send(b"FEAT\r\n")
    assert harness.replies() == (
        b"211-Features:\r\n AUTH TLS\r\n AUTH SSL\r\n PBSZ\r\n PROT\r\n EPSV\r\n EPRT\r\n UTF8\r\n"
        b"211 End\r\n"
    )


def test_garbage_gets_500_and_session_goes_on(harness: Harness) -> None:
    harness.replies()
    harness.send(b"\x00\x01\x02\r\nNOOP\r\n")
    assert harness.replies() == b"500 Syntax error, command unrecognized.\r\n200 NOOP ok.\r\n"


def test_over_long_line_closes_session(harness: Harness) -> None:
    harness.replies()
    harness.send(b"A" * 5000)
    assert harness.replies() == b"500 Command line too long.\r\n"
    assert harness.client_transport.disconnecting


def test_commands_pipelined_behind_auth_tls_are_discarded() -> None:
    """CVE-2011-0411: bytes sent in clear behind AUTH TLS must not run after the upgrade."""
    harness = Harness(tls=True)
    harness.replies()
    harness.send(b"AUTH TLS\r\nUSER injected\r\nPASS injected\r\n")
    assert harness.replies() == b"234 AUTH TLS successful.\r\n"
    assert harness.client_transport.tls_started
    assert harness.backend.pending == []
    assert harness.state is State.AWAITING_USER


def test_require_tls_refuses_login_in_clear() -> None:
    harness = Harness(tls=True, require_tls=True)
    harness.replies()
    harness.send(b"USER demo\r\nPASS pw\r\n")
    assert harness.replies() == (
        b"530 TLS required: use AUTH TLS before logging in.\r\n503 Login with USER first.\r\n"
    )
    assert harness.backend.pending == []


def test_unreachable_backend_gives_421_and_closes(harness: Harness) -> None:
    harness.replies()
    harness.send(b"USER demo\r\n")
    harness.backend.pending.pop().errback(Failure(ConnectionRefusedError()))
    assert harness.replies() == (
        b"421 Service not available: the backend server cannot be reached.\r\n"
    )
    assert harness.client_transport.disconnecting
    assert harness.state is State.CLOSED


def test_login_is_relayed_and_session_becomes_ready(harness: Harness) -> None:
    harness.login()
    assert harness.state is State.READY
    assert harness.metrics.logins_total.labels(result="success")._value.get() == 1


def test_multi_line_reply_is_relayed_intact(harness: Harness) -> None:
    harness.login()
    harness.send(b"HELP\r\n")
    assert harness.sent_to_backend() == b"HELP\r\n"
    reply = b"214-The following commands are recognized:\r\n USER PASS\r\n214 Help OK.\r\n"
    harness.backend_says(reply[:30])
    harness.backend_says(reply[30:])
    assert harness.replies() == reply


def test_pipelined_commands_go_to_backend_one_at_a_time(harness: Harness) -> None:
    harness.login()
    harness.send(b"PWD\r\nCWD /x\r\nSYST\r\n")
    assert harness.sent_to_backend() == b"PWD\r\n"
    harness.backend_says(b'257 "/"\r\n')
    assert harness.sent_to_backend() == b"CWD /x\r\n"
    harness.backend_says(b"250 ok\r\n")
    assert harness.sent_to_backend() == b"SYST\r\n"
    harness.backend_says(b"215 UNIX\r\n")
    assert harness.replies() == b'257 "/"\r\n250 ok\r\n215 UNIX\r\n'


def test_feat_after_login_merges_backend_features(harness: Harness) -> None:
    harness.login()
    harness.send(b"FEAT\r\n")
    assert harness.sent_to_backend() == b"FEAT\r\n"
    harness.backend_says(b"211-Features:\r\n SIZE\r\n EPRT\r\n MODE Z\r\n211 End\r\n")
    assert harness.replies() == b"211-Features:\r\n EPSV\r\n EPRT\r\n UTF8\r\n SIZE\r\n211 End\r\n"


def test_malformed_backend_reply_ends_session_with_421(harness: Harness) -> None:
    harness.login()
    harness.send(b"PWD\r\n")
    harness.backend_says(b"this is not ftp\r\n")
    assert harness.replies().startswith(b"421 ")
    assert harness.client_transport.disconnecting
    assert harness.state is State.CLOSED


def test_refused_commands_never_reach_backend(harness: Harness) -> None:
    harness.login()
    harness.send(b"CCC\r\nMODE Z\r\nLPSV\r\n")
    assert harness.sent_to_backend() == b""
    replies = harness.replies()
    assert replies.startswith(b"533 ") and b"\r\n504 " in replies and b"\r\n502 " in replies


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"PORT 127,0,0,9,100,1", b"504"),  # another host: a bounce attempt (RFC 2577)
        (b"PORT 127,0,0,5,0,21", b"504"),  # a privileged port of the client
        (b"EPRT |1|127.0.0.66|5000|", b"504"),
        (b"EPRT |3|x|5000|", b"522"),
        (b"PORT 1,2,3", b"501"),
    ],
)
def test_active_mode_refusals(harness: Harness, command: bytes, code: bytes) -> None:
    harness.login()
    harness.send(command + b"\r\n")
    assert harness.replies().startswith(code + b" ")
    assert harness.sent_to_backend() == b""
    bounces = harness.metrics.data_connections_refused.labels(reason="bounce")._value.get()
    assert bounces == (1 if code == b"504" else 0)


def test_active_mode_connects_to_client_on_transfer(harness: Harness) -> None:
    harness.login()
    harness.send(b"EPRT |1|127.0.0.5|40000|\r\n")
    assert harness.sent_to_backend() == b"EPSV\r\n"
    harness.backend_says(b"229 Entering Extended Passive Mode (|||30000|)\r\n")
    assert harness.replies() == b"200 EPRT command successful.\r\n"
    assert harness.reactor.tcpClients == []  # not before the transfer command
    harness.send(b"RETR file\r\n")
    host, port, _, _, bind = harness.reactor.tcpClients[-1]
    assert (host, port, bind) == ("127.0.0.5", 40000, ("127.0.0.1", 0))
    assert harness.sent_to_backend() == b"RETR file\r\n"


def _passive(harness: Harness, command: bytes = b"PASV\r\n") -> tuple[int, Any]:
    """Run PASV/EPSV through to the client's reply; returns (our port, its listener factory)."""
    harness.send(command)
    assert harness.sent_to_backend() == b"EPSV\r\n"
    harness.backend_says(b"229 Entering Extended Passive Mode (|||30000|)\r\n")
    assert harness.backend.data_connections == []  # connected with the transfer command
    listen_port, factory, _, interface = harness.reactor.tcpServers[-1]
    assert 41000 <= listen_port <= 41001 and interface == "127.0.0.1"
    return listen_port, factory


def _client_data(factory: Any) -> tuple[Any, StringTransport]:
    """The client opens its data connection to our passive port."""
    protocol = factory.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    protocol.makeConnection(transport)
    return protocol, transport


def _backend_data(harness: Harness) -> tuple[Protocol, StringTransport]:
    """The backend data connection the transfer command made, now connected."""
    host, port, protocol, _ = harness.backend.data_connections[-1]
    assert (host, port) == ("127.0.0.1", 30000)
    transport = StringTransport(peerAddress=BACKEND)
    protocol.makeConnection(transport)
    return protocol, transport


def test_pasv_reply_uses_public_address_and_range(harness: Harness) -> None:
    harness.login()
    port, _ = _passive(harness)
    p1, p2 = port >> 8, port & 0xFF
    assert harness.replies() == f"227 Entering Passive Mode (192,0,2,1,{p1},{p2}).\r\n".encode()
    assert harness.metrics.passive_ports_in_use._value.get() == 1


def test_epsv_reply_carries_only_the_port(harness: Harness) -> None:
    harness.login()
    port, _ = _passive(harness, b"EPSV\r\n")
    assert harness.replies() == f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()


def test_backend_pasv_address_is_ignored_after_epsv_refusal(harness: Harness) -> None:
    harness.login()
    harness.send(b"EPSV\r\n")
    assert harness.sent_to_backend() == b"EPSV\r\n"
    harness.backend_says(b"500 EPSV not understood\r\n")
    assert harness.sent_to_backend() == b"PASV\r\n"
    harness.backend_says(b"227 Entering Passive Mode (10,9,9,9,117,48).\r\n")
    harness.send(b"LIST\r\n")
    host, port, _, _ = harness.backend.data_connections[-1]
    assert (host, port) == ("127.0.0.1", 30000)


def test_invalid_backend_passive_reply_gives_425_and_frees_port(harness: Harness) -> None:
    harness.login()
    harness.send(b"PASV\r\n")
    assert harness.sent_to_backend() == b"EPSV\r\n"
    harness.backend_says(b"229 Entering Extended Passive Mode (|||99999|)\r\n")
    assert harness.replies().startswith(b"425 ")
    assert harness.context.allocator.in_use == 0
    harness.send(b"NOOP\r\n")
    assert harness.sent_to_backend() == b"NOOP\r\n"


def test_exhausted_passive_range_gives_425_and_session_goes_on() -> None:
    harness = Harness(ports=1)
    harness.login()
    taken = harness.context.allocator.acquire("192.0.2.99")  # another client holds the only port
    harness.send(b"EPSV\r\n")
    assert harness.replies() == b"425 No passive port available; try again later.\r\n"
    assert harness.sent_to_backend() == b""
    assert harness.metrics.passive_ports_exhausted._value.get() == 1
    assert isinstance(taken, int)
    harness.context.allocator.release(taken)
    _passive(harness, b"EPSV\r\n")
    assert harness.replies().startswith(b"229 ")


def test_transfer_without_pasv_gets_425(harness: Harness) -> None:
    harness.login()
    harness.send(b"RETR file\r\n")
    assert harness.replies() == b"425 Use PASV or EPSV first.\r\n"
    assert harness.sent_to_backend() == b""


def test_data_connection_from_foreign_address_is_refused(harness: Harness) -> None:
    harness.login()
    _, factory = _passive(harness)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.66", 40000)) is None
    counter = harness.metrics.data_connections_refused.labels(reason="foreign_address")
    assert counter._value.get() == 1
    assert factory.buildProtocol(CLIENT) is not None


def test_download_final_reply_waits_for_client_data_close(harness: Harness) -> None:
    harness.login()
    _, factory = _passive(harness)
    harness.replies()
    client_data, client_transport = _client_data(factory)
    harness.send(b"RETR file\r\n")
    backend_data, _ = _backend_data(harness)
    assert harness.sent_to_backend() == b"RETR file\r\n"
    harness.backend_says(b"150 Opening data connection\r\n")
    backend_data.dataReceived(b"x" * 1000)
    backend_data.dataReceived(b"y" * 24)
    assert client_transport.value() == b"x" * 1000 + b"y" * 24
    backend_data.connectionLost(Failure(ConnectionDone()))
    harness.backend_says(b"226 Transfer complete\r\n")
    # The client's data connection is closing but not closed: 226 must wait.
    assert client_transport.disconnecting
    assert harness.replies() == b"150 Opening data connection\r\n"
    client_data.connectionLost(Failure(ConnectionDone()))
    assert harness.replies() == b"226 Transfer complete\r\n"
    assert harness.metrics.bytes_total.labels(direction="download")._value.get() == 1024
    assert harness.context.allocator.in_use == 0
    done = harness.metrics.transfers_total.labels(direction="download", result="complete")
    assert done._value.get() == 1


def test_download_the_client_never_finishes_taking_is_426_not_226() -> None:
    """The backend sent everything, but the client's side does not close within the close
    timeout (it stopped reading, or never answers close_notify): reset it, and the backend's
    226 becomes 426, since the client may not have every byte."""
    harness = Harness(close_timeout=2.0)
    harness.login()
    _, factory = _passive(harness)
    harness.replies()
    client_data, client_transport = _client_data(factory)
    harness.send(b"RETR file\r\n")
    backend_data, _ = _backend_data(harness)
    harness.backend_says(b"150 Opening data connection\r\n")
    backend_data.dataReceived(b"x" * 1000)
    backend_data.connectionLost(Failure(ConnectionDone()))
    harness.backend_says(b"226 Transfer complete\r\n")
    assert client_transport.disconnecting and not client_transport.disconnected
    harness.reactor.advance(1.9)
    assert harness.replies() == b"150 Opening data connection\r\n"
    harness.reactor.advance(0.1)
    assert client_transport.disconnected  # abortConnection
    client_data.connectionLost(Failure(ConnectionLost()))
    assert harness.replies() == b"426 Connection closed; transfer aborted.\r\n"
    assert (
        harness.metrics.registry.get_sample_value(
            "ftpsproxy_data_timeouts_total", {"kind": "close"}
        )
        == 1
    )
    failed = harness.metrics.transfers_total.labels(direction="download", result="failed")
    assert failed._value.get() == 1


def test_upload_closes_backend_only_after_all_bytes_and_relays_226(harness: Harness) -> None:
    harness.login()
    _, factory = _passive(harness)
    client_data, _ = _client_data(factory)
    # A client that writes before the command is known: held, not lost.
    client_data.dataReceived(b"early")
    harness.send(b"STOR up.bin\r\n")
    backend_data, backend_transport = _backend_data(harness)
    harness.backend_says(b"150 Ok to send data\r\n")
    client_data.dataReceived(b"-late")
    client_data.connectionLost(Failure(ConnectionDone()))
    assert backend_transport.value() == b"early-late"
    assert backend_transport.disconnecting
    backend_data.connectionLost(Failure(ConnectionDone()))
    harness.replies()
    harness.backend_says(b"226 Transfer complete\r\n")
    assert harness.replies() == b"226 Transfer complete\r\n"
    assert harness.metrics.bytes_total.labels(direction="upload")._value.get() == 10


def test_failed_transfer_command_frees_data_connections(harness: Harness) -> None:
    harness.login()
    _, factory = _passive(harness)
    _, client_transport = _client_data(factory)
    harness.replies()
    harness.send(b"RETR missing\r\n")
    _, backend_transport = _backend_data(harness)
    assert harness.sent_to_backend() == b"RETR missing\r\n"
    harness.backend_says(b"550 No such file\r\n")
    assert harness.replies() == b"550 No such file\r\n"
    assert client_transport.disconnecting and backend_transport.disconnecting
    assert harness.context.allocator.in_use == 0
    failed = harness.metrics.transfers_total.labels(direction="download", result="failed")
    assert failed._value.get() == 1
    harness.send(b"NOOP\r\n")
    assert harness.sent_to_backend() == b"NOOP\r\n"


def test_client_that_never_connects_gets_425(harness: Harness) -> None:
    harness.login()
    _passive(harness)
    harness.replies()
    harness.send(b"RETR file\r\n")
    backend_data, _ = _backend_data(harness)
    harness.backend_says(b"150 Opening\r\n")
    harness.reactor.advance(harness.context.config.passive_timeout + 1)
    backend_data.connectionLost(Failure(ConnectionDone()))
    harness.backend_says(b"226 Transfer complete\r\n")
    assert harness.replies() == b"150 Opening\r\n425 Can't open data connection.\r\n"
    assert harness.context.allocator.in_use == 0


def test_client_leaving_ends_backend_and_frees_ports(harness: Harness) -> None:
    harness.login()
    _passive(harness)
    harness.client.connectionLost(Failure(ConnectionDone()))
    assert harness.backend_transport is not None and harness.backend_transport.disconnecting
    assert harness.context.allocator.in_use == 0
    assert harness.state is State.CLOSED


def test_backend_closing_gives_client_421(harness: Harness) -> None:
    harness.login()
    assert harness.control is not None
    harness.control.connectionLost(Failure(ConnectionDone()))
    assert harness.replies().startswith(b"421 ")
    assert harness.client_transport.disconnecting


def _download_under_way(harness: Harness) -> tuple[Any, StringTransport, Any, StringTransport]:
    """Logged in, PASV, RETR sent, both data connections up and the backend's 150 relayed:
    (client data protocol, its transport, backend data protocol, its transport)."""
    harness.login()
    _, factory = _passive(harness)
    client_data, client_transport = _client_data(factory)
    harness.send(b"RETR big\r\n")
    backend_data, backend_transport = _backend_data(harness)
    harness.backend_says(b"150 Opening\r\n")
    return client_data, client_transport, backend_data, backend_transport


def test_backend_lost_mid_transfer_gives_426_then_421(harness: Harness) -> None:
    _, client_transport, backend_data, _ = _download_under_way(harness)
    backend_data.dataReceived(b"z" * 100)
    harness.replies()
    assert harness.control is not None
    harness.control.connectionLost(Failure(ConnectionLost()))
    assert harness.replies() == (
        b"426 Connection closed; transfer aborted: the backend went away.\r\n"
        b"421 Service not available: the backend closed the connection.\r\n"
    )
    assert client_transport.disconnected  # the client's data connection is reset
    failed = harness.metrics.transfers_total.labels(direction="download", result="failed")
    assert failed._value.get() == 1


def test_abor_during_download_closes_data_and_relays_replies_in_order(harness: Harness) -> None:
    client_data, client_transport, backend_data, backend_transport = _download_under_way(harness)
    backend_data.dataReceived(b"z" * 100)
    harness.replies()
    harness.sent_to_backend()
    harness.send(b"\xff\xf4\xff\xf2ABOR\r\nPWD\r\n")
    assert harness.sent_to_backend() == b"ABOR\r\n"
    assert client_transport.disconnected  # the client's side closes at once
    assert not backend_transport.disconnected  # the backend closes its own side on ABOR
    harness.reactor.advance(5)
    assert backend_transport.disconnected  # ... or the proxy does, after a grace period
    client_data.connectionLost(Failure(ConnectionDone()))
    backend_data.connectionLost(Failure(ConnectionDone()))
    harness.backend_says(b"426 Transfer aborted\r\n226 ABOR successful\r\n")
    assert harness.replies() == b"426 Transfer aborted\r\n226 ABOR successful\r\n"
    assert harness.sent_to_backend() == b"PWD\r\n"  # the session goes on
    aborted = harness.metrics.transfers_total.labels(direction="download", result="aborted")
    assert aborted._value.get() == 1
    assert harness.context.allocator.in_use == 0


def _assert_valid_reply_stream(data: bytes) -> None:
    """Everything sent to a client parses as complete RFC 959 replies."""
    from ftpsproxy.ftp.replies import ReplyParser

    parser = ReplyParser()
    replies = parser.feed(data)
    assert parser.feed(b"") == []
    assert b"".join(reply.encode() for reply in replies) == data


_COMMANDS = st.sampled_from(
    [b"NOOP", b"PWD", b"PASV", b"EPSV", b"EPSV ALL", b"EPSV 2", b"PORT 127,0,0,5,200,1",
     b"EPRT |1|127.0.0.5|5000|", b"RETR x", b"STOR y", b"LIST", b"ABOR", b"FEAT", b"AUTH TLS",
     b"PBSZ 0", b"PROT P", b"USER a", b"PASS b", b"QUIT", b"REST 10", b"TYPE A", b"CCC",
     b"MODE Z", b"OPTS UTF8 ON", b"\xff\xf4\xff\xf2ABOR", b"SITE x"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(_COMMANDS, st.binary(max_size=40)), max_size=25),
    st.lists(st.sampled_from([b"200 ok", b"500 no", b"150 go", b"226 done", b"421 bye",
                              b"229 (|||30000|)", b"227 (1,2,3,4,5,6)", b"211-x\r\n y\r\n211 z",
                              b"junk", b"229 (|||0|)"]), max_size=25),
)  # fmt: skip
def test_random_client_lines_and_backend_replies_never_break_the_session(
    lines: list[bytes], backend_replies: list[bytes]
) -> None:
    harness = Harness()
    harness.login()
    output = bytearray()
    answers = iter(backend_replies)
    for line in lines:
        if harness.state is State.CLOSED:
            break
        harness.send(line + b"\r\n")
        output += harness.replies()
        if harness.backend_transport is not None and harness.sent_to_backend():
            answer = next(answers, b"200 ok")
            harness.backend_says(answer + b"\r\n")
            output += harness.replies()
    _assert_valid_reply_stream(bytes(output))
    harness.client.connectionLost(Failure(ConnectionDone()))
    assert harness.state is State.CLOSED
    assert harness.context.allocator.in_use == 0


def test_backend_active_mode_sends_eprt_then_port_fallback() -> None:
    harness = Harness(backend_data_mode="active")
    harness.login()
    assert harness.backend_transport is not None
    harness.send(b"PASV\r\n")
    assert harness.sent_to_backend() == b"EPRT |1|10.0.0.1|50123|\r\n"  # the backend-side address
    harness.backend_says(b"500 EPRT not understood\r\n")
    assert harness.sent_to_backend() == b"PORT 10,0,0,1,195,203\r\n"
    harness.backend_says(b"200 PORT ok\r\n")
    assert harness.replies().startswith(b"227 ")
    listening = [server for server in harness.reactor.tcpServers if server[0] == 0]
    assert len(listening) == 1  # an ephemeral port on the backend side, not the passive range


def test_host_is_answered_then_sent_to_backend_before_user(harness: Harness) -> None:
    harness.replies()
    harness.send(b"HOST ftp.example.org\r\nUSER demo\r\n")
    assert harness.replies() == b"220 HOST accepted.\r\n"
    harness.control, harness.backend_transport = harness.backend.accept()
    assert harness.sent_to_backend() == b"HOST ftp.example.org\r\n"
    harness.backend_says(b"502 HOST not implemented\r\n")
    assert harness.sent_to_backend() == b"USER demo\r\n"
    harness.backend_says(b"331 Password required\r\n")
    assert harness.replies() == b"331 Password required\r\n"  # the 502 stays between us


def test_login_timeout_holds_even_for_a_dribbling_client() -> None:
    harness = Harness(login_timeout=30.0)
    harness.replies()
    for _ in range(40):  # one byte a second: never a full line
        harness.send(b"N")
        harness.reactor.advance(1)
    assert harness.replies() == b"421 Login timeout.\r\n"
    assert harness.state is State.CLOSED


def test_idle_timeout_after_login_but_not_during_a_transfer() -> None:
    harness = Harness(idle_timeout=100.0)
    harness.login()
    harness.reactor.advance(99)
    harness.send(b"NOOP\r\n")
    assert harness.sent_to_backend() == b"NOOP\r\n"
    harness.backend_says(b"200 ok\r\n")
    harness.reactor.advance(99)
    assert harness.state is State.READY  # each command resets the clock
    _, factory = _passive(harness)
    client_data, _ = _client_data(factory)
    harness.send(b"RETR big\r\n")
    backend_data, _ = _backend_data(harness)
    harness.backend_says(b"150 go\r\n")
    harness.reactor.advance(500)  # a long transfer is not idleness
    assert harness.state is State.TRANSFERRING
    backend_data.connectionLost(Failure(ConnectionDone()))
    client_data.connectionLost(Failure(ConnectionDone()))
    harness.backend_says(b"226 done\r\n")
    harness.replies()
    harness.reactor.advance(101)
    assert harness.replies() == b"421 Idle timeout.\r\n"


def test_backend_that_never_answers_gives_421() -> None:
    harness = Harness(backend_reply_timeout=20.0)
    harness.login()
    harness.send(b"PWD\r\n")
    harness.reactor.advance(21)
    assert harness.replies().startswith(b"421 ")
    assert harness.state is State.CLOSED


def test_sessions_over_the_per_ip_limit_get_421() -> None:
    harness = Harness(max_sessions_per_ip=2)
    second = FrontendProtocol(harness.context, "test", "plain")
    second.makeConnection(StringTransport(hostAddress=PROXY, peerAddress=CLIENT))
    third_transport = StringTransport(hostAddress=PROXY, peerAddress=CLIENT)
    third = FrontendProtocol(harness.context, "test", "plain")
    third.makeConnection(third_transport)
    assert third_transport.value() == b"421 Too many sessions from your address.\r\n"
    assert third_transport.disconnecting and third.session is None
    other = StringTransport(hostAddress=PROXY, peerAddress=IPv4Address("TCP", "127.0.0.9", 1))
    FrontendProtocol(harness.context, "test", "plain").makeConnection(other)
    assert other.value().startswith(b"220 ")
    harness.client.connectionLost(Failure(ConnectionDone()))
    fourth_transport = StringTransport(hostAddress=PROXY, peerAddress=CLIENT)
    FrontendProtocol(harness.context, "test", "plain").makeConnection(fourth_transport)
    assert fourth_transport.value().startswith(b"220 ")


def _connect_from(harness: Harness, host: str) -> StringTransport:
    transport = StringTransport(hostAddress=PROXY, peerAddress=IPv6Address("TCP", host, 50000))
    FrontendProtocol(harness.context, "test", "plain").makeConnection(transport)
    return transport


def test_the_per_ip_limit_counts_an_ipv6_client_by_its_network() -> None:
    harness = Harness(max_sessions_per_ip=2)
    assert _connect_from(harness, "2001:db8:1:2::1").value().startswith(b"220 ")
    assert _connect_from(harness, "2001:db8:1:2:ffff::9").value().startswith(b"220 ")
    refused = _connect_from(harness, "2001:db8:1:2:a:b:c:d")  # the same /64
    assert refused.value() == b"421 Too many sessions from your address.\r\n"
    assert _connect_from(harness, "2001:db8:1:3::1").value().startswith(b"220 ")  # next /64
    assert harness.context.sessions_per_ip["2001:db8:1:2::/64"] == 2

    harness.context.config = replace(harness.context.config, ipv6_prefix_length=128)
    assert _connect_from(harness, "2001:db8:1:2::77").value().startswith(b"220 ")
    # Sessions keep what they were counted as: ending them frees the right places.
    assert harness.context.sessions_per_ip["2001:db8:1:2::77"] == 1


def test_stat_during_a_transfer_is_answered_by_the_proxy(harness: Harness) -> None:
    harness.login()
    _, factory = _passive(harness)
    _client_data(factory)
    harness.send(b"RETR big\r\n")
    backend_data, _ = _backend_data(harness)
    harness.backend_says(b"150 go\r\n")
    backend_data.dataReceived(b"q" * 4096)
    harness.replies()
    harness.sent_to_backend()
    harness.send(b"STAT\r\n")
    assert harness.replies() == b"213 Status: download in progress, 4096 bytes relayed.\r\n"
    assert harness.sent_to_backend() == b""


# -- failed logins -------------------------------------------------------------------------


def _fail_login(harness: Harness, *, first: bool = False) -> None:
    harness.send(b"USER demo\r\n")
    if first:
        harness.control, harness.backend_transport = harness.backend.accept()
    assert harness.sent_to_backend() == b"USER demo\r\n"
    harness.backend_says(b"331 Password required\r\n")
    harness.send(b"PASS wrong\r\n")
    assert harness.sent_to_backend() == b"PASS wrong\r\n"
    harness.backend_says(b"530 Login incorrect.\r\n")


def test_failed_login_is_answered_late_and_holds_pipelined_commands() -> None:
    harness = Harness(login_failure_delay=2.0)
    harness.replies()
    _fail_login(harness, first=True)
    harness.send(b"USER again\r\n")
    assert harness.replies() == b"331 Password required\r\n"  # the 530 is held back
    assert harness.sent_to_backend() == b""  # and so is the next guess
    harness.reactor.advance(1.9)
    assert harness.replies() == b""
    harness.reactor.advance(0.1)
    assert harness.replies() == b"530 Login incorrect.\r\n"
    assert harness.sent_to_backend() == b"USER again\r\n"
    sample = harness.metrics.registry.get_sample_value
    assert sample("ftpsproxy_logins_total", {"result": "failure"}) == 1


def test_too_many_failed_logins_lock_the_address_out() -> None:
    harness = Harness(login_failure_delay=0.5, max_login_failures=2, login_lockout=60.0)
    harness.replies()
    _fail_login(harness, first=True)
    harness.reactor.advance(0.5)
    assert harness.replies() == b"331 Password required\r\n530 Login incorrect.\r\n"
    _fail_login(harness)
    harness.reactor.advance(0.5)
    assert harness.replies() == (
        b"331 Password required\r\n530 Login incorrect.\r\n"
        b"421 Too many failed logins from your address; try again later.\r\n"
    )
    assert harness.state is State.CLOSED
    assert harness.client_transport.disconnecting
    sample = harness.metrics.registry.get_sample_value
    assert sample("ftpsproxy_login_lockouts_total") == 1
    assert sample("ftpsproxy_locked_out_addresses") == 1

    # A new connection from the same address is refused before any backend contact.
    again = FrontendProtocol(harness.context, "test", "plain")
    transport = StringTransport(hostAddress=PROXY, peerAddress=CLIENT)
    again.makeConnection(transport)
    locked_out = b"421 Too many failed logins from your address; try again later.\r\n"
    assert transport.value() == locked_out
    assert transport.disconnecting and again.session is None
    assert sample("ftpsproxy_sessions_refused_total", {"reason": "lockout"}) == 1
    assert len(harness.backend.pending) == 0

    # Another address is not affected; the lock ends after the lockout period.
    other = FrontendProtocol(harness.context, "test", "plain")
    other_transport = StringTransport(
        hostAddress=PROXY, peerAddress=IPv4Address("TCP", "127.0.0.6", 50001)
    )
    other.makeConnection(other_transport)
    assert other_transport.value() == b"220 ftpsproxy ready.\r\n"
    harness.reactor.advance(60)
    later = FrontendProtocol(harness.context, "test", "plain")
    later_transport = StringTransport(hostAddress=PROXY, peerAddress=CLIENT)
    later.makeConnection(later_transport)
    assert later_transport.value() == b"220 ftpsproxy ready.\r\n"
    assert sample("ftpsproxy_locked_out_addresses") == 0


def test_the_lockout_covers_the_ipv6_network_the_guesses_came_from() -> None:
    guesser = IPv6Address("TCP", "2001:db8:5:6::10", 50000)
    harness = Harness(
        login_failure_delay=0.5, max_login_failures=2, login_lockout=60.0, peer=guesser
    )
    harness.replies()
    _fail_login(harness, first=True)
    harness.reactor.advance(0.5)
    _fail_login(harness)
    harness.reactor.advance(0.5)
    locked_out = b"421 Too many failed logins from your address; try again later.\r\n"
    assert harness.replies().endswith(locked_out)
    assert _connect_from(harness, "2001:db8:5:6:dead:beef::1").value() == locked_out
    assert _connect_from(harness, "2001:db8:5:7::10").value().startswith(b"220 ")
    assert harness.metrics.registry.get_sample_value("ftpsproxy_locked_out_addresses") == 1


def test_client_that_never_finishes_closing_is_reset_after_the_close_timeout() -> None:
    harness = Harness(close_timeout=3.0)
    harness.replies()
    harness.send(b"QUIT\r\n")
    assert harness.replies() == b"221 Goodbye.\r\n"
    assert harness.client_transport.disconnecting
    assert not harness.client_transport.disconnected
    harness.reactor.advance(3.0)
    assert harness.client_transport.disconnected


def test_the_backend_connector_is_told_the_client_for_a_proxy_header(harness: Harness) -> None:
    """The client's address and port, the proxy's address it reached, the session id
    (as logged) and no TLS: what a PROXY header to the backend carries.  Fails if login
    passes no facts to the router, or the router none to the connector."""
    harness.login()
    assert harness.client.session is not None
    assert harness.backend.facts == [
        ClientFacts("127.0.0.5", 50000, "127.0.0.1", 2121, None, str(harness.client.session.id))
    ]


def test_the_client_tls_facts_are_those_of_its_handshake() -> None:
    harness = Harness(tls=True)
    handle = SimpleNamespace(
        get_protocol_version_name=lambda: "TLSv1.3",
        get_cipher_name=lambda: "TLS_AES_256_GCM_SHA384",
        get_servername=lambda: b"ftp.example.org",
        get_peer_certificate=lambda: None,
    )
    harness.client_transport.getHandle = lambda: handle  # type: ignore[attr-defined]
    harness.client.handshakeCompleted()
    harness.login()
    tls = ClientTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ftp.example.org", certificate=False)
    [facts] = harness.backend.facts
    assert facts is not None and facts.tls == tls
