"""What every part of the benchmark shares: constants, errors, our child processes, /proc.

Only processes started here are ever signalled, by PID (with their start time checked
before a late SIGKILL, so a recycled PID is never hit); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO: Final = BENCH_DIR.parent
HOST: Final = "127.0.0.1"
MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT: Final = 20.0  # seconds for a server or a proxy to come up
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL
_MAX_DESCENDANTS: Final = 5000


class BenchError(Exception):
    """A failure that ends the benchmark with a one-line message."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"signal {signum}")


# -- /proc ----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0]); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """Start time of a live (not zombie) process, to recognise it; None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat_fields(int(entry.name))
                if fields is not None:
                    parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo and len(found) < _MAX_DESCENDANTS:
        for child in parents.get(todo.pop(), []):
            started = start_time(child)
            if started is not None:
                found.append((child, started))
                todo.append(child)
    return found


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (a proxy's worker processes, a server's sessions)."""
    return [pid, *(child for child, _ in descendants(pid))]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    return sum(proc_cpu_seconds(pid) for pid in pids)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


# -- our children -----------------------------------------------------------------------------


@dataclass
class Processes:
    """The subprocesses this run started; stopped by PID (with their descendants), never by name."""

    _running: dict[int, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    _stoppers: list[Callable[[], object]] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as log_file:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file,
                env=env,
                cwd=cwd,
                # Own session: a terminal's Ctrl-C reaches only us; we stop the children.
                start_new_session=True,
            )
        self._running[proc.pid] = (name, proc)
        return proc

    def on_stop_all(self, stopper: Callable[[], object]) -> None:
        """Also call ``stopper`` (a launcher's own ``stop``) when everything is stopped."""
        self._stoppers.append(stopper)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM by PID, SIGKILL after a grace period; then the same for its descendants."""
        self._running.pop(proc.pid, None)
        below = descendants(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        kill_leftovers(below)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._running.values())):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.stop(proc)
        for stopper in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                stopper()
        self._stoppers.clear()


def kill_leftovers(processes: Sequence[tuple[int, str]]) -> None:
    """SIGTERM then SIGKILL processes that are still the ones recorded (PID and start time)."""
    for pid, started in processes:
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for pid, started in processes:
        while start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- network ----------------------------------------------------------------------------------


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


def wait_for_banner(port: int, alive: Callable[[], bool], log: Path) -> None:
    """Wait (bounded) until something on ``port`` answers a connection with a 220 greeting."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for _ in range(400):
        if not alive() or time.monotonic() > deadline:
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
        time.sleep(0.05)
    raise BenchError(f"nothing greeted on port {port} (see {log}):\n{tail(log)}")


# -- files ------------------------------------------------------------------------------------


def make_payload(path: Path, size: int) -> str:
    """Write ``size`` incompressible bytes (AES-CTR keystream) and return their SHA-256."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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


def parse_size(text: str) -> int:
    """``1G``, ``64M``, ``512K`` or a plain number of MiB -> bytes (powers of 1024)."""
    units = {"k": 1024, "m": MIB, "g": GIB}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(float(value) * MIB)


def parse_rate(rate: str) -> float:
    """curl's --limit-rate syntax: bytes per second with an optional K/M/G (powers of 1024)."""
    units = {"k": 1024, "m": MIB, "g": GIB}
    text = rate.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


# -- configurations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way of reaching the backend's files: directly, or through one of the proxies."""

    key: str
    label: str
    port: int
    tls: bool  # the client speaks explicit FTPS (AUTH TLS, PROT P)
    kind: str  # "direct", "mod_proxy" or "ftpsproxy"
    #: Root PID of the proxy's process tree (CPU and RSS are summed over it); None: direct.
    proxy_pid: int | None = None
    #: (column, key of the configuration this one is compared with), e.g. ("direct", ...).
    baselines: tuple[tuple[str, str], ...] = ()
