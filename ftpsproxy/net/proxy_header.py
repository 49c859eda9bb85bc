"""The PROXY protocol header (v1 or v2) at the front of a connection, read sans-IO.

An L4 balancer (HAProxy ``send-proxy``/``send-proxy-v2``, a cloud NLB) that forwards a
connection says first who the client is: the header names the client's address and the
address the client connected to.  Whoever can send the header can claim any client
address, so a header is read only from trusted networks (:class:`TrustedNetworks`).

The parsing itself is Twisted's (``twisted.protocols.haproxy``, through
:mod:`ftpsproxy.net.twisted_internals`); :class:`HeaderReader` picks the version from the
first bytes, however the header is split across reads, and turns what Twisted returns
into a value the proxy can use: a client's IP address or a balancer's health check.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ftpsproxy.net.twisted_internals import InvalidProxyHeader, V1Parser, V2Parser

_V1_START = V1Parser.PROXYSTR + b" "
_V1_UNKNOWN = _V1_START + b"UNKNOWN\r\n"
_V2_START = V2Parser.PREFIX
_V2_FIXED = 16  # signature, version and command, family, length (v2 spec, section 2.2)


class InvalidHeader(Exception):
    """Not a PROXY header, a malformed one, or one without a usable client address."""


@dataclass(frozen=True, slots=True)
class Proxied:
    """A client behind the balancer: its address, and the address it connected to."""

    source: str  # normalised: ``::1``, not ``0:0:0:0:0:0:0:1``
    source_port: int
    destination: str
    destination_port: int
    rest: bytes  # what followed the header in the same reads: the client's first bytes


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """No client behind the connection: a v2 ``LOCAL`` header, or v1 ``UNKNOWN`` (what
    HAProxy's health checks send), or a v2 header of no address family."""


class HeaderReader:
    """Feed the connection's first bytes; get None until a whole header has arrived."""

    def __init__(self) -> None:
        self._start = b""  # bytes kept until they show which version this is
        self._parser: V1Parser | V2Parser | None = None
        self._v1_line = b""  # a v1 header so far (at most 107 bytes plus one read)

    def feed(self, data: bytes) -> Proxied | HealthCheck | None:
        """The header, once complete; raises :class:`InvalidHeader` as soon as it cannot be one."""
        parser = self._parser
        if parser is None:
            self._start += data
            parser = self._choose_parser(self._start)
            if parser is None:
                return None
            self._parser = parser
            data, self._start = self._start, b""
        if isinstance(parser, V1Parser):
            self._v1_line += data
        try:
            info, rest = parser.feed(data)
        except (InvalidProxyHeader, ValueError) as error:  # v1: int() of a bad port
            if self._v1_line.startswith(_V1_UNKNOWN):
                # Twisted wants a space after UNKNOWN; HAProxy's checks send none.
                return HealthCheck()
            raise InvalidHeader(f"malformed PROXY header ({type(error).__name__})") from None
        if info is None or rest is None:
            return None
        return _interpret(info.source, info.destination, rest)

    @staticmethod
    def _choose_parser(start: bytes) -> V1Parser | V2Parser | None:
        if start.startswith(_V2_START):
            return V2Parser() if len(start) >= _V2_FIXED else None
        if start.startswith(_V1_START):
            return V1Parser()
        if _V2_START.startswith(start) or _V1_START.startswith(start):
            return None  # too short to tell yet
        raise InvalidHeader("no PROXY header")


def _interpret(source: object, destination: object, rest: bytes) -> Proxied | HealthCheck:
    if source is None:
        return HealthCheck()
    client, client_port = _ip_endpoint(source)
    target, target_port = _ip_endpoint(destination)
    return Proxied(client, client_port, target, target_port, rest)


def _ip_endpoint(address: object) -> tuple[str, int]:
    """An IP address and TCP port from Twisted's address, or InvalidHeader (UNIX, UDP, junk:
    v1 headers are split on spaces, not checked)."""
    if getattr(address, "type", None) != "TCP":
        raise InvalidHeader("PROXY header without a TCP client address")
    try:
        host = str(ipaddress.ip_address(getattr(address, "host", "")))
    except ValueError:
        raise InvalidHeader("PROXY header with an invalid address") from None
    port = getattr(address, "port", -1)
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidHeader("PROXY header with an invalid port")
    return host, port


class TrustedNetworks:
    """The networks whose connections may carry a PROXY header (``--proxy-protocol-from``)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self._networks = tuple(ipaddress.ip_network(each) for each in networks)

    def trusts(self, host: str) -> bool:
        """Whether *host* lies in one of the networks (``::ffff:10.0.0.1`` as ``10.0.0.1``)."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
