"""Clients that never read their replies cannot grow the proxy or slow anyone else down.

A client that shrinks its receive buffer and pipelines commands the proxy answers
itself (``FEAT``) without reading, or after login paces ``STAT <large directory>``,
made the proxy queue every reply: 17 MB sent grew it to 950 MB.  Now the proxy
stops reading a client whose unsent replies exceed its control buffer, stops
reading the backend's replies for it, and ends the session (421, reset) once more
than 64 commands wait.  Each flood runs for ``FLOOD_SECONDS`` from its own source
address, reconnecting whenever the proxy cuts it off, while a second client
connects from 127.0.0.1 every half second and times its greeting.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import ReplyReader, client_context
from tests.test_e2e_core import Proxied, start_proxy

FLOOD_SECONDS = float(os.environ.get("FTPSPROXY_FLOOD_SECONDS", "30"))
RSS_GROWTH_BOUND = 20 * 1024 * 1024
GREETING_BOUND = 0.100
MIB = 1024 * 1024
STAT = b"STAT /big\r\n"


@dataclass
class Flood:
    """One hostile client, reconnecting until the deadline; counts what it got through."""

    proxied: Proxied
    source: str
    tls: bool
    after_login: bool
    deadline: float
    sent: int = 0
    connections: int = 0
    cut_off: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        while time.monotonic() < self.deadline and self.connections < 5000:
            self.connections += 1
            try:
                self._one_connection()
            except (OSError, ssl.SSLError):
                self.cut_off += 1  # reset by the proxy, or our send timed out: go again
                time.sleep(0.01)
            except AssertionError as error:
                self.errors.append(str(error))
                return

    def _one_connection(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.bind((self.source, 0))
        sock.connect(("127.0.0.1", self.proxied.port))
        with sock:
            stream: socket.socket = sock
            reader = ReplyReader(stream)
            assert reader.reply().startswith("220"), "no greeting"
            if self.tls:
                stream.sendall(b"AUTH TLS\r\n")
                assert reader.reply().startswith("234"), "AUTH TLS refused"
                context = client_context(self.proxied.pki.ca_cert)
                stream = context.wrap_socket(sock, server_hostname="localhost")
                reader = ReplyReader(stream)
            if self.after_login:
                user, password = self.proxied.backend.user, self.proxied.backend.password
                stream.sendall(f"USER {user}\r\n".encode())
                assert reader.reply().startswith("331"), "USER refused"
                stream.sendall(f"PASS {password}\r\n".encode())
                assert reader.reply().startswith("230"), "login refused"
                chunk = STAT * 4  # paced: 80 a second, under the pipelining limit
            else:
                chunk = b"FEAT\r\n" * 10_000
            while time.monotonic() < self.deadline:
                stream.sendall(chunk)  # and never read again
                self.sent += len(chunk)
                if self.after_login:
                    time.sleep(0.05)


def _greeting_seconds(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(1024)
            assert more, "closed before the greeting"
            data += more
        elapsed = time.monotonic() - started
        sock.sendall(b"QUIT\r\n")
    assert data.startswith(b"220"), data
    return elapsed


def _warm_up(proxied: Proxied) -> None:
    """One ordinary session each way, so what the proxy loads lazily is not counted."""
    for _ in range(3):
        ftp = proxied.ftp_tls()
        ftp.sendcmd("FEAT")
        ftp.sendcmd("STAT /big")
        ftp.quit()


CASES = [
    pytest.param(False, False, id="plain-before-login"),
    pytest.param(True, False, id="tls-before-login"),
    pytest.param(False, True, id="plain-after-login"),
    pytest.param(True, True, id="tls-after-login"),
]


@pytest.mark.parametrize(("tls", "after_login"), CASES)
def test_a_client_that_never_reads_cannot_grow_the_proxy(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tls: bool, after_login: bool
) -> None:
    big = backend.path("big")
    big.mkdir()
    for index in range(3000):  # STAT /big: about 230 KB of reply
        (big / f"file-{index:05d}-{'x' * 40}.bin").touch()
    proxied = start_proxy(make_proxy, backend, pki)
    process = proxied.proxy
    _warm_up(proxied)
    before = process.rss_bytes()
    flood = Flood(proxied, "127.0.0.2", tls, after_login, time.monotonic() + FLOOD_SECONDS)
    attacker = threading.Thread(target=flood.run, daemon=True)
    attacker.start()
    peak, greetings = before, []
    while attacker.is_alive() and len(greetings) < 4 * FLOOD_SECONDS + 20:
        time.sleep(0.5)
        greetings.append(_greeting_seconds(proxied.port))
        peak = max(peak, process.rss_bytes())
    attacker.join(timeout=30)
    assert not attacker.is_alive()
    time.sleep(1)
    after = process.rss_bytes()
    figures = {
        "case": f"{'tls' if tls else 'plain'}-{'after' if after_login else 'before'}-login",
        "seconds": FLOOD_SECONDS,
        "flood_kib_sent": round(flood.sent / 1024),
        "connections": flood.connections,
        "cut_off": flood.cut_off,
        "rss_mib_before": round(before / MIB, 1),
        "rss_mib_peak": round(peak / MIB, 1),
        "rss_mib_after": round(after / MIB, 1),
        "greetings": len(greetings),
        "greeting_ms_max": round(max(greetings) * 1000, 1),
    }
    _record(figures)
    assert not flood.errors, flood.errors
    # The flood really ran: before login 1 MiB of FEAT; after login at least 20 STAT /big
    # a second, whose replies would come to ~4.6 MB a second if the proxy fetched them all.
    assert flood.sent > (20 * len(STAT) * FLOOD_SECONDS if after_login else MIB), figures
    assert peak - before < RSS_GROWTH_BOUND, figures
    assert after - before < RSS_GROWTH_BOUND, figures
    assert max(greetings) < GREETING_BOUND, figures
    assert process.is_running()
    # Still serving: a normal session works after the flood.
    ftp = proxied.ftp_tls()
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def _record(figures: dict[str, object]) -> None:
    """Print the figures; with FTPSPROXY_FIGURES=FILE also append them there as JSON."""
    print(json.dumps(figures))
    target = os.environ.get("FTPSPROXY_FIGURES")
    if target:
        with Path(target).open("a") as handle:
            handle.write(json.dumps(figures) + "\n")
