"""Encoding and decoding of data-connection addresses: PASV/EPSV replies, PORT/EPRT arguments.

RFC 959 §4.1.2 (PORT, 227), RFC 2428 (EPRT, EPSV, 229).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import FTPSyntaxError

_PASV_NUMBERS = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV_REPLY = re.compile(rb"\((.)\1\1(\d{1,5})\1\)")


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int


def _check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise FTPSyntaxError(f"port out of range: {port}")
    return port


def format_pasv_reply(host: str, port: int) -> bytes:
    """The text of a 227 reply for an IPv4 *host*."""
    address = ipaddress.IPv4Address(host)
    _check_port(port)
    numbers = [*address.packed, port >> 8, port & 0xFF]
    return b"Entering Passive Mode (" + ",".join(map(str, numbers)).encode() + b")."


def parse_pasv_reply(text: bytes) -> HostPort:
    """Find ``h1,h2,h3,h4,p1,p2`` in a 227 reply (servers differ on the parentheses)."""
    match = _PASV_NUMBERS.search(text)
    if match is None:
        raise FTPSyntaxError("no address in 227 reply")
    numbers = [int(group) for group in match.groups()]
    if any(number > 255 for number in numbers):
        raise FTPSyntaxError("227 reply number out of range")
    host = ".".join(map(str, numbers[:4]))
    return HostPort(host, _check_port(numbers[4] * 256 + numbers[5]))


def format_epsv_reply(port: int) -> bytes:
    """The text of a 229 reply."""
    _check_port(port)
    return f"Entering Extended Passive Mode (|||{port}|)".encode()


def parse_epsv_reply(text: bytes) -> int:
    """The port in a 229 reply: ``(<d><d><d>port<d>)`` with any delimiter (RFC 2428 §3)."""
    match = _EPSV_REPLY.search(text)
    if match is None:
        raise FTPSyntaxError("no port in 229 reply")
    delimiter = match.group(1)
    if not 33 <= delimiter[0] <= 126 or delimiter.isdigit():
        raise FTPSyntaxError("bad delimiter in 229 reply")
    return _check_port(int(match.group(2)))


def parse_port_argument(argument: bytes) -> HostPort:
    """``PORT h1,h2,h3,h4,p1,p2``."""
    match = _PASV_NUMBERS.fullmatch(argument.strip())
    if match is None:
        raise FTPSyntaxError("PORT argument must be six numbers")
    numbers = [int(group) for group in match.groups()]
    if any(number > 255 for number in numbers):
        raise FTPSyntaxError("PORT number out of range")
    return HostPort(".".join(map(str, numbers[:4])), _check_port(numbers[4] * 256 + numbers[5]))


def format_port_argument(host: str, port: int) -> bytes:
    address = ipaddress.IPv4Address(host)
    _check_port(port)
    return ",".join(map(str, [*address.packed, port >> 8, port & 0xFF])).encode()


def parse_eprt_argument(argument: bytes) -> HostPort:
    """``EPRT |1|132.235.1.2|6275|`` or ``|2|::1|6275|`` (RFC 2428 §2)."""
    text = argument.strip()
    if len(text) < 7:
        raise FTPSyntaxError("EPRT argument too short")
    delimiter = text[:1]
    if not 33 <= delimiter[0] <= 126 or delimiter.isdigit():
        raise FTPSyntaxError("bad EPRT delimiter")
    parts = text.split(delimiter)
    if len(parts) != 5 or parts[0] or parts[4]:
        raise FTPSyntaxError("EPRT argument must have three fields")
    family, host_bytes, port_bytes = parts[1], parts[2], parts[3]
    try:
        host = host_bytes.decode("ascii")
        port = int(port_bytes.decode("ascii"))
        if family == b"1":
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(host)
        elif family == b"2":
            address = ipaddress.IPv6Address(host)
        else:
            raise UnsupportedFamily("EPRT network protocol not supported")
    except UnicodeDecodeError as error:
        raise FTPSyntaxError("EPRT field is not ASCII") from error
    except ipaddress.AddressValueError as error:
        raise FTPSyntaxError("EPRT address invalid") from error
    except ValueError as error:
        if isinstance(error, UnsupportedFamily):
            raise
        raise FTPSyntaxError("EPRT port invalid") from error
    return HostPort(str(address), _check_port(port))


def format_eprt_argument(host: str, port: int) -> bytes:
    address = ipaddress.ip_address(host)
    _check_port(port)
    family = 1 if address.version == 4 else 2
    return f"|{family}|{address}|{port}|".encode()


class UnsupportedFamily(FTPSyntaxError):
    """EPRT/EPSV named a network protocol other than 1 (IPv4) or 2 (IPv6): reply 522."""
