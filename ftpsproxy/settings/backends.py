"""The backends a proxy relays to, as the configuration declares them.

One backend comes from ``--backend`` and the ``backend-*`` options; a pool comes
from ``[[backends]]`` tables in the TOML file, each with a name.  A table's keys
are checked like every other setting (the same kinds, errors naming
``backends[N].key``), and its TLS keys default to the top-level ``backend-*``
values, so a pool behind one CA says so once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.kinds import BACKEND_URL, COUNT, FLAG, PATH, TEXT, Kind, choice
from ftpsproxy.settings.values import BackendAddress, DataProtection, TLSVersion

#: The name of the one backend given by ``--backend`` (logs and the ``backend`` label).
SINGLE_BACKEND_NAME = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


class AdminState(StrEnum):
    """What the operator wants of a backend: new sessions, or only the running ones."""

    ACTIVE = "active"
    DRAIN = "drain"


class Balance(StrEnum):
    """How the pool picks a backend for a new session, at ``USER``."""

    ROUND_ROBIN = "round-robin"
    LEAST_SESSIONS = "least-sessions"
    USER_HASH = "user-hash"
    SOURCE_HASH = "source-hash"
    PRIORITY = "priority"


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSpec:
    """One backend: where it is, how to speak TLS to it, and its share of the sessions."""

    name: str
    address: BackendAddress
    ca: Path | None = None
    server_name: str | None = None
    insecure: bool = False
    client_certificate: Path | None = None
    client_key: Path | None = None
    tls_max_version: TLSVersion | None = None
    data_protection: DataProtection = DataProtection.PRIVATE
    weight: int = 1
    max_sessions: int | None = None
    state: AdminState = AdminState.ACTIVE

    @property
    def tls(self) -> bool:
        return self.address.scheme != "ftp"

    def check(self, where: str) -> None:
        """The rules that tie a backend's settings together; *where* prefixes the error."""
        if not self.tls:
            for key in ("ca", "server_name", "client_certificate"):
                if getattr(self, key) is not None:
                    name = key.replace("_", "-")
                    raise ConfigError(f"{where}{name}: only for ftpes:// and ftps:// backends")
            if self.insecure:
                raise ConfigError(f"{where}insecure: only for ftpes:// and ftps:// backends")
        if self.client_key is not None and self.client_certificate is None:
            raise ConfigError(f"{where}client-key: needs client-certificate")


#: The keys of a ``[[backends]]`` table and their kinds; each is the BackendSpec field of
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
}


def _read(where: str, key: str, value: object) -> Any:
    try:
        return TABLE_KEYS[key].from_file(where + key, value)
    except ConfigError as error:  # the URL parser names "backend": name the table's key
        message = str(error)
        if not message.startswith(where):
            message = f"{where}{key}: {message.split(': ', 1)[-1]}"
        raise ConfigError(message) from error


def read_pool(tables: object, defaults: Mapping[str, Any]) -> tuple[BackendSpec, ...]:
    """``[[backends]]`` tables -> backends; *defaults* are the top-level ``backend-*`` values."""
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ConfigError("backends: expected a list of tables ([[backends]])")
    if not tables:
        raise ConfigError("backends: the list is empty")
    pool: list[BackendSpec] = []
    for index, table in enumerate(tables):
        where = f"backends[{index}]."
        unknown = sorted(set(table) - set(TABLE_KEYS))
        if unknown:
            known = ", ".join(TABLE_KEYS)
            raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {known})")
        for required in ("name", "url"):
            if required not in table:
                raise ConfigError(f"{where}{required}: required")
        values = {key: _read(where, key, value) for key, value in table.items()}
        fields: dict[str, Any] = {}
        if values["url"].scheme != "ftp":  # only TLS backends inherit the TLS settings
            fields.update((field, value) for field, value in defaults.items() if value is not None)
        fields.update((key.replace("-", "_"), value) for key, value in values.items())
        fields["address"] = fields.pop("url")
        if not _NAME.match(fields["name"]):
            raise ConfigError(
                f"{where}name: {fields['name']!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        spec = BackendSpec(**fields)
        spec.check(where)
        pool.append(spec)
    names = [spec.name for spec in pool]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"backends: the name {name!r} is used twice")
    return tuple(pool)
