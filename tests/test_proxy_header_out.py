"""PROXY protocol out: the header's bytes against the spec, Twisted's parsers reading them
back, the connector sending them first (before implicit TLS), probes' LOCAL headers, and
the per-backend option.

The expected bytes are written out from the spec
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt), not computed by the code
under test: a wrong family, length, byte order or TLV type fails them.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from ftpsproxy.control.backend import BackendConnector, BackendControl
from ftpsproxy.control.probe import probe_backend
from ftpsproxy.control.probe_outcome import ProbeOutcome
from ftpsproxy.net.proxy_header import HeaderReader, HealthCheck, Proxied
from ftpsproxy.net.proxy_header_out import (
    V1_UNKNOWN_HEADER,
    V2_LOCAL_HEADER,
    ClientFacts,
    ClientTLS,
    encode_v1,
    encode_v2,
)
from ftpsproxy.net.twisted_internals import V1Parser, V2Parser
from ftpsproxy.settings.config import build_config
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import BackendAddress, ProxyProtocolOut
from ftpsproxy.tls.backend import BackendTLSSettings

SIGNATURE = bytes.fromhex("0D0A0D0A000D0A515549540A")  # the spec's 12 bytes, as it prints them
CLIENT = ClientFacts("192.0.2.10", 50000, "198.51.100.1", 21)
TLS = ClientTLS("TLSv1.3", "TLS_AES_128_GCM_SHA256", "ftp.example.org")


def tlvs(header: bytes) -> list[tuple[int, bytes]]:
    """The TLVs after a v2 header's addresses, decoded by hand (Twisted skips them)."""
    family = header[13]
    start = 16 + {0x11: 12, 0x21: 36, 0x00: 0}[family]
    end = 16 + struct.unpack("!H", header[14:16])[0]
    assert len(header) == end, "the length field covers the addresses and TLVs exactly"
    found, at = [], start
    while at < end:
        kind, length = header[at], struct.unpack("!H", header[at + 1 : at + 3])[0]
        found.append((kind, header[at + 3 : at + 3 + length]))
        at += 3 + length
    assert at == end, "the TLVs fill the header exactly"
    return found


# -- v1 (spec section 2.1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "line"),
    [
        (CLIENT, b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 21\r\n"),
        (
            ClientFacts("2001:db8:0:0::10", 1, "2001:db8::1", 65535),
            b"PROXY TCP6 2001:db8::10 2001:db8::1 1 65535\r\n",
        ),
        # A dual-stack listener reports IPv4 clients as v4-mapped: they are IPv4.
        (
            ClientFacts("::ffff:192.0.2.10", 50000, "::ffff:198.51.100.1", 21),
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 21\r\n",
        ),
        # One end of each family: both as IPv6 (the spec's "TCP6" carries both).
        (
            ClientFacts("192.0.2.10", 50000, "2001:db8::1", 21),
            b"PROXY TCP6 ::ffff:c000:20a 2001:db8::1 50000 21\r\n",
        ),
    ],
)
def test_v1_is_the_spec_line(facts: ClientFacts, line: bytes) -> None:
    assert encode_v1(facts) == line


def test_v1_with_tls_and_an_id_is_still_the_address_line_only() -> None:
    facts = ClientFacts("192.0.2.10", 50000, "198.51.100.1", 21, TLS, "7")
    assert encode_v1(facts) == b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 21\r\n"


def test_the_longest_v1_line_fits_the_specs_107_bytes() -> None:
    widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    assert len(encode_v1(ClientFacts(widest, 65535, widest, 65535))) <= 107


def test_v1_unknown_is_what_a_probe_sends_and_our_reader_takes_as_a_health_check() -> None:
    assert V1_UNKNOWN_HEADER == b"PROXY UNKNOWN\r\n"
    # Twisted's V1Parser wants a space after UNKNOWN, so only our reader is asked here.
    assert isinstance(HeaderReader().feed(V1_UNKNOWN_HEADER), HealthCheck)


# -- v2 (spec section 2.2) ---------------------------------------------------------------------


def test_v2_ipv4_without_tlvs_byte_by_byte() -> None:
    assert encode_v2(CLIENT) == SIGNATURE + bytes.fromhex(
        "21"  # version 2, PROXY
        "11"  # AF_INET, STREAM
        "000c"  # 12 bytes follow
        "c000020a"  # 192.0.2.10
        "c6336401"  # 198.51.100.1
        "c350"  # 50000
        "0015"  # 21
    )


def test_v2_ipv6_byte_by_byte() -> None:
    facts = ClientFacts("2001:db8::10", 50000, "2001:db8::1", 21)
    assert encode_v2(facts) == SIGNATURE + bytes.fromhex(
        "21"
        "21"  # AF_INET6, STREAM
        "0024"  # 36 bytes
        "20010db8000000000000000000000010"
        "20010db8000000000000000000000001"
        "c350"
        "0015"
    )


def test_v2_tlvs_byte_by_byte_authority_unique_id_ssl() -> None:
    facts = ClientFacts("192.0.2.10", 50000, "198.51.100.1", 21, TLS, "7")
    ssl = (
        "01"  # client: PP2_CLIENT_SSL
        "00000001"  # verify: non-zero, no client certificate verified
        "21" "0007" + b"TLSv1.3".hex()  # PP2_SUBTYPE_SSL_VERSION
        + "23" "0016" + b"TLS_AES_128_GCM_SHA256".hex()  # PP2_SUBTYPE_SSL_CIPHER
    )  # fmt: skip
    assert len(bytes.fromhex(ssl)) == 0x28
    expected = SIGNATURE + bytes.fromhex(
        "21" "11" "004d"  # 12 address bytes + 18 + 4 + 43 of TLVs = 77
        "c000020a" "c6336401" "c350" "0015"
        "02" "000f" + b"ftp.example.org".hex()  # PP2_TYPE_AUTHORITY
        + "05" "0001" + b"7".hex()  # PP2_TYPE_UNIQUE_ID
        + "20" "0028" + ssl  # PP2_TYPE_SSL
    )  # fmt: skip
    assert encode_v2(facts) == expected


def test_v2_ssl_tlv_says_a_verified_client_certificate() -> None:
    tls = ClientTLS("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", None, certificate=True)
    header = encode_v2(ClientFacts("192.0.2.10", 1, "198.51.100.1", 2, tls, "12"))
    found = tlvs(header)
    assert [kind for kind, _ in found] == [0x05, 0x20]  # no SNI: no authority
    ssl = found[1][1]
    assert ssl[0] == 0x01 | 0x02 | 0x04 and ssl[1:5] == b"\x00\x00\x00\x00"


def test_a_plain_client_gets_no_ssl_tlv_and_an_id_over_128_bytes_is_refused() -> None:
    assert tlvs(encode_v2(ClientFacts("192.0.2.10", 1, "198.51.100.1", 2, None, "3"))) == [
        (0x05, b"3")
    ]
    with pytest.raises(ValueError, match="at most 128"):
        encode_v2(ClientFacts("192.0.2.10", 1, "198.51.100.1", 2, None, "x" * 129))


def test_v2_local_is_the_specs_no_client_header() -> None:
    assert V2_LOCAL_HEADER == SIGNATURE + bytes.fromhex("20" "00" "0000")  # fmt: skip
    info, rest = V2Parser().feed(V2_LOCAL_HEADER + b"220 x")
    assert info is not None and info.source is None and rest == b"220 x"
    assert isinstance(HeaderReader().feed(V2_LOCAL_HEADER), HealthCheck)


# -- Twisted's parsers read them back -------------------------------------------------------


ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
ports = st.integers(0, 65535)
same_family = st.one_of(st.tuples(ipv4s, ipv4s), st.tuples(ipv6s, ipv6s))


@given(same_family, ports, ports, st.booleans(), st.text(max_size=40))
def test_twisteds_parsers_read_back_address_and_ports(
    hosts: tuple[str, str], sport: int, dport: int, with_tls: bool, unique: str
) -> None:
    facts = ClientFacts(hosts[0], sport, hosts[1], dport, TLS if with_tls else None, unique)
    for parser, header in ((V1Parser(), encode_v1(facts)), (V2Parser(), encode_v2(facts))):
        info, rest = parser.feed(header + b"220 ready\r\n")
        assert info is not None and rest == b"220 ready\r\n"
        kind = IPv4Address if ":" not in hosts[0] else IPv6Address
        for address, host, port in (
            (info.source, hosts[0], sport),
            (info.destination, hosts[1], dport),
        ):
            assert isinstance(address, kind)
            assert ipaddress.ip_address(address.host) == ipaddress.ip_address(host)
            assert address.port == port
    read = HeaderReader().feed(encode_v2(facts))
    assert isinstance(read, Proxied) and read.source_port == sport


# -- the connector sends it first --------------------------------------------------------------


def _accept(reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    host, port, factory, *_ = reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def _connector(
    reactor: MemoryReactorClock, url: str, version: ProxyProtocolOut
) -> BackendConnector:
    scheme, rest = url.split("://")
    host, port = rest.split(":")
    tls = None if scheme == "ftp" else BackendTLSSettings(server_name="localhost", insecure=True)
    return BackendConnector(
        reactor, BackendAddress(scheme, host, int(port)), 3.0, tls, proxy_protocol=version
    )


@pytest.mark.parametrize(
    ("version", "encode"), [(ProxyProtocolOut.V1, encode_v1), (ProxyProtocolOut.V2, encode_v2)]
)
@pytest.mark.parametrize("url", ["ftp://127.0.0.1:21", "ftpes://127.0.0.1:21"])
def test_a_session_header_is_the_first_bytes_before_the_greeting(
    version: ProxyProtocolOut, encode: Any, url: str
) -> None:
    reactor = MemoryReactorClock()
    facts = ClientFacts("127.0.0.9", 40000, "127.0.0.1", 2121, TLS, "5")
    ready: list[Any] = []
    _connector(reactor, url, version).control(facts).addBoth(ready.append)
    protocol, transport = _accept(reactor)
    assert transport.value() == encode(facts)  # before anything was read
    transport.clear()
    protocol.dataReceived(b"220 ready\r\n")
    if url.startswith("ftpes"):
        assert transport.value() == b"AUTH TLS\r\n"  # then FTPS as without a header
    else:
        assert [type(each) for each in ready] == [BackendControl]


def test_an_implicit_tls_backend_gets_the_header_in_clear_before_the_client_hello() -> None:
    reactor = MemoryReactorClock()
    facts = ClientFacts("127.0.0.9", 40000, "127.0.0.1", 2121, TLS, "5")
    _connector(reactor, "ftps://127.0.0.1:990", ProxyProtocolOut.V2).control(facts)
    _, transport = _accept(reactor)
    header = encode_v2(facts)
    sent = transport.value()
    assert sent.startswith(header)
    assert sent[len(header)] == 0x16  # a TLS handshake record: the ClientHello follows
    assert sent[len(header) + 5] == 0x01


def test_no_header_when_off_and_a_probe_gets_local_or_unknown() -> None:
    facts = ClientFacts("127.0.0.9", 40000, "127.0.0.1", 2121)
    for version, expected in (
        (ProxyProtocolOut.OFF, b""),
        (ProxyProtocolOut.V1, V1_UNKNOWN_HEADER),
        (ProxyProtocolOut.V2, V2_LOCAL_HEADER),
    ):
        reactor = MemoryReactorClock()
        connector = _connector(reactor, "ftp://127.0.0.1:21", version)
        outcomes: list[ProbeOutcome] = []
        probe_backend(connector, reactor).addCallback(outcomes.append)
        protocol, transport = _accept(reactor)
        assert transport.value() == expected
        protocol.dataReceived(b"220 ready\r\n")
        assert transport.value() == expected + b"QUIT\r\n"
        protocol.dataReceived(b"221 bye\r\n")
        assert outcomes and outcomes[0].up
        if version is ProxyProtocolOut.OFF:
            assert connector.proxy_header(facts) == b""  # off is off for sessions too


def test_an_implicit_tls_probe_sends_local_before_the_client_hello() -> None:
    reactor = MemoryReactorClock()
    probe_backend(_connector(reactor, "ftps://127.0.0.1:990", ProxyProtocolOut.V2), reactor)
    _, transport = _accept(reactor)
    assert transport.value().startswith(V2_LOCAL_HEADER + b"\x16")


# -- the option ---------------------------------------------------------------------------------

BASE = {"listen": ["tcp:2121"]}


def test_the_single_backend_takes_backend_proxy_protocol() -> None:
    config = build_config(BASE, {"backend": "ftp://127.0.0.1:21", "backend-proxy-protocol": "v1"})
    assert config.pool[0].proxy_protocol is ProxyProtocolOut.V1
    assert build_config(BASE, {"backend": "ftp://127.0.0.1:21"}).pool[0].proxy_protocol is (
        ProxyProtocolOut.OFF
    )


def test_tables_inherit_it_plain_ones_too_and_may_turn_it_off() -> None:
    tables = [
        {"name": "a", "url": "ftp://10.0.0.5:21"},
        {"name": "b", "url": "ftps://10.0.0.6:990"},
        {"name": "c", "url": "ftp://10.0.0.7:21", "proxy-protocol": "off"},
        {"name": "d", "url": "ftp://10.0.0.8:21", "proxy-protocol": "v1"},
    ]
    config = build_config({**BASE, "backend-proxy-protocol": "v2", "backends": tables}, {})
    assert [b.proxy_protocol.value for b in config.pool] == ["v2", "v2", "off", "v1"]
    alone = build_config({**BASE, "backends": tables[:1]}, {})
    assert alone.pool[0].proxy_protocol is ProxyProtocolOut.OFF


def test_a_wrong_version_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"backends\[0\]\.proxy-protocol"):
        build_config(
            {**BASE, "backends": [{"name": "a", "url": "ftp://h:21", "proxy-protocol": "v3"}]},
            {},
        )
    with pytest.raises(ConfigError, match="backend-proxy-protocol"):
        build_config(BASE, {"backend": "ftp://h:21", "backend-proxy-protocol": "2"})
