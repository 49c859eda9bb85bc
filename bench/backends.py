"""The backend FTP server: vsftpd 3.0.3 from Debian when it can run here, else pyftpdlib.

Two instances serve the same root with the same user: one plain FTP, one explicit FTPS
(TLS 1.2/1.3, TLS session reuse required on data connections, as vsftpd ships). vsftpd
comes from ``tests/support/servers.py`` with a few benchmark settings on top (no client
limits, no per-command logging).
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.common import BENCH_DIR, HOST, STARTUP_TIMEOUT, BenchError, Processes, tail
from tests.support.certs import Pki
from tests.support.servers import (
    SERVERS_DIR,
    TEST_PASSWORD,
    TEST_USER,
    Vsftpd,
    unavailable_reason,
)

PYFTPD_USER: Final = "bench"
PYFTPD_PASSWORD: Final = "bench-secret"


@dataclass(frozen=True)
class Backend:
    kind: str  # "vsftpd" or "pyftpdlib"
    version: str
    user: str
    password: str
    root: Path
    plain_port: int
    tls_port: int
    plain_pid: int
    tls_pid: int

    def url(self, *, tls: bool) -> str:
        """The URL a proxy is given: ``ftpes://`` (explicit FTPS) or ``ftp://``."""
        return f"{'ftpes' if tls else 'ftp'}://{HOST}:{self.tls_port if tls else self.plain_port}"


class BenchVsftpd(Vsftpd):
    """vsftpd as the tests run it, minus limits and logging that would skew the numbers.

    ``max_clients``/``max_per_ip`` default to 2000/50: the proxies' 1,000 idle sessions
    and the 50 concurrent downloads all come from 127.0.0.1.
    """

    OVERRIDES: Final = {
        "max_clients": "0",
        "max_per_ip": "0",
        "log_ftp_protocol": "NO",
        "debug_ssl": "NO",
        "xferlog_enable": "NO",
        "idle_session_timeout": "600",
    }

    def _write_config(self) -> None:
        super()._write_config()
        lines = self.config_path.read_text().splitlines()
        seen: set[str] = set()
        out: list[str] = []
        for line in lines:
            key = line.partition("=")[0]
            if key in self.OVERRIDES:
                out.append(f"{key}={self.OVERRIDES[key]}")
                seen.add(key)
            else:
                out.append(line)
        out += [f"{k}={v}" for k, v in self.OVERRIDES.items() if k not in seen]
        self.config_path.write_text("\n".join(out) + "\n")


def vsftpd_version() -> str:
    changelog = SERVERS_DIR / "vsftpd/usr/share/doc/vsftpd/changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt") as text:
            match = re.match(r"vsftpd \(([^)]+)\)", text.readline())
    except OSError:
        match = None
    return f"vsftpd {match.group(1)} (Debian)" if match else "vsftpd"


def vsftpd_unavailable() -> str | None:
    return unavailable_reason("vsftpd")


def start_vsftpd(
    procs: Processes,
    workdir: Path,
    root: Path,
    pki: Pki,
    plain_passive: tuple[int, int],
    tls_passive: tuple[int, int],
) -> Backend:
    plain = BenchVsftpd(workdir / "vsftpd-plain", tls=False, root=root, passive_ports=plain_passive)
    procs.on_stop_all(plain.stop)
    plain.start()
    ftps = BenchVsftpd(workdir / "vsftpd-ftps", pki=pki, root=root, passive_ports=tls_passive)
    procs.on_stop_all(ftps.stop)
    ftps.start()
    return Backend(
        kind="vsftpd",
        version=vsftpd_version(),
        user=TEST_USER,
        password=TEST_PASSWORD,
        root=root,
        plain_port=plain.port,
        tls_port=ftps.port,
        plain_pid=plain.pid,
        tls_pid=ftps.pid,
    )


def _read_ready_line(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Wait (bounded) for ``READY <port>`` from a bench/ftpserver.py subprocess."""
    import selectors
    import time

    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=min(remaining, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline().decode(errors="replace").strip()
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line:  # EOF: the process exited
                break
    raise BenchError(f"FTP server did not start (see {log}):\n{tail(log)}")


def start_pyftpdlib(
    procs: Processes,
    logs: Path,
    root: Path,
    pki: Pki,
    plain_passive: tuple[int, int],
    tls_passive: tuple[int, int],
) -> Backend:
    import pyftpdlib

    ports: list[int] = []
    pids: list[int] = []
    for name, passive, tls in (
        ("pyftpdlib-plain", plain_passive, False),
        ("pyftpdlib-ftps", tls_passive, True),
    ):
        argv = [sys.executable, str(BENCH_DIR / "ftpserver.py"), "--host", HOST]
        argv += ["--root", str(root), "--user", PYFTPD_USER, "--password", PYFTPD_PASSWORD]
        argv += ["--passive-ports", f"{passive[0]}-{passive[1]}"]
        if tls:
            argv += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        log = logs / f"{name}.log"
        proc = procs.start(name, argv, log=log, stdout_pipe=True)
        ports.append(_read_ready_line(proc, log))
        pids.append(proc.pid)
    return Backend(
        kind="pyftpdlib",
        version=f"pyftpdlib {pyftpdlib.__ver__}",
        user=PYFTPD_USER,
        password=PYFTPD_PASSWORD,
        root=root,
        plain_port=ports[0],
        tls_port=ports[1],
        plain_pid=pids[0],
        tls_pid=pids[1],
    )
