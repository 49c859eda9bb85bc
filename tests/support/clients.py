"""FTP clients for tests: ftplib variants that real servers require, plus curl and lftp."""

from __future__ import annotations

import ftplib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.ci import unavailable

_CHUNK = 1024 * 1024

#: Prepended to every lftp script: fail fast and with a non-zero exit, never retry forever.
LFTP_PREAMBLE = (
    "set net:max-retries 1\n"
    "set net:timeout 20\n"
    "set net:reconnect-interval-base 1\n"
    "set cmd:fail-exit yes\n"
    "set cmd:interactive no\n"
    "set xfer:clobber yes\n"
)


def client_context(
    ca_file: Path | None = None,
    *,
    check_hostname: bool = True,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca_file`` (or nothing but the CA given)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.check_hostname = check_hostname
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    return ctx


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """``FTP_TLS`` that resumes the control connection's TLS session on data connections.

    vsftpd and ProFTPD refuse data connections that do not (``require_ssl_reuse``),
    and stock ftplib never does.
    """

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class ImplicitFTP_TLS(ftplib.FTP_TLS):
    """Implicit FTPS: TLS starts right after TCP connect, before the greeting.

    ftplib only knows explicit AUTH TLS. ``login`` sees the socket is already TLS and
    skips AUTH; callers still send PBSZ/PROT P with ``prot_p()``.
    """

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: tuple[str, int] | None = None,
    ) -> str:
        if host != "":
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if self.timeout is not None and not self.timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        if source_address is not None:
            self.source_address = source_address
        sys.audit("ftplib.connect", self, self.host, self.port)
        raw = socket.create_connection(
            (self.host, self.port), self.timeout, source_address=self.source_address
        )
        self.af = raw.family
        try:
            self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class ImplicitReusingFTP_TLS(ImplicitFTP_TLS, ReusingFTP_TLS):
    """Implicit FTPS that also resumes the TLS session on data connections."""


class PausedDownload(threading.Thread):
    """Reads a download's data connection in a thread, and stops after *pause_at* bytes.

    It waits there until :meth:`resume`, so a test can act (send SIGTERM, say) while the
    transfer is certainly still running, with :attr:`received` bytes delivered and the
    rest not; then it reads to the end, closes the TLS layer and calls *after* (which
    reads the final replies). Any exception is kept in :attr:`error`.
    """

    def __init__(
        self, conn: socket.socket, pause_at: int, after: Callable[[], None] = lambda: None
    ) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.pause_at = pause_at
        self.after = after
        self.received = 0
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        #: Set when *pause_at* bytes have arrived (or the thread failed before).
        self.paused = threading.Event()
        self._go_on = threading.Event()

    def run(self) -> None:
        try:
            while chunk := self.conn.recv(64 * 1024):
                self.digest.update(chunk)
                self.received += len(chunk)
                if not self.paused.is_set() and self.received >= self.pause_at:
                    self.paused.set()
                    if not self._go_on.wait(120):
                        raise TimeoutError("never resumed")
            if isinstance(self.conn, ssl.SSLSocket):
                self.conn = self.conn.unwrap()
            self.conn.close()
            self.after()
        except BaseException as error:
            self.error = error
        finally:
            self.paused.set()

    def wait_paused(self, timeout: float = 30) -> int:
        """Block until the pause; the bytes received by then (fails if the thread did)."""
        assert self.paused.wait(timeout), f"not {self.pause_at} bytes within {timeout} s"
        assert self.error is None, f"the download failed: {self.error!r}"
        return self.received

    def resume(self) -> None:
        self._go_on.set()

    def finish(self, timeout: float = 60) -> None:
        """Resume if paused, wait for the end; re-raises what went wrong in the thread."""
        self.resume()
        self.join(timeout)
        assert not self.is_alive(), f"the download did not end within {timeout} s"
        if self.error is not None:
            raise self.error


class ReplyReader:
    """Reads whole replies from a raw control connection (plain or ``ssl``-wrapped), for
    tests that drive the protocol by hand; each read is bounded by the socket's timeout,
    and a reply by ``MAX_LINES`` lines."""

    MAX_LINES = 10_000

    def __init__(self, stream: socket.socket) -> None:
        self.stream = stream
        self._buffer = b""

    def reply(self) -> str:
        """The final line of the next reply ("" if the peer closed first)."""
        for _ in range(self.MAX_LINES):
            end = self._buffer.find(b"\r\n")
            while end < 0:
                data = self.stream.recv(4096)
                if not data:
                    return ""
                self._buffer += data
                end = self._buffer.find(b"\r\n")
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            if line[3:4] != b"-":
                return line.decode(errors="replace")
        raise AssertionError(f"no final reply line within {self.MAX_LINES} lines")


# -- command-line clients ------------------------------------------------------------


def require_tool(name: str) -> str:
    """Path of ``name``; skip the test without it, but fail under CI=true (:mod:`.ci`)."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"required tool {name!r} not found on PATH")
    return path


def run_tool(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a client without raising on its exit code (tests check ``returncode``)."""
    return subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def run_curl(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``curl -sS ARGS``; never raises on curl's exit code (tests check ``returncode``)."""
    return run_tool([require_tool("curl"), "--silent", "--show-error", *args], timeout)


def run_lftp(script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run an lftp script (after ``LFTP_PREAMBLE``) with ``lftp -f``.

    ``cmd:fail-exit`` makes the first failing command end lftp with a non-zero code.
    """
    lftp = require_tool("lftp")
    with tempfile.TemporaryDirectory(prefix="lftp-") as tmp:
        script_path = Path(tmp) / "script.lftp"
        script_path.write_text(LFTP_PREAMBLE + script.strip() + "\n")
        return run_tool([lftp, "-f", str(script_path)], timeout)


# -- files ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their sha256 hex digest.

    Random content so a proxy that drops, reorders or repeats a block cannot match by luck.
    """
    digest = hashlib.sha256()
    remaining = size
    with open(path, "wb") as f:
        while remaining > 0:
            chunk = os.urandom(min(_CHUNK, remaining))
            f.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
