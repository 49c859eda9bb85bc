"""A pyftpdlib server in a subprocess, as the FTP backend behind the proxy under test."""

from __future__ import annotations

import os
import selectors
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from tests.support._proc import REPO_ROOT, ManagedProcess, env_with_repo_path

DEFAULT_USER = "demo"
DEFAULT_PASSWORD = "s3cret-test-pw"
READY_TIMEOUT = 10.0
STOP_GRACE = 5.0


class BackendError(RuntimeError):
    """The backend did not start; the message carries its log."""


class PyftpdBackend(ManagedProcess):
    """Start ``tests.support.pyftpd_server`` and know where it listens.

    ``port=0`` (the default) lets the server bind a free port itself and report it,
    so there is no window between choosing a port and binding it.
    """

    name = "pyftpd"
    stop_grace = STOP_GRACE

    def __init__(
        self,
        root: Path,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        host: str | None = None,
        port: int = 0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_required: bool = False,
        implicit: bool = False,
        passive_ports: tuple[int, int] | None = None,
        ipv6: bool = False,
        banner: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.root = Path(root)
        self.user = user
        self.password = password
        self.host = host or ("::1" if ipv6 else "127.0.0.1")
        self.port = port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_required = tls_required
        self.implicit = implicit
        self.passive_ports = passive_ports
        self.banner = banner
        self.extra_args = list(extra_args)
        super().__init__(log_path or self.root.with_name(self.root.name + ".pyftpd.log"))
        self.ready_timeout = ready_timeout

    @property
    def log_path(self) -> Path:
        return self.output_path

    # -- lifecycle -----------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv that starts the server (kept public so tests can log or reuse it)."""
        cmd = [
            sys.executable,
            "-m",
            "tests.support.pyftpd_server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--root",
            str(self.root),
            "--user",
            self.user,
            "--password",
            self.password,
        ]
        if self.tls_cert is not None:
            cmd += ["--tls-cert", str(self.tls_cert)]
            if self.tls_key is not None:
                cmd += ["--tls-key", str(self.tls_key)]
        if self.tls_required:
            cmd.append("--tls-required")
        if self.implicit:
            cmd.append("--implicit")
        if self.passive_ports is not None:
            cmd += ["--passive-ports", f"{self.passive_ports[0]}-{self.passive_ports[1]}"]
        if self.banner is not None:
            cmd += ["--banner", self.banner]
        return cmd + self.extra_args

    def start(self) -> Self:
        """Start the server and block until it has printed READY (bounded)."""
        if self._proc is not None:
            raise RuntimeError("backend already started")
        self.root.mkdir(parents=True, exist_ok=True)
        self._launch(self.command(), cwd=REPO_ROOT, env=env_with_repo_path(), pipe_stdout=True)
        try:
            self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> int:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + self.ready_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(
                        f"pyftpd not READY after {self.ready_timeout}s:\n{self.log_text()}"
                    )
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    proc.wait(timeout=5)
                    raise BackendError(
                        f"pyftpd exited with {proc.returncode} before READY:\n{self.log_text()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").split()
        if len(line) != 2 or line[0] != "READY":
            raise BackendError(f"unexpected first line from pyftpd: {line!r}")
        return int(line[1])

    @property
    def url(self) -> str:
        """``ftp://HOST:PORT`` (``ftps://`` when implicit), IPv6 hosts bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "ftps" if self.implicit else "ftp"
        return f"{scheme}://{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def path(self, name: str) -> Path:
        """A file in the served root (what the backend really stored)."""
        return self.root / name
