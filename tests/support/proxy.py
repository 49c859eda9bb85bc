"""The proxy under test as a real ``twistd`` process, as an operator would run it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

from tests.support._proc import ManagedProcess, env_with_repo_path
from tests.support.waiting import wait_until

LISTEN_TIMEOUT = 15.0
STOP_GRACE = 10.0
#: twistd re-raises the signal it stopped on, so a clean SIGTERM shutdown exits with -15.
CLEAN_EXIT_CODES = (0, -signal.SIGTERM)
_TCP_LISTEN = "0A"


class ProxyError(RuntimeError):
    """The proxy died or did not come up; the message carries its log."""

    def __init__(self, message: str, proxy: ProxyProcess) -> None:
        super().__init__(message)
        #: The process that failed (``start_proxy`` marks one that lost a port race).
        self.proxy = proxy


def twistd_command() -> list[str]:
    """``twistd`` from the same environment as this interpreter.

    Falls back to running twistd's entry point through this interpreter when the
    script is not installed next to it.
    """
    script = Path(sys.executable).parent / "twistd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _listening_inodes() -> dict[int, set[str]] | None:
    """Map port -> inodes of TCP sockets in LISTEN state, or None without /proc."""
    result: dict[int, set[str]] = {}
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            result.setdefault(port, set()).add(fields[9])
    return result if found_table else None


def _tcp_connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process *pid* holds open (empty if it is gone)."""
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{name}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def process_alive(pid: int) -> bool:
    """Whether *pid* exists and is not a zombie (an orphan's zombie may wait for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ProxyProcess(ManagedProcess):
    """``twistd -n ftpsproxy ARGS`` in ``workdir``, with its output in ``workdir/proxy.log``.

    PYTHONPATH starts with the repository root so twistd finds the plugin in the
    checkout's ``twisted/plugins`` without installing the project.
    """

    name = "proxy"
    stop_grace = STOP_GRACE

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        plugin: str = "ftpsproxy",
    ) -> None:
        self.args = list(args)
        self.workdir = Path(workdir)
        self.extra_env = dict(env or {})
        self.plugin = plugin
        super().__init__(self.workdir / "proxy.log")

    @property
    def log_path(self) -> Path:
        return self.output_path

    def command(self) -> list[str]:
        return [
            *twistd_command(),
            "-n",
            "--pidfile=",
            "--logfile=-",
            self.plugin,
            *self.args,
        ]

    def start(self) -> Self:
        """Start twistd; does not wait (see ``wait_listening``)."""
        if self._proc is not None:
            raise RuntimeError("proxy already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._launch(self.command(), cwd=self.workdir, env=env_with_repo_path(self.extra_env))
        return self

    # -- waiting -------------------------------------------------------------------

    def _error(self, what: str) -> ProxyError:
        return ProxyError(
            f"{what}\ncommand: {self.command()}\n--- proxy log ---\n{self.log_text()}", self
        )

    def _check_alive(self, what: str) -> None:
        proc = self._require_proc()
        if proc.poll() is not None:
            raise self._error(f"proxy exited with {proc.returncode} {what}")

    def is_listening(self, port: int, host: str = "127.0.0.1") -> bool:
        """Whether *this* process has a listening socket on ``port``.

        Reads /proc instead of connecting, so waiting does not open a client session
        (which the proxy would log, count and forward to its backend).
        """
        table = _listening_inodes()
        if table is None:
            return _tcp_connects(host, port)
        inodes = table.get(port)
        if not inodes:
            return False
        return bool(inodes & self.socket_inodes())

    def handles_sigterm(self) -> bool:
        """Whether the process has a SIGTERM handler installed (from /proc/PID/status SigCgt).

        twistd listens before ``reactor.run()`` installs its signal handlers; a SIGTERM in
        that window kills it outright (exit -15) instead of shutting down cleanly.
        """
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return False
        for line in status.splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    def wait_listening(
        self,
        ports: Iterable[int],
        host: str = "127.0.0.1",
        timeout: float = LISTEN_TIMEOUT,
        *,
        running: bool = True,
    ) -> None:
        """Block until the proxy listens on every port; raise with its log if it died.

        With ``running`` it also waits for the reactor to run (its SIGTERM handler is
        installed), so a following ``stop()`` is a clean shutdown.
        """
        pending = list(ports)

        def ready() -> bool:
            nonlocal pending
            self._check_alive("while waiting for it to listen")
            pending = [p for p in pending if not self.is_listening(p, host)]
            return not pending and (not running or self.handles_sigterm())

        def not_ready() -> ProxyError:
            what = f"listening on {pending}" if pending else "handling SIGTERM"
            return self._error(f"proxy not {what} after {timeout}s")

        wait_until(ready, timeout, error=not_ready)

    def wait_log(self, pattern: str, timeout: float = LISTEN_TIMEOUT) -> re.Match[str]:
        """Block until the log matches the regex ``pattern``; raise if the proxy died."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def logged() -> bool:
            match = regex.search(self.log_text())
            if match:
                found.append(match)
                return True
            self._check_alive(f"while waiting for log /{pattern}/")
            return False

        wait_until(
            logged,
            timeout,
            error=lambda: self._error(f"no /{pattern}/ in proxy log after {timeout}s"),
        )
        return found[0]

    # -- facts ---------------------------------------------------------------------

    def has_unhandled_errors(self) -> bool:
        """Whether the log shows a traceback or an unhandled error (a port that cannot
        be bound is one line, not a traceback)."""
        log = self.log_text()
        return "Traceback" in log or "Unhandled Error" in log

    def fd_count(self) -> int:
        """Open file descriptors of the proxy (leak checks)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def socket_inodes(self) -> set[str]:
        return socket_inodes(self.pid)

    def child_pids(self) -> list[int]:
        """PIDs of the proxy's child processes (its workers with ``--workers N``)."""
        children: list[int] = []
        with contextlib.suppress(FileNotFoundError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{self.pid}/task/{task}/children").read_text()
                    children += [int(pid) for pid in text.split()]
        return children

    def rss_bytes(self) -> int:
        """Resident set size from /proc/PID/status (memory-growth checks)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise ValueError(f"unexpected VmRSS unit {unit!r}")
                return int(value) * 1024
        raise ValueError("no VmRSS in /proc status")

    def tcp_connections(self) -> list[tuple[int, int, str]]:
        """The proxy's TCP sockets that are not listening: (local port, remote port, state).

        ``state`` is the kernel's hex code from /proc/net/tcp (``01`` ESTABLISHED, ``08``
        CLOSE_WAIT, …); empty when the proxy holds no connection at all.
        """
        mine = self.socket_inodes()
        found: list[tuple[int, int, str]] = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 10 or fields[3] == _TCP_LISTEN or fields[9] not in mine:
                    continue
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                found.append((local, remote, fields[3]))
        return found
