"""PROXY protocol in, without sockets: reading the header, trusting its sender, the
wrapper that holds the real protocol back until the header is read, the settings."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from ftpsproxy.control.proxy_rules import announced_host
from ftpsproxy.net.proxy_header import (
    HeaderReader,
    HealthCheck,
    InvalidHeader,
    Proxied,
    TrustedNetworks,
)
from ftpsproxy.net.proxy_protocol import MAX_HEADER_BYTES, ProxyHeaderFactory, proxied_destination
from ftpsproxy.observe.proxy_headers import LogThrottle
from ftpsproxy.settings.config import build_config
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.listeners import Listener
from tests.support.balancer import v1_header, v2_header, v2_local

BASE = {"backend": "ftp://127.0.0.1:2100", "listen": ["tcp:2121"]}


def read(data: bytes, chunk: int | None = None) -> Proxied | HealthCheck | None:
    reader = HeaderReader()
    step = chunk or len(data) or 1
    result = None
    for start in range(0, len(data), step):
        result = reader.feed(data[start : start + step])
        if result is not None:
            assert start + step >= len(data) or isinstance(result, Proxied)
            break
    return result


# -- the header ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7])
@pytest.mark.parametrize("header", [v1_header, v2_header])
def test_v1_and_v2_give_the_client_and_where_it_connected_however_split(
    header: object, chunk: int | None
) -> None:
    data = header("203.0.113.9", "198.51.100.20", 51000, 21) + b"USER demo\r\n"  # type: ignore[operator]
    reader = HeaderReader()
    step = chunk or len(data)
    for at in range(0, len(data), step):
        proxied = reader.feed(data[at : at + step])
        if proxied is not None:
            break
    assert isinstance(proxied, Proxied)
    assert (proxied.source, proxied.source_port) == ("203.0.113.9", 51000)
    assert (proxied.destination, proxied.destination_port) == ("198.51.100.20", 21)
    assert proxied.rest + data[at + step :] == b"USER demo\r\n"  # the client's own bytes


def test_v2_ipv6_addresses_are_written_short() -> None:
    result = read(v2_header("2001:db8::7", "2001:db8::1"))
    assert isinstance(result, Proxied)
    assert (result.source, result.destination) == ("2001:db8::7", "2001:db8::1")


def test_local_and_unknown_are_health_checks() -> None:
    assert isinstance(read(v2_local()), HealthCheck)
    assert isinstance(read(b"PROXY UNKNOWN\r\n"), HealthCheck)


@pytest.mark.parametrize(
    "data",
    [
        b"USER demo\r\n",  # no header at all
        b"SSH-2.0-OpenSSH\r\n",
        b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 127.0.0.7 127.0.0.1 port 21\r\n",
        b"PROXY TCP4 127.0.0.7 127.0.0.1 70000 21\r\n",
        b"PROXY TCP9 127.0.0.7 127.0.0.1 1 2\r\n",
        b"PROXY " + b"1" * 200,  # no end within v1's 107 bytes
        v2_header("127.0.0.7")[:12] + b"\x99" + v2_header("127.0.0.7")[13:],  # version 9
    ],
)
def test_anything_else_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidHeader):
        read(data)


def test_a_header_not_yet_complete_is_none() -> None:
    assert read(b"PRO") is None
    assert read(b"\r\n\r\n\x00") is None
    assert read(v2_header("127.0.0.7")[:20]) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_hostile_bytes_give_a_header_none_or_invalid_header(data: bytes) -> None:
    try:
        read(data, 5)
    except InvalidHeader:
        pass


# -- whom a header is taken from -----------------------------------------------------------


def test_trusted_networks_take_mapped_ipv4_and_nothing_else() -> None:
    trusted = TrustedNetworks(("10.0.0.0/24", "2001:db8::/64"))
    assert trusted.trusts("10.0.0.200")
    assert trusted.trusts("::ffff:10.0.0.9")
    assert trusted.trusts("2001:db8::5")
    assert not trusted.trusts("10.0.1.1")
    assert not trusted.trusts("2001:db8:1::5")
    assert not trusted.trusts("")
    assert not TrustedNetworks(()).trusts("10.0.0.1")


def test_the_options_need_each_other() -> None:
    config = build_config(
        BASE, {"proxy-protocol": True, "proxy-protocol-from": ["10.0.0.5/24", "192.0.2.7"]}
    )
    assert config.proxy_protocol_from == ("10.0.0.0/24", "192.0.2.7/32")
    with pytest.raises(ConfigError, match=r"^proxy-protocol: needs --proxy-protocol-from"):
        build_config(BASE, {"proxy-protocol": True})
    with pytest.raises(ConfigError, match=r"^proxy-protocol-data: needs --proxy-protocol-from"):
        build_config(BASE, {"proxy-protocol-data": True})
    with pytest.raises(ConfigError, match=r"^proxy-protocol-from: only with"):
        build_config(BASE, {"proxy-protocol-from": ["10.0.0.0/8"]})
    with pytest.raises(ConfigError, match=r"^public-address-from-proxy-header: needs"):
        build_config(BASE, {"public-address-from-proxy-header": True})
    with pytest.raises(ConfigError, match=r"^proxy-protocol-from: .*'10.0.0.300/8'"):
        build_config(BASE, {"proxy-protocol": True, "proxy-protocol-from": ["10.0.0.300/8"]})


def test_a_haproxy_prefix_makes_one_listener_expect_the_header() -> None:
    assert Listener.of("haproxy:tcp:21") == Listener("haproxy:tcp:21", "tcp:21", True)
    assert Listener.of("tcp:21") == Listener("tcp:21", "tcp:21", False)
    assert Listener.of("tcp:21", all_proxied=True).proxied
    both = {"listen": ["tcp:2121", "haproxy:tcp:2122"], "backend": BASE["backend"]}
    with pytest.raises(ConfigError, match=r"^listen haproxy:tcp:2122: needs --proxy-protocol-from"):
        build_config(both, {})
    config = build_config(
        both,
        {
            "proxy-protocol-from": ["10.0.0.0/24"],
            "proxy-protocol-data": True,
            "public-address-from-proxy-header": True,
        },
    )
    assert not config.proxy_protocol and config.proxy_protocol_data
    # The data header follows the control one: on its own it would never be asked for.
    with pytest.raises(ConfigError, match=r"^proxy-protocol-data: needs --proxy-protocol or"):
        build_config(BASE, {"proxy-protocol-data": True, "proxy-protocol-from": ["10.0.0.0/8"]})
    implicit_only = {**BASE, "listen-implicit": ["haproxy:tcp:990"]}
    with pytest.raises(ConfigError, match=r"^listen-implicit haproxy:tcp:990: needs"):
        build_config(implicit_only, {"certificate": "c.pem", "private-key": "k.pem"})


def test_227_names_the_header_destination_only_when_asked_and_ipv4() -> None:
    plain = build_config(BASE, {"public-address": "192.0.2.1"})
    asked = build_config(
        BASE,
        {
            "proxy-protocol": True,
            "proxy-protocol-from": ["10.0.0.0/24"],
            "public-address-from-proxy-header": True,
            "public-address": "192.0.2.1",
        },
    )
    assert announced_host(plain, "10.0.0.9", "198.51.100.20") == "192.0.2.1"
    assert announced_host(asked, "10.0.0.9", "198.51.100.20") == "198.51.100.20"
    assert announced_host(asked, "10.0.0.9", "2001:db8::1") == "192.0.2.1"
    assert announced_host(asked, "10.0.0.9", None) == "192.0.2.1"
    assert announced_host(replace(asked, public_address=None), "10.0.0.9", None) == "10.0.0.9"


def test_log_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(10)
    assert throttle.allow("untrusted", 0) == 0
    assert throttle.allow("untrusted", 1) is None
    assert throttle.allow("timeout", 2) == 0  # another reason has its own line
    assert throttle.allow("untrusted", 9.9) is None
    assert throttle.allow("untrusted", 10) == 2
    assert throttle.allow("untrusted", 25) == 0


# -- the wrapper, in memory -----------------------------------------------------------------


class Rules:
    timeout = 3.0

    def __init__(self) -> None:
        self.refusals: list[tuple[str, str]] = []
        self.health_checks: list[str] = []

    def trusts(self, host: str) -> bool:
        return host == "10.0.0.2"

    def refused(self, reason: str, peer: str) -> None:
        self.refusals.append((reason, peer))

    def health_check(self, peer: str) -> None:
        self.health_checks.append(peer)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.peer: str | None = None
        self.received = b""

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer().host  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Harness:
    def __init__(self, balancer: str = "10.0.0.2") -> None:
        self.clock = MemoryReactorClock()
        self.rules = Rules()
        self.inner = Recorder()
        self.built_for: list[str] = []

        def build(addr: object) -> Recorder:
            self.built_for.append(addr.host)  # type: ignore[attr-defined]
            return self.inner

        wrapped = Factory.forProtocol(Recorder)
        wrapped.buildProtocol = build  # type: ignore[method-assign, assignment]
        self.factory = ProxyHeaderFactory(wrapped, self.rules, self.clock)
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", balancer, 40000))
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 21),
            peerAddress=IPv4Address("TCP", balancer, 40000),
        )
        if self.protocol is not None:
            self.protocol.makeConnection(self.transport)


def test_the_real_protocol_starts_after_the_header_with_the_client_address() -> None:
    harness = Harness()
    assert harness.inner.peer is None and harness.built_for == []  # nothing before the header
    harness.protocol.dataReceived(v1_header("203.0.113.9", "198.51.100.20")[:10])  # type: ignore[union-attr]
    assert harness.inner.peer is None
    harness.protocol.dataReceived(v1_header("203.0.113.9", "198.51.100.20")[10:] + b"NOOP\r\n")  # type: ignore[union-attr]
    assert harness.built_for == ["203.0.113.9"] and harness.inner.peer == "203.0.113.9"
    assert harness.inner.received == b"NOOP\r\n"
    assert proxied_destination(harness.inner.transport) == "198.51.100.20"
    assert harness.inner.transport.getHost().host == "10.0.0.1"  # type: ignore[union-attr]
    harness.clock.advance(10)  # the deadline was cancelled
    assert not harness.transport.disconnecting and harness.rules.refusals == []


def test_an_untrusted_sender_gets_no_protocol() -> None:
    harness = Harness(balancer="10.0.0.3")
    assert harness.protocol is None
    assert harness.rules.refusals == [("untrusted", "10.0.0.3")]


def test_no_header_in_time_is_refused_and_nothing_started() -> None:
    harness = Harness()
    harness.protocol.dataReceived(b"PROXY TCP4 ")  # type: ignore[union-attr]
    harness.clock.advance(3)
    assert harness.rules.refusals == [("timeout", "10.0.0.2")]
    assert harness.transport.disconnecting and harness.built_for == []


def test_a_health_check_closes_without_a_protocol() -> None:
    harness = Harness()
    harness.protocol.dataReceived(v2_local())  # type: ignore[union-attr]
    assert harness.rules.health_checks == ["10.0.0.2"] and harness.rules.refusals == []
    assert harness.transport.disconnecting and harness.built_for == []


def test_too_many_bytes_without_a_complete_header_are_refused() -> None:
    harness = Harness()
    start = v2_header("203.0.113.9")[:14] + b"\xff\xff"  # announces 65535 bytes of addresses
    harness.protocol.dataReceived(start + b"\0" * MAX_HEADER_BYTES)  # type: ignore[union-attr]
    assert harness.rules.refusals == [("invalid", "10.0.0.2")]
    assert harness.built_for == []
