"""The backend health probe: its sans-IO judgement, and its I/O over in-memory connections."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from ftpsproxy.control.backend import BackendConnector, BackendSetupError, BackendTLSError
from ftpsproxy.control.health import PoolHealth
from ftpsproxy.control.probe import probe_backend
from ftpsproxy.control.probe_outcome import ProbeOutcome, probe_failed, probe_succeeded
from ftpsproxy.control.routing import BackendRouter
from ftpsproxy.ftp.greeting import Greeting, judge_greeting, refusal
from ftpsproxy.ftp.replies import ReplyParser
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.routing_events import RoutingEvents
from ftpsproxy.pool import CheckResult, HealthState, Pool, Thresholds
from ftpsproxy.settings.backends import AdminState, Backend
from ftpsproxy.settings.values import BackendAddress

PLAIN = BackendAddress("ftp", "127.0.0.1", 2121)
TIMEOUT = 3.0

# -- the greeting ------------------------------------------------------------------------------


def _greeting(wire: bytes) -> list[Greeting]:
    return [judge_greeting(reply) for reply in ReplyParser().feed(wire)]


def test_multi_line_220_greeting_is_ready() -> None:
    wire = b"220-Welcome\r\n220-to the\r\n 421 not a reply line\r\n220 server\r\n"
    assert _greeting(wire) == [Greeting.READY]


def test_120_then_220_waits_then_is_ready() -> None:
    assert _greeting(b"120 ready in 1 minute\r\n220 ready\r\n") == [
        Greeting.PENDING,
        Greeting.READY,
    ]


@pytest.mark.parametrize("wire", [b"421 Too many users\r\n", b"530 go away\r\n", b"200 ok\r\n"])
def test_any_other_greeting_is_refused_with_its_code_and_text(wire: bytes) -> None:
    [reply] = ReplyParser().feed(wire)
    assert judge_greeting(reply) is Greeting.REFUSED
    assert refusal(reply) == f"greeting {reply.code}: {reply.text}"


# -- the outcome -------------------------------------------------------------------------------


def test_verification_failure_is_a_tls_handshake_failure_with_its_label() -> None:
    error = BackendTLSError(
        "certificate verification failed: unable to get local issuer certificate",
        kind="verification",
    )
    outcome = probe_failed(error)
    assert outcome == ProbeOutcome(
        up=False,
        reason="TLS handshake failed: certificate verification failed: "
        "unable to get local issuer certificate",
        tls_failure="verification",
        result="tls",
    )


def test_protocol_failure_keeps_its_own_tls_wording() -> None:
    error = BackendTLSError("TLS handshake failed: wrong version number", kind="protocol")
    outcome = probe_failed(error)
    assert outcome.reason == "TLS handshake failed: wrong version number"
    assert outcome.tls_failure == "protocol"


@pytest.mark.parametrize(
    ("error", "reason", "result"),
    [
        (
            BackendSetupError("greeting 421: Too many users"),
            "greeting 421: Too many users",
            "refused",
        ),
        (
            BackendSetupError("no greeting within 10s", kind="timeout"),
            "no greeting within 10s",
            "timeout",
        ),
        (BackendSetupError("AUTH TLS refused: 500 no"), "AUTH TLS refused: 500 no", "refused"),
        (
            ConnectionError("cannot connect: refused"),
            "unreachable: cannot connect: refused",
            "unreachable",
        ),
    ],
)
def test_other_failures_are_down_without_a_tls_label(
    error: Exception, reason: str, result: str
) -> None:
    assert probe_failed(error) == ProbeOutcome(up=False, reason=reason, result=result)


def test_reason_has_no_control_characters_and_is_bounded() -> None:
    outcome = probe_failed(BackendSetupError("greeting 421: \x1b[31mred\x07" + "x" * 1000))
    assert outcome.reason.startswith("greeting 421: ?[31mred?x")
    assert len(outcome.reason) == 300 and outcome.reason.isprintable()


def test_success_carries_the_tls_version() -> None:
    assert probe_succeeded("TLSv1.3") == ProbeOutcome(up=True, tls_version="TLSv1.3")


# -- the probe's I/O, through the session's BackendConnector -------------------------------------


def _accept(reactor: MemoryReactorClock, index: int = -1) -> tuple[Any, StringTransport]:
    """Complete the connection the connector asked the reactor for."""
    host, port, factory, *_ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def _connector(reactor: MemoryReactorClock) -> BackendConnector:
    return BackendConnector(reactor, PLAIN, TIMEOUT)


def _probe(reactor: MemoryReactorClock) -> list[ProbeOutcome]:
    outcomes: list[ProbeOutcome] = []
    probe_backend(_connector(reactor), reactor).addCallback(outcomes.append)
    return outcomes


def test_probe_reads_the_greeting_says_quit_and_closes() -> None:
    reactor = MemoryReactorClock()
    outcomes = _probe(reactor)
    protocol, transport = _accept(reactor)
    assert transport.value() == b"" and outcomes == []  # nothing before the greeting
    protocol.dataReceived(b"220-Welcome\r\n220 ready\r\n")
    assert transport.value() == b"QUIT\r\n" and outcomes == []
    protocol.dataReceived(b"221 Goodbye.\r\n")
    assert outcomes == [ProbeOutcome(up=True)]
    assert transport.disconnecting  # closed by us, gracefully
    assert [call.getTime() for call in reactor.getDelayedCalls()] == [TIMEOUT]  # close deadline


def test_probe_without_an_answer_to_quit_is_up_and_aborts_after_the_timeout() -> None:
    reactor = MemoryReactorClock()
    outcomes = _probe(reactor)
    protocol, transport = _accept(reactor)
    protocol.dataReceived(b"220 ready\r\n")
    reactor.advance(TIMEOUT)
    assert outcomes == [ProbeOutcome(up=True)]
    assert transport.disconnecting or transport.disconnected


def test_probe_of_a_silent_backend_fails_after_the_connect_timeout_and_aborts() -> None:
    reactor = MemoryReactorClock()
    outcomes = _probe(reactor)
    _, transport = _accept(reactor)
    reactor.advance(TIMEOUT - 0.1)
    assert outcomes == []
    reactor.advance(0.1)
    assert outcomes == [
        ProbeOutcome(up=False, reason=f"no greeting within {TIMEOUT:g}s", result="timeout")
    ]
    assert transport.disconnected  # aborted: the backend sees the connection go


def test_probe_of_a_refusing_backend_fails_with_the_greeting() -> None:
    reactor = MemoryReactorClock()
    outcomes = _probe(reactor)
    protocol, transport = _accept(reactor)
    protocol.dataReceived(b"421-Too many\r\n421 users\r\n")
    assert outcomes == [ProbeOutcome(up=False, reason="greeting 421: Too many", result="refused")]
    assert transport.value() == b"" and transport.disconnected


def test_probe_of_a_closed_port_is_unreachable() -> None:
    reactor = MemoryReactorClock()
    outcomes = _probe(reactor)
    connector = reactor.connectors[-1]
    _, _, factory, *_ = reactor.tcpClients[-1]
    factory.clientConnectionFailed(connector, ConnectionRefusedError())
    [outcome] = outcomes
    assert not outcome.up and outcome.reason.startswith("unreachable: cannot connect: ")


# -- BackendHealth: metrics and one log line per change ------------------------------------------


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _health(reactor: MemoryReactorClock, metrics: Metrics, fall: int = 1) -> PoolHealth:
    connectors = {"b1": _connector(reactor)}
    pool = Pool([Backend("b1", PLAIN)], thresholds=Thresholds(rise=1, fall=fall))
    router = BackendRouter(reactor, pool, connectors, RoutingEvents(metrics, connectors))
    return PoolHealth(router, connectors, metrics, interval=5)


def test_health_logs_once_per_change_and_sets_the_gauge() -> None:
    reactor = MemoryReactorClock()
    metrics = Metrics()
    health = _health(reactor, metrics)
    assert health.ready_problem() == "backends not probed yet"
    with capturedLogs() as events:
        health.start(reactor)
        for greeting in (b"220 ok\r\n", b"220 ok\r\n", b"421 busy\r\n", b"421 busy\r\n"):
            protocol, _ = _accept(reactor)
            protocol.dataReceived(greeting)
            if greeting.startswith(b"220"):
                protocol.dataReceived(b"221 bye\r\n")
            up = greeting.startswith(b"220")
            assert (health.ready_problem() is None) is up
            assert _sample(metrics, "ftpsproxy_backend_up", backend="b1") == (1 if up else 0)
            reactor.advance(5)
    health.stop()
    lines = [event["log_format"] for event in events]
    assert lines == ["backend {backend} is up ({why})", "backend {backend} is down ({why})"]
    assert [event["why"] for event in events] == [
        "first result",
        "1 failures in a row: greeting 421: busy",
    ]
    assert health.ready_problem() == (
        "no backend ready: backend b1 (ftp://127.0.0.1:2121) down: greeting 421: busy"
    )
    assert len(reactor.tcpClients) == 5  # one probe at a time, every interval
    assert _sample(metrics, "ftpsproxy_backend_probes_total", backend="b1", result="refused") == 2


def test_health_takes_fall_failures_in_a_row_to_go_down() -> None:
    reactor = MemoryReactorClock()
    health = _health(reactor, Metrics(), fall=3)
    health.start(reactor)
    for round_, greeting in enumerate((b"220 ok\r\n", b"421 busy\r\n", b"421 busy\r\n")):
        protocol, _ = _accept(reactor)
        protocol.dataReceived(greeting)
        if greeting.startswith(b"220"):
            protocol.dataReceived(b"221 bye\r\n")
        assert health.ready_problem() is None, round_  # 1 up, then 2 of 3 failures
        reactor.advance(5)
    protocol, _ = _accept(reactor)
    protocol.dataReceived(b"421 busy\r\n")
    assert health.ready_problem() is not None
    health.stop()


def test_health_counts_tls_failures_under_the_probe_channel() -> None:
    health = _health(MemoryReactorClock(), metrics := Metrics())
    error = BackendTLSError("certificate verification failed: x", kind="verification")
    health._record(probe_failed(error), "b1")
    health._record(probe_succeeded("TLSv1.3"), "b1")
    failures = "ftpsproxy_tls_handshake_failures_total"
    assert _sample(metrics, failures, side="backend", channel="probe", reason="verification") == 1
    done = "ftpsproxy_tls_handshakes_total"
    assert _sample(metrics, done, side="backend", channel="probe", version="TLSv1.3") == 1
    assert _sample(metrics, "ftpsproxy_backend_connects_total", backend="b1", result="tls") == 0


def test_a_reload_keeps_the_gauges_of_the_backends_that_stay() -> None:
    """SIGHUP passes the whole new pool: a backend that stays keeps its session count and
    its up gauge (a down one stays 0); only a backend new to the pool starts at 0 sessions,
    up.  One that was removed and comes back keeps its sessions (its leases still count) and
    is up again (its health starts over, unknown)."""
    reactor = MemoryReactorClock()
    metrics = Metrics()
    connectors = {name: _connector(reactor) for name in ("b1", "b2")}
    backends = [Backend("b1", PLAIN), Backend("b2", PLAIN)]
    pool = Pool(backends, thresholds=Thresholds(rise=1, fall=1))
    router = BackendRouter(reactor, pool, connectors, RoutingEvents(metrics, connectors))
    router.report("b2", CheckResult.failed("refused"))
    router.events.chosen(1, "b1", "round-robin", 0.1, None)
    router.events.chosen(2, "b2", "round-robin", 0.1, None)

    def gauges(name: str) -> tuple[float | None, float | None]:
        return (
            _sample(metrics, "ftpsproxy_backend_sessions", backend=name),
            _sample(metrics, "ftpsproxy_backend_up", backend=name),
        )

    drained = Backend("b1", PLAIN, state=AdminState.DRAIN)
    router.update(
        [drained, *backends[1:], Backend("b3", PLAIN)], {**connectors, "b3": _connector(reactor)}
    )
    assert [gauges(name) for name in ("b1", "b2", "b3")] == [(1, 1), (1, 0), (0, 1)]

    router.update([drained], {"b1": connectors["b1"]})
    router.update(backends, connectors)
    assert gauges("b2") == (1, 1) and pool.health("b2") is HealthState.UNKNOWN


def test_a_backend_that_never_greets_does_not_hold_back_the_others_probes() -> None:
    """Each backend has its own probe loop: a silent one (60 s timeout) does not delay
    the others, which are probed every interval."""
    reactor = MemoryReactorClock()
    slow = BackendConnector(reactor, BackendAddress("ftp", "127.0.0.1", 2100), 60)
    quick = BackendConnector(reactor, PLAIN, TIMEOUT)
    connectors = {"slow": slow, "quick": quick}
    pool = Pool([Backend("slow", slow.address), Backend("quick", PLAIN)])
    metrics = Metrics()
    router = BackendRouter(reactor, pool, connectors, RoutingEvents(metrics, connectors))
    health = PoolHealth(router, connectors, metrics, interval=5)
    health.start(reactor)
    answered: set[int] = set()
    for _ in range(4):  # the slow backend accepts and never says a word
        for index, (_, port, *_) in enumerate(list(reactor.tcpClients)):
            if port == PLAIN.port and index not in answered:
                answered.add(index)
                protocol, _ = _accept(reactor, index)
                protocol.dataReceived(b"220 ok\r\n221 bye\r\n")
        reactor.advance(5)
    ports = [port for _, port, *_ in reactor.tcpClients]
    assert ports.count(2100) == 1  # still waiting for its greeting
    assert ports.count(PLAIN.port) == 5  # every 5 s, as if the slow one were not there
    health.stop()
