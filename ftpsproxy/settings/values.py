"""The values settings hold beyond numbers and paths: the backend, the port range, the choices.

Each choice is a ``StrEnum``, so a setting can only hold one of its members and
mypy checks every comparison against it; the member's value is what the command
line, the TOML file and the logs spell.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from ftpsproxy.settings.errors import ConfigError

_DEFAULT_PORTS = {"ftp": 21, "ftpes": 21, "ftps": 990}


class TLSVersion(StrEnum):
    V1_2 = "1.2"
    V1_3 = "1.3"


class ProxyProtocolOut(StrEnum):
    """Whether a backend's control connections start with a PROXY protocol header, which."""

    OFF = "off"
    V1 = "v1"
    V2 = "v2"


class ClientCertificates(StrEnum):
    """Whether clients must present a certificate signed by ``client-ca``."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


class DataProtection(StrEnum):
    """The ``PROT`` level the proxy asks an FTPS backend for."""

    PRIVATE = "private"
    CLEAR = "clear"


class BackendDataMode(StrEnum):
    """Who opens the data connections towards the backend."""

    PASSIVE = "passive"  # EPSV, then PASV: the proxy connects
    ACTIVE = "active"  # EPRT/PORT: the backend connects to the proxy


class DataPath(StrEnum):
    """How plain-to-plain transfers move: in the kernel (Linux splice) or through Python."""

    SPLICE = "splice"
    COPY = "copy"


class LookupFailure(StrEnum):
    """What a login gets while the user lookup service fails (down, timeout, bad answer)."""

    CLOSED = "closed"  # 421: no user lands on a backend the service did not choose
    POLICY = "policy"  # the pool's policy over every backend, the user name unchanged


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class BackendAddress:
    """Where sessions are relayed to; ``scheme`` says how the backend speaks TLS."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_backend_url(text: str) -> BackendAddress:
    parts = urlsplit(text.strip())
    if parts.scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"backend: {text!r}: scheme must be ftp://, ftpes:// or ftps://")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as error:
        raise ConfigError(f"backend: {text!r}: invalid port") from error
    if not parts.hostname:
        raise ConfigError(f"backend: {text!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"backend: {text!r}: only scheme://host:port is allowed")
    return BackendAddress(parts.scheme, parts.hostname, port)


def default_share(capacity: int) -> int:
    """Ports one owner may hold when none is configured: a tenth of the range, at least 2."""
    return max(2, capacity // 10)


@dataclass(frozen=True, slots=True)
class PortRange:
    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high <= 65535:
            raise ConfigError(
                f"passive-ports: {self.low}-{self.high} must be within 1024-65535, low <= high"
            )

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def split(self, count: int) -> list[PortRange]:
        """*count* contiguous, disjoint slices covering the range, sizes differing by one at
        most: the workers' shares, and the instances' (``--instance``)."""
        if not 1 <= count <= self.size:
            raise ConfigError(f"passive-ports: cannot split {self.size} ports {count} ways")
        size, extra = divmod(self.size, count)
        slices: list[PortRange] = []
        low = self.low
        for index in range(count):
            high = low + size - 1 + (1 if index < extra else 0)
            slices.append(PortRange(low, high))
            low = high + 1
        return slices


def parse_port_range(text: str) -> PortRange:
    low, sep, high = text.strip().partition("-")
    try:
        return PortRange(int(low), int(high if sep else low))
    except ValueError as error:
        raise ConfigError(f"passive-ports: {text!r} is not MIN-MAX") from error


@dataclass(frozen=True, slots=True)
class InstanceSlice:
    """Which of several instances behind one balancer this is: it takes slice ``index`` of
    ``count`` of the passive range, so each instance owns ports no other one uses."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_instance(text: str) -> InstanceSlice:
    index, sep, count = text.strip().partition("/")
    try:
        slice_ = InstanceSlice(int(index), int(count))
    except ValueError:
        raise ValueError("is not INDEX/COUNT, e.g. 0/2") from None
    if not sep or not 0 <= slice_.index < slice_.count:
        raise ValueError("is not INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/2")
    return slice_
