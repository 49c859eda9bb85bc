"""Control-connection work: session rate, idle sessions, NOOP round trips.

A *session* is what a monitoring probe or a batch client does: connect, ``AUTH TLS``,
login, ``PBSZ``/``PROT P``, ``LIST`` (a TLS data connection that resumes the control
session, as vsftpd and ProFTPD require), ``QUIT``. Each listing is checked to name the
payload file, so a session that "succeeds" without reaching the backend is caught.

The session-rate clients run in separate processes (``python -m bench.sessions``, each
with a few threads), so one interpreter's GIL does not cap the rate we measure; they
start together at an agreed wall-clock time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ftplib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    REPO,
    BenchError,
    Target,
    proc_status_kib,
    pss_kib,
    tree_cpu_seconds,
    tree_pids,
)

_TIMEOUT = 30.0


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """``FTP_TLS`` that resumes the control connection's TLS session on data connections."""

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


def client_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def login(port: int, user: str, password: str, ctx: ssl.SSLContext | None) -> ftplib.FTP:
    ftp: ftplib.FTP = (
        ReusingFTP_TLS(context=ctx, timeout=_TIMEOUT) if ctx else ftplib.FTP(timeout=_TIMEOUT)
    )
    try:
        ftp.connect(HOST, port)
        ftp.login(user, password)  # FTP_TLS sends AUTH TLS first
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
    except BaseException:
        ftp.close()
        raise
    return ftp


def one_session(
    port: int, user: str, password: str, ctx: ssl.SSLContext | None, expect: str
) -> None:
    ftp = login(port, user, password, ctx)
    try:
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        if not any(expect in line for line in lines):
            raise RuntimeError(f"LIST does not name {expect}: {lines[:3]}")
        ftp.quit()
    finally:
        ftp.close()


# -- session rate: worker process -------------------------------------------------------------


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="session-rate client (used by bench/run.py)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cafile", type=Path, default=None, help="TLS when given")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, required=True, help="time.time() to begin")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--expect", required=True)
    args = parser.parse_args(argv)
    ctx = client_context(args.cafile) if args.cafile else None
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    ends: list[float] = []

    def loop() -> None:
        deadline = args.start_at + args.seconds
        for _ in range(100_000):
            now = time.time()
            if now >= deadline:
                break
            try:
                one_session(args.port, args.user, args.password, ctx, args.expect)
            except Exception as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
            else:
                with lock:
                    latencies.append(time.time() - now)
        with lock:
            ends.append(time.time())

    time.sleep(max(0.0, args.start_at - time.time()))
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.seconds + 4 * _TIMEOUT)
    json.dump(
        {
            "ok": len(latencies),
            "latencies": latencies,
            "errors": errors,
            "end": max(ends, default=time.time()),
        },
        sys.stdout,
    )
    return 0


@dataclass
class SessionRate:
    config: str
    round: int
    concurrency: int
    sessions: int  # completed and verified
    failed: int
    seconds: float
    per_second: float
    latency_p50_ms: float
    errors: list[str]
    verified: str
    proxy_cpu_s: float | None = None  # ftpsproxy's CPU (all its processes) during the run


def _proxy_cpu(target: Target) -> float | None:
    if target.kind != "ftpsproxy" or target.proxy_pid is None:
        return None  # mod_proxy's per-session processes are gone before we could read them
    return tree_cpu_seconds(tree_pids(target.proxy_pid))


def session_rate(
    target: Target,
    *,
    user: str,
    password: str,
    cafile: Path,
    expect: str,
    concurrency: int,
    seconds: float,
    round_no: int,
    processes: int,
) -> SessionRate:
    """Verified sessions per second with ``concurrency`` clients looping for ``seconds``."""
    processes = max(1, min(processes, concurrency))
    per_process = [
        concurrency // processes + (i < concurrency % processes) for i in range(processes)
    ]
    start_at = time.time() + 0.5 + 0.15 * processes  # after every interpreter has started
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cpu0 = _proxy_cpu(target)
    workers = []
    for threads in per_process:
        argv = [sys.executable, "-m", "bench.sessions", "--port", str(target.port)]
        argv += ["--user", user, "--password", password, "--threads", str(threads)]
        argv += ["--start-at", f"{start_at:.3f}", "--seconds", f"{seconds}", "--expect", expect]
        if target.tls:
            argv += ["--cafile", str(cafile)]
        workers.append(
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=REPO,
            )
        )
    outputs: list[dict[str, Any]] = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=seconds + 10 + 5 * _TIMEOUT)
            if worker.returncode != 0:
                raise BenchError(f"session client failed: {err.decode(errors='replace')[-800:]}")
            outputs.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    cpu1 = _proxy_cpu(target)
    ok = sum(o["ok"] for o in outputs)
    errors = [e for o in outputs for e in o["errors"]]
    elapsed = max(o["end"] for o in outputs) - start_at
    latencies = [latency for o in outputs for latency in o["latencies"]]
    return SessionRate(
        config=target.key,
        round=round_no,
        concurrency=concurrency,
        sessions=ok,
        failed=len(errors),
        seconds=round(elapsed, 3),
        per_second=ok / elapsed if elapsed > 0 else 0.0,
        latency_p50_ms=round(1000 * statistics.median(latencies), 2) if latencies else 0.0,
        errors=errors[:5],
        verified="LIST names the payload",
        proxy_cpu_s=None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
    )


# -- NOOP round trips -------------------------------------------------------------------------


@dataclass
class Latency:
    config: str
    round: int
    count: int
    p50_us: float
    p99_us: float


def noop_latency(
    target: Target, *, user: str, password: str, cafile: Path, count: int, round_no: int
) -> Latency:
    """``count`` NOOP round trips on one logged-in session (the proxies relay NOOP)."""
    ftp = login(target.port, user, password, client_context(cafile) if target.tls else None)
    try:
        for _ in range(20):
            ftp.voidcmd("NOOP")
        samples: list[float] = []
        for _ in range(count):
            started = time.perf_counter()
            reply = ftp.voidcmd("NOOP")
            samples.append(time.perf_counter() - started)
            if not reply.startswith("200"):
                raise BenchError(f"{target.label}: NOOP answered {reply!r}")
        ftp.quit()
    finally:
        ftp.close()
    quantiles = statistics.quantiles(samples, n=100)
    return Latency(
        config=target.key,
        round=round_no,
        count=count,
        p50_us=round(1e6 * statistics.median(samples), 1),
        p99_us=round(1e6 * quantiles[98], 1),
    )


# -- many idle sessions -----------------------------------------------------------------------


@dataclass
class IdleSessions:
    config: str
    sessions: int
    baseline_rss_mib: float  # the proxy before the sessions (all its processes)
    rss_mib: float  # with every session logged in and idle
    per_session_kib: float
    pss_mib: float  # proportional set size (what forked servers really use together)
    processes: int
    open_seconds: float
    failed: int  # sessions that did not get through login (only tolerated for mod_proxy)
    verified: str


async def _reply(reader: asyncio.StreamReader) -> str:
    """One FTP reply (multi-line ones to their closing ``NNN `` line); returns the last line."""
    first = (await reader.readline()).decode(errors="replace")
    if len(first) < 4:
        raise ConnectionError(f"connection closed (got {first!r})")
    line = first
    for _ in range(1000):
        if line[:3].isdigit() and line[3:4] == " " and line[:3] == first[:3]:
            return line
        line = (await reader.readline()).decode(errors="replace")
        if not line:
            raise ConnectionError("connection closed in a multi-line reply")
    raise ConnectionError("endless multi-line reply")


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str, want: str
) -> None:
    writer.write(line.encode() + b"\r\n")
    reply = await _reply(reader)
    if not reply.startswith(want):
        raise ConnectionError(f"{line.split()[0]}: {reply.strip()}")


async def _open_idle(
    port: int, user: str, password: str, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if not (await _reply(reader)).startswith("220"):
            raise ConnectionError("no 220 greeting")
        await _command(reader, writer, "AUTH TLS", "234")
        await writer.start_tls(ctx, server_hostname=HOST)
        await _command(reader, writer, f"USER {user}", "331")
        await _command(reader, writer, f"PASS {password}", "230")
        await _command(reader, writer, "PBSZ 0", "200")
        await _command(reader, writer, "PROT P", "200")
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


def _memory(pid: int) -> tuple[float, float, int]:
    pids = tree_pids(pid)
    rss = sum(proc_status_kib(p, "VmRSS") for p in pids) / 1024
    pss = sum(pss_kib(p) for p in pids) / 1024
    return rss, pss, len(pids)


async def _idle(
    target: Target,
    count: int,
    user: str,
    password: str,
    cafile: Path,
    parallel: int,
    tolerate_failures: bool,
) -> IdleSessions:
    assert target.proxy_pid is not None
    ctx = client_context(cafile)
    base_rss, _, _ = _memory(target.proxy_pid)
    gate = asyncio.Semaphore(parallel)
    sessions: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with gate:
            sessions.append(
                await asyncio.wait_for(_open_idle(target.port, user, password, ctx), _TIMEOUT * 2)
            )

    started = time.monotonic()
    try:
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        # The reference (mod_proxy, a process per session) drops some sessions when the
        # machine is busy: reported in ``failed``, measured on the rest; ours may not.
        if failures and (not tolerate_failures or len(failures) == count):
            raise BenchError(
                f"{target.label}: {len(failures)} of {count} idle sessions failed: {failures[0]!r}"
            )
        opened = time.monotonic() - started
        await asyncio.sleep(2.0)  # let the proxy settle (backend logins, buffers)
        # Every session is still alive: one NOOP each, answered 200 (relayed to the backend).
        await asyncio.gather(*(_command(r, w, "NOOP", "200") for r, w in sessions))
        rss, pss, nprocs = _memory(target.proxy_pid)
    finally:
        for _, writer in sessions:
            with contextlib.suppress(Exception):
                writer.write(b"QUIT\r\n")
        await asyncio.sleep(0.5)
        for _, writer in sessions:
            writer.transport.abort()
    return IdleSessions(
        config=target.key,
        sessions=len(sessions),
        baseline_rss_mib=round(base_rss, 1),
        rss_mib=round(rss, 1),
        per_session_kib=round((rss - base_rss) * 1024 / max(1, len(sessions)), 1),
        pss_mib=round(pss, 1),
        processes=nprocs,
        open_seconds=round(opened, 2),
        failed=len(failures),
        verified="every session logged in and answered NOOP",
    )


def idle_sessions(
    target: Target,
    *,
    count: int,
    user: str,
    password: str,
    cafile: Path,
    parallel: int = 20,
    tolerate_failures: bool = False,
) -> IdleSessions:
    """RSS of the proxy (all its processes) holding ``count`` logged-in, idle TLS sessions."""
    return asyncio.run(_idle(target, count, user, password, cafile, parallel, tolerate_failures))


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
