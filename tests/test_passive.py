"""Passive listeners and the per-address share of the passive range, on a memory reactor."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs

from ftpsproxy.data.passive import PassiveListener
from ftpsproxy.data.ports import PortAllocator
from ftpsproxy.net.client_address import limit_key
from ftpsproxy.observe.metrics import Metrics


def _listener(
    reactor: MemoryReactor, allocator: PortAllocator, metrics: Metrics, client: str
) -> PassiveListener:
    owner = limit_key(client, 64)  # as the session counts it
    return PassiveListener(reactor, allocator, metrics, client, Protocol, None, owner=owner)


def _refused(metrics: Metrics, reason: str) -> float:
    value: float = metrics.data_connections_refused.labels(reason=reason)._value.get()
    return value


def test_one_address_gets_its_share_and_another_address_still_gets_a_port() -> None:
    reactor, metrics = MemoryReactor(), Metrics()
    allocator = PortAllocator(41000, 41009, share=2)
    held = [_listener(reactor, allocator, metrics, "127.0.0.1") for _ in range(2)]
    assert all(listener.start("127.0.0.1") for listener in held)
    with capturedLogs() as events:
        third = _listener(reactor, allocator, metrics, "127.0.0.1")
        assert not third.start("127.0.0.1")
    assert third.port is None
    assert _refused(metrics, "per_ip_share") == 1
    assert metrics.passive_ports_exhausted._value.get() == 0  # the range is not full
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert len(warnings) == 1 and warnings[0]["client"] == "127.0.0.1"
    assert (warnings[0]["held"], warnings[0]["share"]) == (2, 2)
    other = _listener(reactor, allocator, metrics, "127.0.0.2")
    assert other.start("127.0.0.1") and other.port == 41002
    assert metrics.passive_ports_in_use._value.get() == 3
    held[0].close()  # a port comes back: the address is below its share again
    assert third.start("127.0.0.1")
    assert len(reactor.tcpServers) == 4


def test_mapped_ipv4_counts_as_the_same_address() -> None:
    reactor, metrics = MemoryReactor(), Metrics()
    allocator = PortAllocator(41000, 41009, share=1)
    assert _listener(reactor, allocator, metrics, "::ffff:192.0.2.1").start("::")
    assert not _listener(reactor, allocator, metrics, "192.0.2.1").start("0.0.0.0")
    assert _refused(metrics, "per_ip_share") == 1


def test_a_full_range_is_still_counted_as_exhaustion() -> None:
    reactor, metrics = MemoryReactor(), Metrics()
    allocator = PortAllocator(41000, 41001, share=2)
    for client in ("192.0.2.1", "192.0.2.2"):
        assert _listener(reactor, allocator, metrics, client).start("0.0.0.0")
    assert not _listener(reactor, allocator, metrics, "192.0.2.3").start("0.0.0.0")
    assert metrics.passive_ports_exhausted._value.get() == 1
    assert _refused(metrics, "per_ip_share") == 0


def test_closing_every_listener_leaves_no_owner_behind() -> None:
    reactor, metrics = MemoryReactor(), Metrics()
    allocator = PortAllocator(41000, 41009)
    listeners = [_listener(reactor, allocator, metrics, f"192.0.2.{n}") for n in range(1, 6)]
    for listener in listeners:
        assert listener.start("0.0.0.0")
        listener.close()
        listener.close()  # twice is harmless
    assert allocator.in_use == 0 and allocator.owners == 0
    assert metrics.passive_ports_in_use._value.get() == 0
