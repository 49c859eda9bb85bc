"""Configuration: TOML file and command-line options merged into one frozen, validated Config.

Command-line options win over the file.  Keys in the file are the long option
names (``passive-ports = "41000-41019"``); errors name the offending key.  What
each option is, and whether SIGHUP may change it, is declared once in
``ftpsproxy.settings.options``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpsproxy.settings.backends import read_pool
from ftpsproxy.settings.errors import ConfigError, did_you_mean
from ftpsproxy.settings.listeners import Listener
from ftpsproxy.settings.options import FILE_OPTIONS, RELOADABLE, Config
from ftpsproxy.settings.port_overlaps import check_passive_overlaps
from ftpsproxy.settings.values import (
    BackendAddress,
    ClientCertificates,
    PortRange,
    default_share,
    parse_backend_url,
    parse_port_range,
)

# The settings' values are imported from here by the rest of the package.
__all__ = [
    "BackendAddress",
    "Config",
    "ConfigChange",
    "PortRange",
    "build_config",
    "default_share",
    "load_toml",
    "parse_backend_url",
    "parse_port_range",
    "reload_config",
]


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"config {path}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path}: {error}") from error
    unknown = sorted(set(data) - set(FILE_OPTIONS))
    if unknown:
        hint = did_you_mean(unknown[0], FILE_OPTIONS)
        raise ConfigError(f"config {path}: unknown key {unknown[0]!r}{hint}")
    return data


def _given(value: object) -> bool:
    """A command-line value that was given: not None, and not an empty list."""
    return value is not None and value != []


def build_config(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> Config:
    """Merge file and command-line values (command line wins) and validate them together."""
    fields: dict[str, Any] = {}
    for key, option in FILE_OPTIONS.items():
        if _given(cli_values.get(key)):
            fields[option.field] = option.kind.from_command_line(key, cli_values[key])
        elif file_values.get(key) is not None:
            fields[option.field] = option.kind.from_file(key, file_values[key])
    if "backends" in fields:
        if "backend" in fields:
            raise ConfigError("backends: give either --backend or [[backends]] tables, not both")
        # Read last: a table's TLS keys default to the top-level backend-* values.
        fields["backends"] = read_pool(fields["backends"], _pool_defaults(fields))
    elif "backend" not in fields:
        raise ConfigError("backend: required (e.g. --backend ftp://127.0.0.1:2100)")
    config = Config(**fields)
    if config.instance is not None:  # from here on, the range is this instance's slice
        share = config.passive_ports.split(config.instance.count)[config.instance.index]
        config = dataclasses.replace(config, passive_ports=share)
    _check_together(config)
    return config


def _pool_defaults(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level ``backend-*`` values a ``[[backends]]`` table inherits, by spec field."""
    inherited = (
        "ca",
        "server_name",
        "insecure",
        "client_certificate",
        "client_key",
        "tls_max_version",
        "data_protection",
        "proxy_protocol",
    )
    return {name: fields.get(f"backend_{name}") for name in inherited}


def _check_together(config: Config) -> None:
    """The rules that tie settings to each other; the first one broken is the error."""
    if not config.listen and not config.listen_implicit:
        raise ConfigError("listen: give at least one --listen or --listen-implicit endpoint")
    if (config.certificate is None) != (config.private_key is None):
        raise ConfigError("certificate and private-key must be given together")
    if config.listen_implicit and not config.tls_enabled:
        raise ConfigError("listen-implicit: needs --certificate and --private-key")
    for key in ("require_tls", "require_session_reuse", "client_ca"):
        if getattr(config, key) and not config.tls_enabled:
            raise ConfigError(f"{key.replace('_', '-')}: needs --certificate and --private-key")
    wants_certificates = config.client_certificate != ClientCertificates.NONE
    if wants_certificates and config.client_ca is None:
        raise ConfigError("client-certificate: needs --client-ca")
    if config.client_certificate_user_match and not wants_certificates:
        raise ConfigError(
            "client-certificate-user-match: needs --client-certificate optional|required"
        )
    if not config.backends:
        config.pool[0].check("backend-")
    check_passive_overlaps(
        config.passive_ports,
        [
            *(("listen", each) for each in config.listen),
            *(("listen-implicit", each) for each in config.listen_implicit),
            *([("metrics", config.metrics)] if config.metrics else []),
        ],
    )
    _check_proxy_protocol(config)
    _check_user_routing(config)
    if config.workers > config.passive_ports.size:
        raise ConfigError(
            f"workers: {config.workers} workers need at least as many passive ports "
            f"(passive-ports has {config.passive_ports.size})"
        )


def _check_proxy_protocol(config: Config) -> None:
    """A PROXY header is trusted only from named networks; its options need each other."""
    prefixed = [
        f"{option} {description}"
        for option, descriptions in (
            ("listen", config.listen),
            ("listen-implicit", config.listen_implicit),
        )
        for description in descriptions
        if Listener.of(description).proxied
    ]
    control = config.proxy_protocol or bool(prefixed)
    if (control or config.proxy_protocol_data) and not config.proxy_protocol_from:
        asking = ["proxy-protocol"] if config.proxy_protocol else prefixed
        flag = (asking or ["proxy-protocol-data"])[0]
        raise ConfigError(f"{flag}: needs --proxy-protocol-from with the balancers' networks")
    if config.proxy_protocol_from and not (control or config.proxy_protocol_data):
        raise ConfigError(
            "proxy-protocol-from: only with --proxy-protocol, a haproxy: listener "
            "or --proxy-protocol-data"
        )
    if config.proxy_protocol_data and not control:
        raise ConfigError(
            "proxy-protocol-data: needs --proxy-protocol or a haproxy: listener (data "
            "connections expect a header when their session's control connection had one)"
        )
    if config.public_address_from_proxy_header and not control:
        raise ConfigError(
            "public-address-from-proxy-header: needs --proxy-protocol or a haproxy: listener"
        )


def _check_user_routing(config: Config) -> None:
    """Backend names given for users must be the pool's."""
    names = [backend.name for backend in config.pool]
    default = config.user_map_default
    if default is not None:
        if config.user_map is None and config.user_lookup is None:
            raise ConfigError("user-map-default: only with --user-map or --user-lookup")
        if default not in names:
            raise ConfigError(
                f"user-map-default: unknown backend {default!r} (the pool has {', '.join(names)})"
            )
    for name in config.user_selects_backend:
        if name not in names:
            raise ConfigError(
                f"user-selects-backend: unknown backend {name!r} (the pool has {', '.join(names)})"
            )


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a reload found: the config to run with now, and what changed."""

    config: Config
    applied: dict[str, tuple[Any, Any]]  # field -> (old, new), now in effect
    needs_restart: dict[str, tuple[Any, Any]]  # field -> (old, new), ignored until restart


def reload_config(current: Config, fresh: Config) -> ConfigChange:
    """Take from *fresh* what may change while running (``reloadable`` options); report the rest.

    Turning client-facing TLS on or off always needs a restart: the listeners would change.
    """
    applied: dict[str, tuple[Any, Any]] = {}
    needs_restart: dict[str, tuple[Any, Any]] = {}
    for config_field in dataclasses.fields(Config):
        name = config_field.name
        old, new = getattr(current, name), getattr(fresh, name)
        if old == new:
            continue
        reloadable = name in RELOADABLE and current.tls_enabled == fresh.tls_enabled
        (applied if reloadable else needs_restart)[name] = (old, new)
    config = dataclasses.replace(current, **{name: new for name, (_, new) in applied.items()})
    return ConfigChange(config, applied, needs_restart)
