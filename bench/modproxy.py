"""ProFTPD 1.3.8 with mod_proxy as a reverse proxy: the system ftpsproxy is compared with.

The client side is explicit FTPS (``TLSRequired on``, TLS 1.2/1.3, session reuse on data
connections required as mod_tls ships); the backend side is plain FTP or explicit FTPS
(``ProxyTLSEngine on``), capped at TLS 1.2 there: with TLS 1.3 on the backend leg
mod_proxy 0.9 truncates uploads (see /work/shared/INTEROP.md).

ProFTPD's daemon pauses ~0.4 s after each session before it accepts the next, which
would make its session rate meaningless, so when ``systemd-socket-activate`` exists the
proxy runs in inetd mode under it: one ``proftpd`` process per connection, exec'd fresh
(which is how such a deployment behaves). Without it, the daemon is used and its session
rate is flagged as not comparable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from bench.common import HOST, Processes, free_port, tail, wait_for_banner
from tests.support.certs import Pki

MODULE_PATH: Final = Path("/usr/lib/proftpd")


def proftpd_binary() -> str | None:
    return shutil.which("proftpd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def socket_activate_binary() -> str | None:
    return shutil.which("systemd-socket-activate")


def unavailable_reason() -> str | None:
    """Why mod_proxy cannot run here, or None."""
    if os.geteuid() != 0:
        return "ProFTPD needs root"
    if proftpd_binary() is None:
        return "proftpd not installed (apt: proftpd-core)"
    for module in ("mod_proxy.so", "mod_tls.so"):
        if not (MODULE_PATH / module).is_file():
            return f"{MODULE_PATH / module} missing (apt: proftpd-mod-proxy, proftpd-mod-crypto)"
    return None


def version() -> str:
    """``ProFTPD 1.3.8 + mod_proxy/0.9.3``."""
    binary = proftpd_binary()
    proftpd = "ProFTPD"
    if binary is not None:
        done = subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=False)
        text = (done.stdout + done.stderr).decode(errors="replace")
        if match := re.search(r"Version (\S+)", text):
            proftpd = f"ProFTPD {match.group(1)}"
    try:
        found = re.search(rb"mod_proxy/[0-9.]+", (MODULE_PATH / "mod_proxy.so").read_bytes())
    except OSError:
        found = None
    return f"{proftpd} + {found.group().decode()}" if found else proftpd


class ModProxy:
    """One reverse-proxy instance in front of one backend port."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        backend_port: int,
        backend_tls: bool,
        pki: Pki,
        passive: tuple[int, int],
        inetd: bool,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.backend_port = backend_port
        self.backend_tls = backend_tls
        self.pki = pki
        self.passive = passive
        self.inetd = inetd and socket_activate_binary() is not None
        self.port = 0
        self.pid = 0

    @property
    def mode(self) -> str:
        return "inetd (systemd-socket-activate)" if self.inetd else "standalone daemon"

    def config_text(self) -> str:
        w = self.workdir
        lines = [
            f'ServerName "ftpsproxy bench {self.name}"',
            f"ServerType {'inetd' if self.inetd else 'standalone'}",
            "UseIPv6 off",
            f"DefaultAddress {HOST}",
            "SocketBindTight on",
            f"Port {self.port}",
            f"PidFile {w / 'proftpd.pid'}",
            f"ScoreboardFile {w / 'proftpd.scoreboard'}",
            "User nobody",
            "Group nogroup",
            "MaxInstances 3000",
            "DelayEngine off",
            "WtmpLog off",
            "UseReverseDNS off",
            "RequireValidShell off",
            "TimeoutIdle 600",
            "TimeoutNoTransfer 600",
            f"SystemLog {w / 'system.log'}",
            f"ModulePath {MODULE_PATH}",
            # mod_proxy before mod_tls (INTEROP.md: else banners can leak before TLS).
            "LoadModule mod_proxy.c",
            "LoadModule mod_tls.c",
            f"PassivePorts {self.passive[0]} {self.passive[1]}",
            f"MasqueradeAddress {HOST}",
            "ProxyEngine on",
            "ProxyRole reverse",
            f"ProxyTables {w / 'tables'}",
            f"ProxyLog {w / 'proxy.log'}",
            f"ProxyReverseServers ftp://{HOST}:{self.backend_port}",
            "ProxyDataTransferPolicy client",
            f"ProxyTLSEngine {'on' if self.backend_tls else 'off'}",
        ]
        if self.backend_tls:
            lines += [
                "ProxyTLSVerifyServer off",
                f"ProxyTLSCACertificateFile {self.pki.ca_cert}",
                "ProxyTLSProtocol TLSv1.2",
            ]
        lines += [
            "TLSEngine on",
            f"TLSLog {w / 'tls.log'}",
            f"TLSRSACertificateFile {self.pki.server_cert}",
            f"TLSRSACertificateKeyFile {self.pki.server_key}",
            "TLSProtocol TLSv1.2 TLSv1.3",
            "TLSRequired on",
            "TLSVerifyClient off",
            "TLSRenegotiate none",
        ]
        return "\n".join(lines) + "\n"

    def start(self, procs: Processes) -> None:
        binary = proftpd_binary()
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # ProFTPD refuses logs in group/world-writable directories
        (self.workdir / "tables").mkdir(exist_ok=True)
        self.port = free_port()
        config = self.workdir / "proftpd.conf"
        config.write_text(self.config_text())
        config.chmod(0o600)
        log = self.workdir / "stdio.log"
        if self.inetd:
            activate = socket_activate_binary()
            assert activate is not None
            argv = [activate, "--inetd", "-a", "-l", f"{HOST}:{self.port}"]
            argv += [binary, "-c", str(config)]
        else:
            argv = [binary, "-n", "-q", "-c", str(config)]
        proc = procs.start(self.name, argv, log=log, cwd=self.workdir)
        self.pid = proc.pid
        wait_for_banner(self.port, lambda: proc.poll() is None, log)

    def log_tail(self) -> str:
        return tail(self.workdir / "system.log") + "\n" + tail(self.workdir / "proxy.log")
