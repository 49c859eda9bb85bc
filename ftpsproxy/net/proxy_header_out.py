"""The PROXY protocol header the proxy sends to a backend, encoded sans-IO.

A backend behind the proxy sees the proxy's address on every connection; a backend that
expects a PROXY header (ProFTPD's mod_proxy_protocol, HAProxy's ``accept-proxy``) reads
the client's address from it instead.  This module only builds bytes, after the spec
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt): version 1, a text line
(section 2.1), and version 2, binary with TLVs (section 2.2) that carry the client's TLS
version and cipher (``PP2_TYPE_SSL``), the name it asked for in SNI
(``PP2_TYPE_AUTHORITY``) and the proxy's id of the session (``PP2_TYPE_UNIQUE_ID``).
A connection with no client behind it (a health probe) gets a v2 ``LOCAL`` header or v1
``PROXY UNKNOWN``: the receiver then uses the connection's own addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

#: v2's 12-byte signature (section 2.2): never the start of a v1 line or of a protocol.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY = 0x21  # version 2, command PROXY
V2_LOCAL = 0x20  # version 2, command LOCAL: no client, use the connection's addresses
V2_TCP4 = 0x11  # AF_INET, STREAM
V2_TCP6 = 0x21  # AF_INET6, STREAM
V2_UNSPEC = 0x00

PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04
#: The spec caps PP2_TYPE_UNIQUE_ID at 128 bytes.
MAX_UNIQUE_ID = 128

#: What a probe sends: no client behind it (v2 section 2.2, v1 section 2.1).
V2_LOCAL_HEADER = V2_SIGNATURE + bytes([V2_LOCAL, V2_UNSPEC]) + b"\x00\x00"
V1_UNKNOWN_HEADER = b"PROXY UNKNOWN\r\n"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """The client's TLS on its control connection, as v2's ``PP2_TYPE_SSL`` tells it."""

    version: str  # OpenSSL's name: TLSv1.3
    cipher: str  # OpenSSL's name: TLS_AES_256_GCM_SHA384, ECDHE-RSA-AES128-GCM-SHA256
    server_name: str | None = None  # the SNI name the client asked for
    certificate: bool = False  # the client presented a certificate, and it was verified


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What a backend is told of a session's client: where it came from, where it went.

    *source* is the client (with PROXY protocol in, the header's client); *destination*
    is the proxy's address the client connected to.
    """

    source: str
    source_port: int
    destination: str
    destination_port: int
    tls: ClientTLS | None = None
    unique_id: str = ""  # the session id, as in the proxy's logs


def _addresses(facts: ClientFacts) -> tuple[IPAddress, IPAddress]:
    """Both ends in one family: v4-mapped IPv6 as IPv4, and IPv4 mapped if the other is v6
    (a dual-stack listener's IPv4 client has an IPv6 local address)."""

    def plain(host: str) -> IPAddress:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # no zone in a header
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    source, destination = plain(facts.source), plain(facts.destination)
    if source.version != destination.version:
        source, destination = _as_v6(source), _as_v6(destination)
    for port in (facts.source_port, facts.destination_port):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    return source, destination


def _as_v6(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


def encode_v1(facts: ClientFacts) -> bytes:
    """``PROXY TCP4 src dst sport dport\\r\\n`` (section 2.1; at most 107 bytes)."""
    source, destination = _addresses(facts)
    family = "TCP4" if source.version == 4 else "TCP6"
    return (
        f"PROXY {family} {source.compressed} {destination.compressed} "
        f"{facts.source_port} {facts.destination_port}\r\n"
    ).encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def _tlvs(facts: ClientFacts) -> bytes:
    tlvs = b""
    tls = facts.tls
    if tls is not None and tls.server_name:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, tls.server_name.encode("utf-8"))
    if facts.unique_id:
        unique = facts.unique_id.encode("utf-8")
        if len(unique) > MAX_UNIQUE_ID:
            raise ValueError(f"unique id of {len(unique)} bytes: at most {MAX_UNIQUE_ID}")
        tlvs += _tlv(PP2_TYPE_UNIQUE_ID, unique)
    if tls is not None:
        client = PP2_CLIENT_SSL
        if tls.certificate:
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        # verify: zero only when a certificate was presented and verified (the spec says so).
        verify = 0 if tls.certificate else 1
        value = struct.pack("!BI", client, verify)
        value += _tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii"))
        value += _tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii"))
        tlvs += _tlv(PP2_TYPE_SSL, value)
    return tlvs


def encode_v2(facts: ClientFacts) -> bytes:
    """The binary header (section 2.2): signature, PROXY, TCP over IPv4 or IPv6, the
    addresses and ports, then the TLVs."""
    source, destination = _addresses(facts)
    family = V2_TCP4 if source.version == 4 else V2_TCP6
    body = source.packed + destination.packed
    body += struct.pack("!HH", facts.source_port, facts.destination_port) + _tlvs(facts)
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(body)) + body
