"""Configuration: TOML file and command-line options merged into one frozen, validated Config.

Command-line options win over the file.  Keys in the file are the long option
names (``passive-ports = "41000-41019"``); errors name the offending key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ftpsproxy.settings.errors import ConfigError

_DEFAULT_PORTS = {"ftp": 21, "ftpes": 21, "ftps": 990}


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


def parse_port_range(text: str) -> PortRange:
    low, sep, high = text.strip().partition("-")
    try:
        return PortRange(int(low), int(high if sep else low))
    except ValueError as error:
        raise ConfigError(f"passive-ports: {text!r} is not MIN-MAX") from error


@dataclass(frozen=True, slots=True)
class Config:
    backend: BackendAddress
    listen: tuple[str, ...] = ()
    listen_implicit: tuple[str, ...] = ()
    certificate: Path | None = None
    private_key: Path | None = None
    tls_minimum_version: str = "1.2"
    tls_ciphers: str | None = None
    require_tls: bool = False
    passive_ports: PortRange = field(default_factory=lambda: PortRange(30000, 30099))
    public_address: str | None = None
    metrics: str | None = None
    passive_timeout: float = 30.0
    backend_connect_timeout: float = 10.0
    tls_handshake_timeout: float = 10.0
    require_session_reuse: bool = False
    client_ca: Path | None = None
    client_certificate: str = "none"
    client_certificate_user_match: bool = False
    backend_ca: Path | None = None
    backend_server_name: str | None = None
    backend_insecure: bool = False
    backend_client_certificate: Path | None = None
    backend_client_key: Path | None = None
    backend_tls_max_version: str | None = None
    backend_data_protection: str = "private"
    backend_data_mode: str = "passive"
    max_sessions: int = 1000
    max_sessions_per_ip: int = 50
    max_passive_ports_per_ip: int = 0  # 0: a tenth of the range, at least 2
    login_timeout: float = 60.0
    idle_timeout: float = 900.0
    backend_reply_timeout: float = 60.0
    drain_timeout: float = 30.0
    data_stall_timeout: float = 300.0
    close_timeout: float = 10.0
    max_login_failures: int = 5
    login_lockout: float = 300.0
    login_failure_delay: float = 1.0
    health_interval: float = 5.0
    xferlog: Path | None = None
    log_format: str = "text"
    data_path: str = "splice"
    workers: int = 1

    @property
    def tls_enabled(self) -> bool:
        return self.certificate is not None

    @property
    def passive_share(self) -> int:
        """Passive ports one client address may hold at once (of this process's range)."""
        return self.max_passive_ports_per_ip or default_share(self.passive_ports.size)


# Option name -> how to turn a value (from the command line or the file) into a Config field.
_SCALARS: dict[str, str] = {
    "certificate": "path",
    "private-key": "path",
    "tls-minimum-version": "str",
    "tls-ciphers": "str",
    "require-tls": "bool",
    "passive-ports": "range",
    "public-address": "ip4",
    "metrics": "str",
    "passive-timeout": "seconds",
    "backend-connect-timeout": "seconds",
    "backend": "backend",
    "tls-handshake-timeout": "seconds",
    "require-session-reuse": "bool",
    "client-ca": "path",
    "client-certificate": "choice:none,optional,required",
    "client-certificate-user-match": "bool",
    "backend-ca": "path",
    "backend-server-name": "str",
    "backend-insecure": "bool",
    "backend-client-certificate": "path",
    "backend-client-key": "path",
    "backend-tls-max-version": "choice:1.2,1.3",
    "backend-data-protection": "choice:private,clear",
    "backend-data-mode": "choice:passive,active",
    "max-sessions": "count",
    "max-sessions-per-ip": "count",
    "max-passive-ports-per-ip": "count0",
    "login-timeout": "seconds",
    "idle-timeout": "seconds",
    "backend-reply-timeout": "seconds",
    "drain-timeout": "seconds",
    "data-stall-timeout": "seconds",
    "close-timeout": "seconds",
    "max-login-failures": "count",
    "login-lockout": "seconds",
    "login-failure-delay": "delay",
    "health-interval": "seconds",
    "xferlog": "path",
    "log-format": "choice:text,json",
    "data-path": "choice:splice,copy",
    "workers": "count",
}
_LISTS = ("listen", "listen-implicit")
KNOWN_KEYS = frozenset({*_SCALARS, *_LISTS})


def _convert(key: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string or number, got {value!r}")
    if kind == "path":
        return Path(str(value))
    if kind in ("count", "count0"):
        least = 1 if kind == "count" else 0
        try:
            count = int(value)
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} is not a whole number") from error
        if count < least or count != float(value):
            raise ConfigError(f"{key}: {value!r} must be a whole number >= {least}")
        return count
    if kind.startswith("choice:"):
        choices = kind.removeprefix("choice:").split(",")
        if str(value) not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return str(value)
    if kind == "range":
        return parse_port_range(str(value))
    if kind == "backend":
        return parse_backend_url(str(value))
    if kind == "seconds":
        try:
            seconds = float(value)
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} is not a number of seconds") from error
        if not 0 < seconds <= 86400:
            raise ConfigError(f"{key}: {value!r} must be between 0 and 86400 seconds")
        return seconds
    if kind == "delay":
        try:
            seconds = float(value)
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} is not a number of seconds") from error
        if not 0 <= seconds <= 60:
            raise ConfigError(f"{key}: {value!r} must be between 0 and 60 seconds")
        return seconds
    if kind == "ip4":
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} is not an IPv4 address") from error
    return str(value)


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"config {path}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path}: {error}") from error
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"config {path}: unknown key {unknown[0]!r}")
    return data


def build_config(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> Config:
    """Merge file and command-line values (command line wins) and validate them together."""
    fields: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        value = cli_values.get(key)
        if value is None:
            value = file_values.get(key)
        if value is not None:
            fields[key.replace("-", "_")] = _convert(key, kind, value)
    for key in _LISTS:
        values = cli_values.get(key) or file_values.get(key) or []
        if isinstance(values, str) or not all(isinstance(item, str) for item in values):
            raise ConfigError(f"{key}: expected a list of endpoint strings")
        fields[key.replace("-", "_")] = tuple(values)
    if "backend" not in fields:
        raise ConfigError("backend: required (e.g. --backend ftp://127.0.0.1:2100)")
    if not fields["listen"] and not fields["listen_implicit"]:
        raise ConfigError("listen: give at least one --listen or --listen-implicit endpoint")
    has_cert = "certificate" in fields
    if has_cert != ("private_key" in fields):
        raise ConfigError("certificate and private-key must be given together")
    if fields["listen_implicit"] and not has_cert:
        raise ConfigError("listen-implicit: needs --certificate and --private-key")
    for flag in ("require_tls", "require_session_reuse", "client_ca"):
        if fields.get(flag) and not has_cert:
            raise ConfigError(f"{flag.replace('_', '-')}: needs --certificate and --private-key")
    if fields.get("client_certificate", "none") != "none" and "client_ca" not in fields:
        raise ConfigError("client-certificate: needs --client-ca")
    if (
        fields.get("client_certificate_user_match")
        and fields.get("client_certificate", "none") == "none"
    ):
        raise ConfigError(
            "client-certificate-user-match: needs --client-certificate optional|required"
        )
    backend_tls_keys: list[str] = [
        key
        for key in ("backend_ca", "backend_server_name", "backend_client_certificate")
        if key in fields
    ]
    if fields["backend"].scheme == "ftp" and (backend_tls_keys or fields.get("backend_insecure")):
        key = (backend_tls_keys or ["backend_insecure"])[0].replace("_", "-")
        raise ConfigError(f"{key}: only for ftpes:// and ftps:// backends")
    if "backend_client_key" in fields and "backend_client_certificate" not in fields:
        raise ConfigError("backend-client-key: needs --backend-client-certificate")
    config = Config(**fields)
    if config.workers > config.passive_ports.size:
        raise ConfigError(
            f"workers: {config.workers} workers need at least as many passive ports "
            f"(passive-ports has {config.passive_ports.size})"
        )
    return config


# What SIGHUP may change in a running proxy: limits and timeouts (new sessions and
# commands see them), login throttling, and the TLS files (the certificate is loaded
# again).  Everything else (listeners, backend, port range, workers...) needs a restart.
RELOADABLE: frozenset[str] = frozenset(
    {
        "certificate",
        "private_key",
        "tls_minimum_version",
        "tls_ciphers",
        "client_ca",
        "client_certificate",
        "client_certificate_user_match",
        "require_tls",
        "require_session_reuse",
        "public_address",
        "passive_timeout",
        "tls_handshake_timeout",
        "max_sessions",
        "max_sessions_per_ip",
        "max_passive_ports_per_ip",
        "login_timeout",
        "idle_timeout",
        "backend_reply_timeout",
        "drain_timeout",
        "data_stall_timeout",
        "close_timeout",
        "max_login_failures",
        "login_lockout",
        "login_failure_delay",
    }
)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a reload found: the config to run with now, and what changed."""

    config: Config
    applied: dict[str, tuple[Any, Any]]  # field -> (old, new), now in effect
    needs_restart: dict[str, tuple[Any, Any]]  # field -> (old, new), ignored until restart


def reload_config(current: Config, fresh: Config) -> ConfigChange:
    """Take from *fresh* what may change while running; report the rest."""
    applied: dict[str, tuple[Any, Any]] = {}
    needs_restart: dict[str, tuple[Any, Any]] = {}
    for name in current.__dataclass_fields__:
        old, new = getattr(current, name), getattr(fresh, name)
        if old == new:
            continue
        reloadable = name in RELOADABLE and current.tls_enabled == fresh.tls_enabled
        (applied if reloadable else needs_restart)[name] = (old, new)
    config = dataclasses.replace(current, **{name: new for name, (_, new) in applied.items()})
    return ConfigChange(config, applied, needs_restart)
