"""How a setting is read: typed from the TOML file, as text from the command line.

Every key of the file is checked against its kind in the same way: a number of
seconds must be a TOML number and an endpoint a TOML string, so both
``idle-timeout = "900"`` and ``listen = "tcp:2121"`` are refused with one line
naming the key.  The command line gives text, parsed by the same rules (flags
give ``True``, repeatable options a list).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import (
    PortRange,
    parse_backend_url,
    parse_instance,
    parse_port_range,
)

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """One kind of setting: what the file must hold, and how that or text becomes the value."""

    expected: str  # what the file must hold, for errors: "a number of seconds"
    file_types: tuple[type, ...]  # the TOML types accepted
    convert: Callable[[Any], T]  # a file value or command-line text -> T; ValueError says why
    show: Callable[[Any], str] = str  # a default, as --help prints it
    choices: tuple[str, ...] = ()  # for choices: every value, as spelled
    flag: bool = False  # on the command line: present or not, no value
    repeated: bool = False  # on the command line: given once per item of a list
    command_line: bool = True  # False: only the file can say it (tables)

    def from_file(self, key: str, value: object) -> T:
        wrong_bool = isinstance(value, bool) and bool not in self.file_types
        if wrong_bool or not isinstance(value, self.file_types):
            raise ConfigError(f"{key}: expected {self.expected}, got {value!r}")
        return self._convert(key, value)

    def from_command_line(self, key: str, value: object) -> T:
        """Text is parsed; anything else (a flag's True, a list) is checked as in the file."""
        if isinstance(value, str) and not self.flag:
            return self._convert(key, value)
        return self.from_file(key, value)

    def _convert(self, key: str, value: object) -> T:
        try:
            return self.convert(value)
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} {error}") from error


def _seconds(low: float, high: float, *, zero: bool) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError("is not a number of seconds") from None
        if not (low <= seconds if zero else low < seconds) or not seconds <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return seconds

    return convert


def _count(least: int, most: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        try:
            count = int(value)
        except ValueError:
            raise ValueError("is not a whole number") from None
        if count < least:
            raise ValueError(f"must be a whole number >= {least}")
        if most is not None and count > most:
            raise ValueError(f"must be a whole number <= {most}")
        return count

    return convert


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("is not true or false")
    return value


def _ipv4(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError("is not an IPv4 address") from None


def _endpoints(values: Any) -> tuple[str, ...]:
    if not all(isinstance(value, str) for value in values):
        raise ValueError("is not a list of endpoint strings")
    return tuple(values)


def _networks(values: Any) -> tuple[str, ...]:
    """CIDR networks (a bare address is a /32 or /128), written the way ``ipaddress`` does."""
    if not all(isinstance(value, str) for value in values):
        raise ValueError("is not a list of network strings")
    networks: list[str] = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"has {value!r}, which is not a network (e.g. 10.0.0.0/24)") from None
    return tuple(networks)


def _names(values: Any) -> tuple[str, ...]:
    if not all(isinstance(value, str) and value for value in values):
        raise ValueError("is not a list of backend names")
    return tuple(values)


def _http_url(value: Any) -> str:
    """An http:// or https:// URL with a host; ``{user}`` marks where the name goes."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http:// or https:// URL")
    return str(value)


def _show_range(ports: PortRange) -> str:
    return f"{ports.low}-{ports.high}"


def choice(values: type[E]) -> Kind[E]:
    """One of the members of *values*, spelled as their values."""
    spelled = tuple(member.value for member in values)

    def convert(value: Any) -> E:
        try:
            return values(value)
        except ValueError:
            raise ValueError(f"is not one of {', '.join(spelled)}") from None

    return Kind(f"one of {', '.join(spelled)} (a string)", (str,), convert, choices=spelled)


TEXT: Kind[str] = Kind("a string", (str,), str)
ENDPOINT: Kind[str] = Kind("an endpoint string", (str,), str)
ENDPOINTS: Kind[tuple[str, ...]] = Kind(
    "a list of endpoint strings", (list,), _endpoints, repeated=True
)
NETWORKS: Kind[tuple[str, ...]] = Kind(
    "a list of network strings", (list,), _networks, repeated=True
)
NAMES: Kind[tuple[str, ...]] = Kind("a list of backend names", (list,), _names, repeated=True)
HTTP_URL: Kind[str] = Kind("an http:// or https:// URL string", (str,), _http_url)
PATH: Kind[Path] = Kind("a path (a string)", (str,), Path)
BACKEND_URL = Kind("a URL string", (str,), parse_backend_url)
PORT_RANGE = Kind("a range string MIN-MAX", (str,), parse_port_range, _show_range)
INSTANCE = Kind("a string INDEX/COUNT", (str,), parse_instance)
IPV4: Kind[str] = Kind("an IPv4 address string", (str,), _ipv4)
SECONDS = Kind("a number of seconds", (int, float), _seconds(0, 86400, zero=False), "{:g}".format)
DELAY = Kind("a number of seconds", (int, float), _seconds(0, 60, zero=True), "{:g}".format)
COUNT = Kind("a whole number", (int,), _count(1))
COUNT_OR_ZERO = Kind("a whole number", (int,), _count(0))
PREFIX_LENGTH = Kind("a whole number", (int,), _count(1, 128))
FLAG = Kind("true or false", (bool,), _flag, flag=True)
#: ``[[backends]]``: checked as a list here, read table by table in ``settings.backends``.
TABLES: Kind[Any] = Kind("a list of tables", (list,), lambda tables: tables, command_line=False)
