"""The backends a proxy relays to, as the configuration declares them.

One backend comes from ``--backend`` and the ``backend-*`` options; a pool comes
from ``[[backends]]`` tables in the TOML file, each with a name.  A table's keys
are checked like every other setting (the same kinds, errors naming
``backends[N].key``), and its TLS keys default to the top-level ``backend-*``
values, so a pool behind one CA says so once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ftpsproxy.settings.errors import ConfigError, did_you_mean
from ftpsproxy.settings.kinds import BACKEND_URL, COUNT, FLAG, PATH, TEXT, Kind, choice
from ftpsproxy.settings.values import (
    BackendAddress,
    DataProtection,
    ProxyProtocolOut,
    TLSVersion,
)

#: The name of the one backend given by ``--backend`` (logs and the ``backend`` label).
SINGLE_BACKEND_NAME = "default"
# A name is a log field and a Prometheus label value: keep it short and unambiguous.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class AdminState(StrEnum):
    """What the operator wants: ``drain`` takes no new sessions, running ones continue."""

    ACTIVE = "active"
    DRAIN = "drain"


class Policy(StrEnum):
    """How the pool picks a backend for a new session, at ``USER``."""

    ROUND_ROBIN = "round-robin"
    LEAST_SESSIONS = "least-sessions"
    USER_HASH = "user-hash"
    SOURCE_HASH = "source-hash"
    PRIORITY = "priority"


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend by ``name``: where it is, its share of the sessions, how to speak TLS to it.

    The address never appears in logs or metrics, the name does.
    """

    name: str
    address: BackendAddress
    weight: int = 1
    max_sessions: int | None = None  # None: no cap of its own
    state: AdminState = AdminState.ACTIVE
    _: KW_ONLY
    ca: Path | None = None
    server_name: str | None = None
    insecure: bool = False
    client_certificate: Path | None = None
    client_key: Path | None = None
    tls_max_version: TLSVersion | None = None
    data_protection: DataProtection = DataProtection.PRIVATE
    proxy_protocol: ProxyProtocolOut = ProxyProtocolOut.OFF

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"backend name {self.name!r}: 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if not _positive_int(self.weight):
            raise ConfigError(
                f"backend {self.name}: weight {self.weight!r} must be an integer >= 1"
            )
        cap = self.max_sessions
        if cap is not None and not _positive_int(cap):
            raise ConfigError(
                f"backend {self.name}: max-sessions {cap!r} must be an integer >= 1 (or unset)"
            )
        try:
            # A config file spells the state as text; keep the enum member.
            object.__setattr__(self, "state", AdminState(self.state))
        except ValueError:
            raise ConfigError(
                f"backend {self.name}: state {self.state!r} must be active or drain"
            ) from None

    @property
    def tls(self) -> bool:
        return self.address.scheme != "ftp"

    def __str__(self) -> str:
        """As a SIGHUP log line shows it: the name and what balancing sees, no address."""
        cap = f", max-sessions {self.max_sessions}" if self.max_sessions else ""
        return f"{self.name} ({self.state.value}, weight {self.weight}{cap})"

    def check(self, where: str) -> None:
        """The rules that tie a backend's TLS settings together; *where* prefixes the error."""
        if not self.tls:
            for key in ("ca", "server_name", "client_certificate"):
                if getattr(self, key) is not None:
                    name = key.replace("_", "-")
                    raise ConfigError(f"{where}{name}: only for ftpes:// and ftps:// backends")
            if self.insecure:
                raise ConfigError(f"{where}insecure: only for ftpes:// and ftps:// backends")
        if self.client_key is not None and self.client_certificate is None:
            raise ConfigError(f"{where}client-key: needs {where}client-certificate")


def _positive_int(value: object) -> bool:
    # bool is an int: weight = true in TOML is a mistake, not a weight of 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_unique_names(backends: Sequence[Backend]) -> None:
    """A pool needs at least one backend, and names that say which."""
    names = [backend.name for backend in backends]
    if not names:
        raise ConfigError("backends: at least one is needed")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"backends: names must be unique: {', '.join(duplicates)}")


#: The keys of a ``[[backends]]`` table and their kinds; each is the Backend field of
#: the same name (``url`` is ``address``).
TABLE_KEYS: dict[str, Kind[Any]] = {
    "name": TEXT,
    "url": BACKEND_URL,
    "ca": PATH,
    "server-name": TEXT,
    "insecure": FLAG,
    "client-certificate": PATH,
    "client-key": PATH,
    "tls-max-version": choice(TLSVersion),
    "data-protection": choice(DataProtection),
    "weight": COUNT,
    "max-sessions": COUNT,
    "state": choice(AdminState),
    "proxy-protocol": choice(ProxyProtocolOut),
}
#: Defaults every table inherits, plain ftp:// ones too (the rest are TLS settings).
_FOR_EVERY_BACKEND = frozenset({"proxy_protocol"})


def _read(where: str, key: str, value: object) -> Any:
    try:
        return TABLE_KEYS[key].from_file(where + key, value)
    except ConfigError as error:  # the URL parser names "backend": name the table's key
        message = str(error)
        if not message.startswith(where):
            message = f"{where}{key}: {message.split(': ', 1)[-1]}"
        raise ConfigError(message) from error


def read_pool(tables: object, defaults: Mapping[str, Any]) -> tuple[Backend, ...]:
    """``[[backends]]`` tables -> backends; *defaults* are the top-level ``backend-*`` values."""
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ConfigError("backends: expected a list of tables ([[backends]])")
    pool: list[Backend] = []
    for index, table in enumerate(tables):
        where = f"backends[{index}]."
        unknown = sorted(set(table) - set(TABLE_KEYS))
        if unknown:
            hint = did_you_mean(unknown[0], TABLE_KEYS)
            raise ConfigError(f"{where}{unknown[0]}: unknown key{hint}")
        for required in ("name", "url"):
            if required not in table:
                raise ConfigError(f"{where}{required}: required")
        values = {key: _read(where, key, value) for key, value in table.items()}
        fields: dict[str, Any] = {}
        tls = values["url"].scheme != "ftp"  # only TLS backends inherit the TLS settings
        fields.update(
            (field, value)
            for field, value in defaults.items()
            if value is not None and (tls or field in _FOR_EVERY_BACKEND)
        )
        fields.update((key.replace("-", "_"), value) for key, value in values.items())
        fields["address"] = fields.pop("url")
        backend = Backend(**fields)
        backend.check(where)
        pool.append(backend)
    check_unique_names(pool)
    return tuple(pool)
