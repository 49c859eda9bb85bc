"""A backend pool end to end: the real proxy, configured by a TOML file, before real servers.

Each backend's root holds ``marker.txt`` (its pool name) and ``data.bin`` (random bytes
of its own, sha256 known), so one download through the proxy says which backend served
the session and whether the bytes arrived whole.  The proxy's view comes from its
``/metrics`` (per-backend series) and its log (``session N end ... user=U backend=B``).
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import signal
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import make_random_file
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import ProxyError, ProxyProcess
from tests.support.servers import TEST_PASSWORD, TEST_USER, FtpServer

MARKER = "marker.txt"
DATA = "data.bin"
DATA_SIZE = 64 * 1024
CLIENT_TIMEOUT = 20.0
T = TypeVar("T")
R = TypeVar("R")

_END = re.compile(r"session (\d+) end client=(\S+) user=(\S*) backend=(\S+) ")


@dataclass
class Member:
    """One backend of the pool: its name, the server, and what its data file hashes to."""

    name: str
    server: FtpServer
    digest: str
    table: dict[str, Any] = field(default_factory=dict)  # extra [[backends]] keys


def stock(name: str, server: FtpServer) -> Member:
    """Put the marker and a data file of its own in *server*'s root (owned like the root)."""
    root = Path(server.root)
    owner = root.stat()
    marker = root / MARKER
    marker.write_text(name)
    digest = make_random_file(root / DATA, DATA_SIZE)
    for path in (marker, root / DATA):
        os.chown(path, owner.st_uid, owner.st_gid)
    return Member(name, server, digest)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(each) for each in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def backend_table(member: Member, **keys: object) -> str:
    values = {"name": member.name, "url": member.server.url, **member.table, **keys}
    lines = ["[[backends]]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def config_text(
    top: dict[str, object], members: Sequence[Member], tables: dict[str, dict[str, object]]
) -> str:
    """The file: top-level keys, then one table per member (extra keys by member name)."""
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in top.items())
    return text + "\n" + "\n".join(backend_table(m, **tables.get(m.name, {})) for m in members)


@dataclass
class PoolProxy:
    """The proxy in front of a pool, with what a test reads from it."""

    proxy: ProxyProcess
    config: Path
    port: int
    metrics_port: int
    top: dict[str, object]
    members: list[Member]

    # -- configuration -----------------------------------------------------------------

    def write_config(
        self,
        members: Sequence[Member] | None = None,
        tables: dict[str, dict[str, object]] | None = None,
    ) -> None:
        if members is not None:
            self.members = list(members)
        self.config.write_text(config_text(self.top, self.members, tables or {}))

    def reload(self, members: Sequence[Member] | None = None, **tables: dict[str, object]) -> None:
        """Rewrite the file and SIGHUP; returns once the proxy logged the new pool."""
        before = self.proxy.log_text().count("SIGHUP: backends changed")
        self.write_config(members, tables)
        os.kill(self.proxy.pid, signal.SIGHUP)
        self.proxy.wait_log(r"(?s)" + r"SIGHUP: backends changed.*" * (before + 1))

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    # -- clients -------------------------------------------------------------------------

    def client(self, source: str | None = None) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT, source_address=(source, 0) if source else None)
        ftp.connect("127.0.0.1", self.port)
        return ftp

    def login(self, source: str | None = None) -> ftplib.FTP:
        ftp = self.client(source)
        ftp.login(TEST_USER, TEST_PASSWORD)
        return ftp

    def login_quit(self, _: object = None) -> None:
        ftp = self.login()
        ftp.quit()

    def user_only(self, user: str, source: str | None = None) -> str:
        """USER (the route is chosen there) then QUIT; the reply to USER."""
        ftp = self.client(source)
        try:
            reply = ftp.sendcmd(f"USER {user}")
        finally:
            ftp.quit()
        return reply

    def session_with_data(self, source: str | None = None) -> tuple[str, str]:
        """Log in, read the marker and download the data file: (backend name, sha256)."""
        ftp = self.login(source)
        try:
            name = fetch(ftp, MARKER).decode()
            digest = hashlib.sha256(fetch(ftp, DATA)).hexdigest()
        finally:
            ftp.quit()
        return name, digest

    def served_by(self, source: str | None = None) -> str:
        """Which backend a fresh session lands on, with its data checked by hash."""
        name, digest = self.session_with_data(source)
        assert digest == self.member(name).digest, f"{name}: {DATA} arrived damaged"
        return name

    # -- what the proxy reports -------------------------------------------------------

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def metric(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s samples matching ``labels``, by backend (summed over other labels)."""
        found: Counter[str] = Counter()
        for sample, have, value in self.samples():
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                found[have.get("backend", "")] += value  # type: ignore[assignment]
        return {k: float(v) for k, v in found.items()}

    def connects(self, result: str = "success") -> dict[str, int]:
        values = self.metric("ftpsproxy_backend_connects_total", result=result)
        return {name: int(value) for name, value in values.items()}

    def failed_connects(self, backend: str) -> int:
        return sum(
            int(v)
            for s, labels, v in self.samples()
            if s == "ftpsproxy_backend_connects_total"
            and labels.get("backend") == backend
            and labels.get("result") != "success"
        )

    def sessions(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.metric("ftpsproxy_backend_sessions").items()}

    def up(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.metric("ftpsproxy_backend_up").items()}

    def probes(self, backend: str) -> int:
        return int(sum(self.metric("ftpsproxy_backend_probes_total", backend=backend).values()))

    def readyz(self) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def ended(self) -> list[tuple[int, str, str, str]]:
        """Every ``session N end`` line: (session, client, user, backend)."""
        return [(int(m[1]), m[2], m[3], m[4]) for m in _END.finditer(self.proxy.log_text())]

    def routes_by_user(self, since: int = 0) -> dict[str, set[str]]:
        """user -> the backends its sessions ended on (log lines after offset *since*)."""
        routes: dict[str, set[str]] = {}
        for match in _END.finditer(self.proxy.log_text()[since:]):
            routes.setdefault(match[3], set()).add(match[4])
        return routes


def fetch(ftp: ftplib.FTP, name: str) -> bytes:
    buffer = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buffer.write)
    return buffer.getvalue()


def start_pool_proxy(
    make_proxy: Callable[..., ProxyProcess],
    workdir: Path,
    members: Sequence[Member],
    balance: str,
    *args: str,
    tables: dict[str, dict[str, object]] | None = None,
    **top: object,
) -> PoolProxy:
    """The proxy before *members* (TOML file in *workdir*); retried on a lost port race."""
    for attempt in range(3):
        port, metrics_port = free_port(), free_port()
        low, high = free_port_range(60)
        settings: dict[str, object] = {
            "listen": [f"tcp:{port}:interface=127.0.0.1"],
            "passive-ports": f"{low}-{high}",
            "public-address": "127.0.0.1",
            "metrics": f"tcp:{metrics_port}:interface=127.0.0.1",
            "balance": balance,
            # Every test client comes from loopback: lift the per-address caps.
            "max-sessions-per-ip": 200,
            "max-passive-ports-per-ip": 60,
            "health-interval": 0.5,
            "health-rise": 2,
            "health-fall": 3,
            "backend-connect-timeout": 5,
            **{k.replace("_", "-"): v for k, v in top.items()},
        }
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / f"pool-{attempt}.toml"
        config.write_text(config_text(settings, members, tables or {}))
        try:
            proxy = make_proxy("--config", str(config), *args, ports=[port, metrics_port])
        except ProxyError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
            continue
        return PoolProxy(proxy, config, port, metrics_port, settings, list(members))
    raise AssertionError("unreachable")


def run_all(fn: Callable[[T], R], items: Iterable[T], workers: int = 6) -> list[R]:
    """``fn`` over ``items`` on a bounded thread pool; the first exception propagates."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
