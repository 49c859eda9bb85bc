"""Throughput and memory benchmark of ftpsproxy against direct connections, with curl.

Run from the checkout with the project's virtualenv::

    .venv/bin/python bench/run.py                 # 1 GiB file, 3 rounds (~5 minutes)
    .venv/bin/python bench/run.py --quick         # 64 MiB, 1 round (< 1 minute, a smoke run)
    .venv/bin/python bench/run.py --size-mib 256 --rounds 5 --profile

What it does, all on 127.0.0.1:

1. Makes a scratch directory (on tmpfs ``/dev/shm`` when it has room, else under
   ``bench/results/``), a self-signed certificate for 127.0.0.1, and a payload file of
   ``--size-mib`` MiB of pseudo-random bytes (AES-CTR keystream: incompressible and fast
   to generate) whose SHA-256 is computed once.
2. Starts two pyftpdlib backends (``bench/ftpserver.py``) on the same root and user: plain
   FTP and explicit FTPS (``TLS_FTPHandler``), with identical 256 KiB data buffers.
3. Starts the proxy (``twistd -n ftpsproxy``) with an explicit-FTPS frontend in front of
   the plain backend.
4. Times single-stream RETR and STOR of the payload with curl, interleaved round by round
   (every configuration once per round, downloads then uploads), for: direct plain,
   direct FTPS, proxy plain->plain (curl without TLS through the proxy) and proxy
   FTPS->plain.  Every transfer is verified after timing: the download's size and SHA-256,
   the uploaded file's size and SHA-256 on the backend's disk.  Throughput is bytes /
   curl's ``time_total`` (login and the final 226 included).  CPU seconds of the proxy,
   the backend and curl are recorded per transfer.
5. Starts a fresh proxy and measures its peak RSS (``VmHWM``, plus ``VmRSS`` sampled every
   50 ms) while it relays one full FTPS download to a client reading at ``--slow-rate``
   (curl ``--limit-rate``, default 20M = 20 MiB/s): a proxy that buffers instead of
   applying back-pressure to the backend grows here.
6. Prints a table (median and min-max MiB/s, ratio of each proxied configuration to the
   direct connection of the same kind, proxy CPU seconds per GiB and the share of a core
   the proxy used) and the slow-reader peak RSS, and writes them to
   ``<results-dir>/latest.md`` and ``latest.json`` (with every transfer's raw figures);
   server and proxy logs go to ``<results-dir>/logs/``.

Client, proxy and backend share the machine's cores (two on the reference machine), so
absolute numbers say little: compare the ratios.

``--profile`` (needs ``py-spy`` in the virtualenv, which is not a project dependency)
additionally samples the proxy during one extra, untimed FTPS RETR and STOR and prints
the hottest functions.

Only processes started here are stopped, by PID, on every exit path (including Ctrl-C
and SIGTERM); every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftpsproxy.demo import make_self_signed

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
USER = "bench"
PASSWORD = "bench-secret"
PAYLOAD_NAME = "payload.bin"
SMOKE_NAME = "smoke.txt"
MIB = 1024 * 1024

# Passive ranges: the proxy's frontend and each backend get their own, below Linux's
# default ephemeral range (32768-60999), where outgoing connections may hold a port.
PROXY_PASSIVE = (30100, 30119)
PLAIN_PASSIVE = (30200, 30219)
TLS_PASSIVE = (30300, 30319)

CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 20.0  # seconds for a server or the proxy to come up
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
RSS_POLL_INTERVAL = 0.05


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message."""


# -- processes ----------------------------------------------------------------------------


class Processes:
    """The subprocesses this run started; stopped by PID, never by name."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as log_file:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file,
                env=env,
                # Own session: a terminal's Ctrl-C reaches only us; we stop the children.
                start_new_session=True,
            )
        self._running[proc.pid] = (name, proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        self._running.pop(proc.pid, None)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._running.values())):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.stop(proc)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"signal {signum}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_ready_line(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Wait (bounded) for ``READY <port>`` from a bench/ftpserver.py subprocess."""
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
    raise BenchError(f"FTP server did not start (see {log}):\n{_tail(log)}")


def wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (bounded) until the proxy answers a connection with a 220 greeting."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for _ in range(200):
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        try:
            with socket.create_connection((HOST, port), timeout=2) as conn:
                conn.settimeout(5)
                if conn.recv(512).startswith(b"220"):
                    conn.sendall(b"QUIT\r\n")
                    with contextlib.suppress(OSError):
                        conn.recv(512)
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"proxy did not greet on port {port} (see {log}):\n{_tail(log)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def check_ports_free(low: int, high: int) -> None:
    for port in range(low, high + 1):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError as error:
                raise BenchError(f"passive port {HOST}:{port} is in use: {error}") from error


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# -- files ----------------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that curl can trust with --cacert."""
    return make_self_signed(directory)


def make_payload(path: Path, size: int) -> str:
    """Write *size* incompressible bytes (AES-CTR keystream) and return their SHA-256."""
    chunk = 8 * MIB
    zeros = bytes(chunk)
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            block = encryptor.update(zeros[: min(chunk, remaining)])
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def choose_scratch_base(explicit: Path | None, needed: int, results_dir: Path) -> Path:
    if explicit is not None:
        return explicit
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > needed:
        return shm
    return results_dir


# -- configurations and transfers -------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way of reaching the backend's files."""

    key: str
    label: str
    port: int
    tls: bool
    proxied: bool
    baseline: str | None  # key of the direct configuration of the same kind


@dataclass
class Transfer:
    config: str
    direction: str  # "RETR" or "STOR"
    round: int
    bytes: int
    seconds: float  # curl's time_total
    mib_per_s: float
    time_connect: float  # curl's timings (seconds since start), for diagnosis
    time_appconnect: float
    time_pretransfer: float
    time_starttransfer: float
    proxy_cpu_s: float | None
    backend_cpu_s: float
    client_cpu_s: float
    verify_seconds: float


@dataclass
class Env:
    """What the transfers need: paths, the backends' and the proxy's processes."""

    scratch: Path
    root: Path
    out_dir: Path
    cacert: Path
    payload_size: int
    payload_sha256: str
    curl_timeout: float
    plain_backend: subprocess.Popen[bytes]
    tls_backend: subprocess.Popen[bytes]
    proxy: subprocess.Popen[bytes] | None = None
    targets: list[Target] = field(default_factory=list)


def curl_argv(env: Env, target: Target, remote: str, *extra: str) -> list[str]:
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        f"{env.curl_timeout:.0f}",
        "--write-out",
        "\nBENCH %{size_download} %{size_upload} %{time_total} %{time_connect}"
        " %{time_appconnect} %{time_pretransfer} %{time_starttransfer}\n",
    ]
    if target.tls:
        argv += ["--ssl-reqd", "--cacert", str(env.cacert)]
    argv += [*extra, f"ftp://{USER}:{PASSWORD}@{HOST}:{target.port}/{remote}"]
    return argv


def run_curl(argv: list[str], timeout: float) -> list[float]:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"curl timed out after {timeout:.0f} s: {' '.join(argv)}") from error
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise BenchError(f"curl exit {done.returncode}: {stderr} ({' '.join(argv[-1:])})")
    for line in reversed(done.stdout.decode(errors="replace").splitlines()):
        if line.startswith("BENCH "):
            return [float(value) for value in line.split()[1:]]
    raise BenchError(f"no curl --write-out line in {done.stdout[-200:]!r}")


def backend_of(env: Env, target: Target) -> subprocess.Popen[bytes]:
    return env.tls_backend if target.tls and not target.proxied else env.plain_backend


def transfer(env: Env, target: Target, direction: str, round_no: int) -> Transfer:
    """One timed, then verified, RETR or STOR of the payload."""
    proxy_pid = env.proxy.pid if target.proxied and env.proxy is not None else None
    backend_pid = backend_of(env, target).pid
    download = env.out_dir / "download.bin"
    upload_name = f"upload-{target.key}-{round_no}.bin"
    uploaded = env.root / upload_name
    download.unlink(missing_ok=True)
    uploaded.unlink(missing_ok=True)
    if direction == "RETR":
        argv = curl_argv(env, target, PAYLOAD_NAME, "--output", str(download))
    else:
        argv = curl_argv(env, target, upload_name, "--upload-file", str(env.root / PAYLOAD_NAME))

    proxy_cpu0 = proc_cpu_seconds(proxy_pid) if proxy_pid else 0.0
    backend_cpu0 = proc_cpu_seconds(backend_pid)
    client_cpu0 = children_cpu_seconds()
    size_down, size_up, total, connect, appconnect, pretransfer, starttransfer = run_curl(
        argv, env.curl_timeout + 15
    )
    client_cpu = children_cpu_seconds() - client_cpu0
    backend_cpu = proc_cpu_seconds(backend_pid) - backend_cpu0
    proxy_cpu = proc_cpu_seconds(proxy_pid) - proxy_cpu0 if proxy_pid else None

    started = time.monotonic()
    where = f"{target.label} {direction} round {round_no}"
    produced = download if direction == "RETR" else uploaded
    size = produced.stat().st_size if produced.exists() else -1
    if size != env.payload_size:
        raise BenchError(f"{where}: {produced.name} has {size} bytes, want {env.payload_size}")
    if sha256_file(produced) != env.payload_sha256:
        raise BenchError(f"{where}: SHA-256 of {produced.name} differs from the payload's")
    produced.unlink()
    verify_seconds = time.monotonic() - started

    moved = size_down if direction == "RETR" else size_up
    if int(moved) != env.payload_size:
        raise BenchError(f"{where}: curl reports {moved:.0f} bytes moved")
    return Transfer(
        config=target.key,
        direction=direction,
        round=round_no,
        bytes=int(moved),
        seconds=total,
        mib_per_s=moved / total / MIB,
        time_connect=connect,
        time_appconnect=appconnect,
        time_pretransfer=pretransfer,
        time_starttransfer=starttransfer,
        proxy_cpu_s=proxy_cpu,
        backend_cpu_s=backend_cpu,
        client_cpu_s=client_cpu,
        verify_seconds=verify_seconds,
    )


def smoke_check(env: Env) -> None:
    """A tiny RETR through every configuration before the (long) timed part."""
    expected = (env.root / SMOKE_NAME).read_bytes()
    for target in env.targets:
        out = env.out_dir / "smoke.out"
        out.unlink(missing_ok=True)
        run_curl(curl_argv(env, target, SMOKE_NAME, "--output", str(out)), 60)
        if out.read_bytes() != expected:
            raise BenchError(f"{target.label}: smoke download differs")
        out.unlink()


# -- servers --------------------------------------------------------------------------------


def start_backend(
    procs: Processes,
    name: str,
    root: Path,
    passive: tuple[int, int],
    logs: Path,
    tls: tuple[Path, Path] | None,
) -> tuple[subprocess.Popen[bytes], int]:
    check_ports_free(*passive)
    argv = [
        sys.executable,
        str(BENCH_DIR / "ftpserver.py"),
        "--host",
        HOST,
        "--root",
        str(root),
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--passive-ports",
        f"{passive[0]}-{passive[1]}",
    ]
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    log = logs / f"{name}.log"
    proc = procs.start(name, argv, log=log, stdout_pipe=True)
    return proc, read_ready_line(proc, log)


def twistd_argv() -> list[str]:
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [sys.executable, str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def start_proxy(
    procs: Processes,
    name: str,
    backend_port: int,
    cert: Path,
    key: Path,
    logs: Path,
) -> tuple[subprocess.Popen[bytes], int]:
    check_ports_free(*PROXY_PASSIVE)
    port = free_port()
    log = logs / f"{name}.log"
    log.unlink(missing_ok=True)
    argv = [
        *twistd_argv(),
        "-n",
        "--pidfile=",
        f"--logfile={log}",
        "ftpsproxy",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--certificate",
        str(cert),
        "--private-key",
        str(key),
        "--backend",
        f"ftp://{HOST}:{backend_port}",
        "--passive-ports",
        f"{PROXY_PASSIVE[0]}-{PROXY_PASSIVE[1]}",
        "--public-address",
        HOST,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = procs.start(name, argv, log=logs / f"{name}.stdio.log", env=env)
    wait_for_banner(port, proc, log)
    return proc, port


# -- slow reader and profile ----------------------------------------------------------------


@dataclass
class MemoryResult:
    rate: str
    bytes: int
    seconds: float
    baseline_rss_mib: float
    peak_rss_mib: float  # VmHWM at the end of the transfer
    peak_sampled_rss_mib: float
    samples: int
    rss_timeline_mib: list[tuple[float, float]]  # (seconds, VmRSS) about once a second


def slow_reader(env: Env, target: Target, rate: str, rate_bytes: float) -> MemoryResult:
    """Peak RSS of a fresh proxy relaying one full download to a rate-limited client."""
    assert env.proxy is not None
    pid = env.proxy.pid
    download = env.out_dir / "download.bin"
    download.unlink(missing_ok=True)
    expected_seconds = env.payload_size / rate_bytes
    timeout = expected_seconds * 2 + 60
    argv = curl_argv(env, target, PAYLOAD_NAME, "--limit-rate", rate, "--output", str(download))
    argv[argv.index("--max-time") + 1] = f"{timeout:.0f}"
    baseline = proc_status_kib(pid, "VmRSS") / 1024
    peak_sampled = baseline
    timeline: list[tuple[float, float]] = [(0.0, baseline)]
    samples = 0
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as curl:
        try:
            max_samples = int(timeout / RSS_POLL_INTERVAL) + 100
            while curl.poll() is None and samples < max_samples:
                rss = proc_status_kib(pid, "VmRSS") / 1024
                samples += 1
                peak_sampled = max(peak_sampled, rss)
                elapsed = time.monotonic() - started
                if elapsed - timeline[-1][0] >= 1.0:
                    timeline.append((round(elapsed, 2), round(rss, 2)))
                time.sleep(RSS_POLL_INTERVAL)
            _, stderr = curl.communicate(timeout=30)
        except BaseException:
            curl.kill()
            raise
    seconds = time.monotonic() - started
    peak = proc_status_kib(pid, "VmHWM") / 1024
    if curl.returncode != 0:
        raise BenchError(f"slow reader: curl exit {curl.returncode}: {stderr.decode().strip()}")
    size = download.stat().st_size if download.exists() else -1
    if size != env.payload_size or sha256_file(download) != env.payload_sha256:
        raise BenchError(f"slow reader: download corrupt ({size} bytes)")
    download.unlink()
    return MemoryResult(
        rate=rate,
        bytes=size,
        seconds=round(seconds, 2),
        baseline_rss_mib=round(baseline, 2),
        peak_rss_mib=round(peak, 2),
        peak_sampled_rss_mib=round(peak_sampled, 2),
        samples=samples,
        rss_timeline_mib=timeline,
    )


def parse_rate(rate: str) -> float:
    """curl's --limit-rate syntax: bytes per second with an optional K/M/G (powers of 1024)."""
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    text = rate.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def find_py_spy() -> Path | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return candidate
    found = shutil.which("py-spy")
    return Path(found) if found else None


def summarize_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self": share(self_counts), "inclusive": share(inclusive)}


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``, so lines of one function merge."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if where else name


def profile_proxy(env: Env, target: Target, results_dir: Path) -> dict[str, Any]:
    """Sample the proxy with py-spy during one untimed RETR and one STOR through *target*."""
    py_spy = find_py_spy()
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy into the virtualenv)"}
    assert env.proxy is not None
    profiles: dict[str, Any] = {}
    for direction in ("RETR", "STOR"):
        raw = results_dir / f"profile-{target.key}-{direction.lower()}.txt"
        raw.unlink(missing_ok=True)
        argv = [str(py_spy), "record", "--pid", str(env.proxy.pid), "--format", "raw"]
        argv += ["--output", str(raw), "--rate", "200", "--nonblocking"]
        log = results_dir / "logs" / "py-spy.log"
        with log.open("ab") as log_file:
            spy = subprocess.Popen(argv, stdout=log_file, stderr=log_file)
        try:
            time.sleep(1.0)  # let py-spy attach
            result = transfer(env, target, direction, 0)
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
        summary: dict[str, Any] = summarize_profile(raw) if raw.exists() else {"samples": 0}
        summary["mib_per_s_while_sampled"] = round(result.mib_per_s, 1)
        summary["raw"] = str(raw)
        profiles[direction] = summary
    return profiles


# -- report ----------------------------------------------------------------------------------


def summarize(transfers: list[Transfer], targets: list[Target]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    medians: dict[tuple[str, str], float] = {}
    for target in targets:
        row: dict[str, Any] = {"config": target.key, "label": target.label}
        for direction in ("RETR", "STOR"):
            runs = [t for t in transfers if t.config == target.key and t.direction == direction]
            speeds = [t.mib_per_s for t in runs]
            median = statistics.median(speeds)
            medians[(target.key, direction)] = median
            cpu = [t.proxy_cpu_s / (t.bytes / 1024**3) for t in runs if t.proxy_cpu_s is not None]
            busy = [t.proxy_cpu_s / t.seconds for t in runs if t.proxy_cpu_s is not None]
            row[direction] = {
                "median_mib_s": round(median, 1),
                "min_mib_s": round(min(speeds), 1),
                "max_mib_s": round(max(speeds), 1),
                "samples_mib_s": [round(s, 1) for s in speeds],
                "ratio_vs_direct": None,
                "proxy_cpu_s_per_gib": round(statistics.median(cpu), 2) if cpu else None,
                # share of one core the proxy used during the transfer (1.0 = saturated)
                "proxy_core_use": round(statistics.median(busy), 2) if busy else None,
                "backend_cpu_s_per_gib": round(
                    statistics.median(t.backend_cpu_s / (t.bytes / 1024**3) for t in runs), 2
                ),
                "client_cpu_s_per_gib": round(
                    statistics.median(t.client_cpu_s / (t.bytes / 1024**3) for t in runs), 2
                ),
            }
        rows.append(row)
    for target, row in zip(targets, rows, strict=True):
        if target.baseline is not None:
            for direction in ("RETR", "STOR"):
                base = medians[(target.baseline, direction)]
                row[direction]["ratio_vs_direct"] = round(
                    medians[(target.key, direction)] / base, 3
                )
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# ftpsproxy benchmark",
        "",
        f"{meta['date']} · commit {meta['commit']} · {meta['payload_mib']} MiB payload · "
        f"{meta['rounds']} round(s) · {meta['cpus']} CPU(s) · {meta['curl']} · "
        f"Python {meta['python']} · scratch on {meta['scratch_fs']}",
        "",
        f"**Client (curl), proxy and backend (pyftpdlib) share {meta['cpus']} CPU cores on "
        "loopback: compare the ratios, not the absolute numbers.**",
        "",
        "| Configuration | RETR MiB/s median (min–max) | RETR vs direct "
        "| STOR MiB/s median (min–max) | STOR vs direct | proxy CPU s/GiB RETR / STOR "
        "| proxy core use RETR / STOR |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        cells = [row["label"]]
        cpu: list[str] = []
        busy: list[str] = []
        for direction in ("RETR", "STOR"):
            d = row[direction]
            cells.append(f"{d['median_mib_s']:.1f} ({d['min_mib_s']:.1f}–{d['max_mib_s']:.1f})")
            ratio = d["ratio_vs_direct"]
            cells.append("—" if ratio is None else f"{ratio:.2f}")
            cpu.append("—" if d["proxy_cpu_s_per_gib"] is None else f"{d['proxy_cpu_s_per_gib']}")
            busy.append("—" if d["proxy_core_use"] is None else f"{d['proxy_core_use']:.0%}")
        cells.append(" / ".join(cpu))
        cells.append(" / ".join(busy))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Ratios: proxy plain→plain vs direct plain; proxy FTPS→plain vs direct FTPS. "
        "MiB/s = bytes / curl time_total (login and final reply included). Every transfer "
        "verified by size and SHA-256. Proxy core use = proxy CPU time / transfer time: "
        "near 100% means the single-threaded proxy was the bottleneck."
    )
    memory = report.get("slow_reader")
    if memory:
        lines += [
            "",
            f"**Slow reader** (fresh proxy, FTPS→plain RETR of {memory['bytes'] / MIB:.0f} MiB, "
            f"curl --limit-rate {memory['rate']}, {memory['seconds']:.1f} s): proxy peak RSS "
            f"**{memory['peak_rss_mib']:.1f} MiB** (VmHWM; {memory['baseline_rss_mib']:.1f} MiB "
            f"before the transfer, sampled max {memory['peak_sampled_rss_mib']:.1f} MiB).",
        ]
    profile = report.get("profile")
    if profile:
        lines += ["", "## Proxy profile (py-spy, untimed extra transfer)"]
        for direction, summary in profile.items():
            if not isinstance(summary, dict) or not summary.get("self"):
                lines += ["", f"{direction}: {summary}"]
                continue
            lines += [
                "",
                f"{direction} ({summary['samples']} samples, "
                f"{summary['mib_per_s_while_sampled']} MiB/s while sampled) — self time:",
                "",
            ]
            lines += [f"- {share:5.1f}%  {name}" for name, share in summary["self"]]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.stdout.decode().strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def curl_version() -> str:
    done = subprocess.run(["curl", "--version"], capture_output=True, timeout=10, check=True)
    return " ".join(done.stdout.decode().split()[:2])


def filesystem_of(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, kind
    return f"{best} ({fstype})"


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ftpsproxy (RETR/STOR throughput, slow-reader RSS) with curl.",
    )
    parser.add_argument("--size-mib", type=int, default=None, help="payload size (default 1024)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="64 MiB, 1 round: a smoke run of under a minute"
    )
    parser.add_argument(
        "--slow-rate", default="20M", help="curl --limit-rate of the slow reader (default 20M)"
    )
    parser.add_argument("--no-slow-reader", action="store_true", help="skip the RSS measurement")
    parser.add_argument(
        "--profile", action="store_true", help="also sample the proxy with py-spy (untimed)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where latest.md, latest.json and logs/ go (default bench/results)",
    )
    parser.add_argument(
        "--scratch", type=Path, default=None, help="parent of the scratch dir (default: /dev/shm)"
    )
    parser.add_argument("--keep-scratch", action="store_true", help="do not delete the scratch")
    args = parser.parse_args(argv)
    if args.size_mib is None:
        args.size_mib = 64 if args.quick else 1024
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.size_mib < 1 or args.rounds < 1:
        parser.error("--size-mib and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None:
        print("bench: curl is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    results_dir: Path = args.results_dir.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    size = args.size_mib * MIB
    # payload + one download + one upload at a time, plus slack
    base = choose_scratch_base(args.scratch, 3 * size + 256 * MIB, results_dir)
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ftpsproxy-bench-", dir=base))
    procs = Processes()
    try:
        report = run(args, scratch, results_dir, logs, procs)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_scratch:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    markdown = render_markdown(report)
    (results_dir / "latest.md").write_text(markdown)
    (results_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown)
    print(f"written: {results_dir / 'latest.md'}, {results_dir / 'latest.json'}")
    return 0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    args: argparse.Namespace, scratch: Path, results_dir: Path, logs: Path, procs: Processes
) -> dict[str, Any]:
    started = time.monotonic()
    size = args.size_mib * MIB
    root, out_dir, certs = scratch / "root", scratch / "out", scratch / "certs"
    for directory in (root, out_dir, certs):
        directory.mkdir()
    cert, key = make_certificate(certs)
    say(f"scratch {scratch}; writing {args.size_mib} MiB payload")
    payload_sha256 = make_payload(root / PAYLOAD_NAME, size)
    (root / SMOKE_NAME).write_bytes(b"ftpsproxy bench smoke file\n" * 100)

    say("starting pyftpdlib backends (plain FTP, explicit FTPS) and the proxy")
    plain, plain_port = start_backend(procs, "backend-plain", root, PLAIN_PASSIVE, logs, None)
    tls, tls_port = start_backend(procs, "backend-ftps", root, TLS_PASSIVE, logs, (cert, key))
    proxy, proxy_port = start_proxy(procs, "proxy", plain_port, cert, key, logs)
    env = Env(
        scratch=scratch,
        root=root,
        out_dir=out_dir,
        cacert=cert,
        payload_size=size,
        payload_sha256=payload_sha256,
        curl_timeout=max(60.0, args.size_mib / 4),  # fails below ~4 MiB/s
        plain_backend=plain,
        tls_backend=tls,
        proxy=proxy,
    )
    env.targets = [
        Target("direct-plain", "direct plain", plain_port, False, False, None),
        Target("direct-ftps", "direct FTPS", tls_port, True, False, None),
        Target("proxy-plain", "proxy plain→plain", proxy_port, False, True, "direct-plain"),
        Target("proxy-ftps", "proxy FTPS→plain", proxy_port, True, True, "direct-ftps"),
    ]
    smoke_check(env)

    transfers: list[Transfer] = []
    for round_no in range(1, args.rounds + 1):
        for direction in ("RETR", "STOR"):
            for target in env.targets:
                result = transfer(env, target, direction, round_no)
                transfers.append(result)
                cpu = "" if result.proxy_cpu_s is None else f", proxy CPU {result.proxy_cpu_s:.2f}s"
                say(
                    f"round {round_no} {direction} {target.label:<18} "
                    f"{result.mib_per_s:8.1f} MiB/s ({result.seconds:.2f}s{cpu}) verified"
                )

    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git_commit(),
            "payload_mib": args.size_mib,
            "payload_sha256": payload_sha256,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "curl": curl_version(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "scratch_fs": filesystem_of(scratch),
            "note": "client, proxy and backend share the CPUs: compare ratios, not absolutes",
        },
        "results": summarize(transfers, env.targets),
        "transfers": [asdict(t) for t in transfers],
    }

    proxy_ftps = env.targets[3]
    if args.profile:
        say("profiling the proxy with py-spy (one extra RETR and STOR, untimed)")
        report["profile"] = profile_proxy(env, proxy_ftps, results_dir)

    if not args.no_slow_reader:
        procs.stop(proxy)
        fresh, fresh_port = start_proxy(procs, "proxy-slow-reader", plain_port, cert, key, logs)
        env.proxy = fresh
        slow_target = Target(proxy_ftps.key, proxy_ftps.label, fresh_port, True, True, None)
        rate_bytes = parse_rate(args.slow_rate)
        say(
            f"slow reader: {args.size_mib} MiB through a fresh proxy at {args.slow_rate}/s "
            f"(~{size / rate_bytes:.0f} s)"
        )
        memory = slow_reader(env, slow_target, args.slow_rate, rate_bytes)
        report["slow_reader"] = asdict(memory)
        say(f"slow reader: proxy peak RSS {memory.peak_rss_mib:.1f} MiB")
    report["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


if __name__ == "__main__":
    sys.exit(main())
