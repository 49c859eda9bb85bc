"""The user map: which backends a user's session may use, and the name the backend gets.

A TOML file with two parts, both optional::

    [users]                           # exact names, looked up first
    bob = "beta"                      # one backend
    carol = ["beta", "gamma"]         # several: the pool's policy balances among them
    "alice@acme" = { backend = "acme", user = "alice" }

    [[patterns]]                      # then globs, in file order: the first match wins
    match = "*@acme"
    backend = "acme"
    user = "{local}"                  # the name the backend gets (see ``rewrite``)

Exact names go first so that one user can be carved out of a pattern without moving
the pattern; the patterns keep file order so the file reads top-down like a firewall's
rules.  Globs are ``fnmatch``'s (``*``, ``?``, ``[abc]``), matched case-sensitively
against the whole name, as FTP servers compare user names.  Every backend named must
be in the pool: a typo is an error when the file is read, not a ``421`` for one user
at three in the morning.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ftpsproxy.pool.rewrite import Rewrite, RewriteError, parse_rewrite
from ftpsproxy.pool.user_route import UserRoute
from ftpsproxy.settings.errors import ConfigError

_ENTRY_KEYS = ("backend", "backends", "user")


class UserMapError(ConfigError):
    """The file cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One line of the map: an exact name or a pattern, its backends and its rewrite."""

    key: str
    backends: tuple[str, ...]
    rewrite: Rewrite | None = None
    pattern: bool = False

    def route(self, user: str) -> UserRoute:
        name = self.rewrite.apply(user) if self.rewrite is not None else user
        kind = "pattern" if self.pattern else "entry"
        return UserRoute(self.backends, name, f"user map {kind} {self.key!r}")


class UserMap:
    """Exact names first, then the first matching pattern; ``None`` when nothing matches."""

    def __init__(
        self, exact: Mapping[str, MapEntry] | None = None, patterns: Collection[MapEntry] = ()
    ) -> None:
        self._exact = dict(exact or {})
        self._patterns = [(re.compile(fnmatch.translate(entry.key)), entry) for entry in patterns]

    def __len__(self) -> int:
        return len(self._exact) + len(self._patterns)

    def entry_for(self, user: str) -> MapEntry | None:
        entry = self._exact.get(user)
        if entry is not None:
            return entry
        for regex, pattern in self._patterns:
            if regex.match(user):
                return pattern
        return None

    def route(self, user: str) -> UserRoute | None:
        entry = self.entry_for(user)
        return entry.route(user) if entry is not None else None

    @property
    def backends(self) -> set[str]:
        """Every backend name the map uses."""
        entries = [*self._exact.values(), *(entry for _, entry in self._patterns)]
        return {name for entry in entries for name in entry.backends}


def parse_user_map(text: str, known: Collection[str], source: str = "user map") -> UserMap:
    """Read a map from TOML *text*; *known* are the pool's backend names.

    Raises :class:`UserMapError` naming *source* and the key at fault.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserMapError(f"{source}: {error}") from error
    unknown = sorted(set(data) - {"users", "patterns"})
    if unknown:
        raise UserMapError(f"{source}: unknown key {unknown[0]!r} (users or patterns)")
    users = data.get("users", {})
    if not isinstance(users, dict):
        raise UserMapError(f"{source}: users: expected a table ([users])")
    patterns = data.get("patterns", [])
    if not isinstance(patterns, list) or not all(isinstance(each, dict) for each in patterns):
        raise UserMapError(f"{source}: patterns: expected a list of tables ([[patterns]])")
    exact = {
        name: _entry(f"{source}: users.{_quoted(name)}", name, value, known, pattern=False)
        for name, value in users.items()
    }
    globs: list[MapEntry] = []
    for index, table in enumerate(patterns):
        where = f"{source}: patterns[{index}]"
        match = table.get("match")
        if not isinstance(match, str) or not match:
            raise UserMapError(f"{where}.match: required, a glob string such as '*@acme'")
        rest = {key: value for key, value in table.items() if key != "match"}
        globs.append(_entry(where, match, rest, known, pattern=True))
    return UserMap(exact, globs)


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _entry(where: str, key: str, value: Any, known: Collection[str], *, pattern: bool) -> MapEntry:
    """A value is a backend name, a list of names, or a table (backend/backends, user)."""
    if not key or any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise UserMapError(f"{where}: a user name or pattern must be printable and not empty")
    if isinstance(value, str | list):
        value = {"backends" if isinstance(value, list) else "backend": value}
    if not isinstance(value, dict):
        raise UserMapError(f"{where}: expected a backend name, a list of them, or a table")
    extra = sorted(set(value) - set(_ENTRY_KEYS))
    if extra:
        raise UserMapError(f"{where}.{extra[0]}: unknown key (backend, backends or user)")
    if ("backend" in value) == ("backends" in value):
        raise UserMapError(f"{where}: give either backend or backends")
    if "backend" in value:
        names, field = [value["backend"]], "backend"
    else:
        names, field = value["backends"], "backends"
        if not isinstance(names, list) or not names:
            raise UserMapError(f"{where}.backends: expected a non-empty list of backend names")
    for name in names:
        if not isinstance(name, str):
            raise UserMapError(f"{where}.{field}: expected backend names, got {name!r}")
        if name not in known:
            raise UserMapError(
                f"{where}.{field}: unknown backend {name!r} (the pool has "
                f"{', '.join(sorted(known)) or 'none'})"
            )
    if len(set(names)) != len(names):
        raise UserMapError(f"{where}.{field}: a backend is named twice")
    rewrite = None
    if "user" in value:
        if not isinstance(value["user"], str):
            raise UserMapError(f"{where}.user: expected a template string such as '{{local}}'")
        try:
            rewrite = parse_rewrite(value["user"])
        except RewriteError as error:
            raise UserMapError(f"{where}.user: {error}") from error
    return MapEntry(key, tuple(names), rewrite, pattern)
