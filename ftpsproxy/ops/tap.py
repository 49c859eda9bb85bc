"""``twistd ftpsproxy``: command-line options and service creation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from ftpsproxy import __version__
from ftpsproxy.settings.config import Config, build_config, load_toml
from ftpsproxy.settings.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "FTP/FTPS reverse proxy and TLS terminator. Accepts plain FTP, explicit FTPS "
        "(AUTH TLS) and implicit FTPS, relays sessions to one backend FTP server, and "
        "rewrites passive-mode data connections onto a fixed port range. Every option "
        "can also be set in a TOML file (--config), whose keys are the long option "
        "names; command-line options win."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        ["require-tls", None, "Refuse USER/PASS before AUTH TLS and transfers without PROT P."],
        [
            "require-session-reuse",
            None,
            "Refuse TLS data connections that do not resume the control connection's session.",
        ],
        [
            "client-certificate-user-match",
            None,
            "USER must match the client certificate's CN or a subjectAltName, else 530.",
        ],
        ["backend-insecure", None, "Do not verify the backend's certificate (logged)."],
    ]
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "TOML configuration file."],
        [
            "backend",
            "b",
            None,
            "Backend URL: ftp://HOST:PORT (plain), ftpes://HOST:PORT (explicit FTPS), "
            "ftps://HOST:PORT (implicit FTPS, default port 990); IPv6 hosts in brackets.",
        ],
        ["backend-ca", None, None, "CA bundle to verify the backend (default: system store)."],
        ["backend-server-name", None, None, "Name the backend certificate must carry."],
        ["backend-client-certificate", None, None, "PEM client certificate for the backend."],
        ["backend-client-key", None, None, "PEM key for --backend-client-certificate."],
        ["backend-tls-max-version", None, None, "Cap TLS towards the backend: 1.2 or 1.3."],
        [
            "backend-data-protection",
            None,
            None,
            "PROT level towards an FTPS backend: private (default) or clear.",
        ],
        [
            "backend-data-mode",
            None,
            None,
            "Data connections to the backend: passive (default: EPSV, then PASV) or active "
            "(EPRT/PORT to the proxy, for backends that only allow active mode).",
        ],
        ["client-ca", None, None, "CA bundle for client certificates."],
        [
            "client-certificate",
            None,
            None,
            "Client certificates: none (default), optional or required.",
        ],
        ["tls-handshake-timeout", None, None, "Seconds a TLS handshake may take (default 10)."],
        [
            "drain-timeout",
            None,
            None,
            "On SIGTERM, seconds running transfers get to finish (default 30).",
        ],
        [
            "health-interval",
            None,
            None,
            "Seconds between TCP probes of the backend for /readyz (default 5).",
        ],
        ["log-format", None, None, "text (default) or json: one JSON object per line."],
        [
            "data-path",
            None,
            None,
            "splice (default): plain-to-plain transfers move in the kernel (Linux splice), "
            "others through Python; copy: always through Python.",
        ],
        [
            "workers",
            None,
            None,
            "Processes sharing the listening sockets, each with its own slice of "
            "--passive-ports (default 1).",
        ],
        ["xferlog", None, None, "Append a wu-ftpd/ProFTPD xferlog line per file transfer here."],
        ["max-sessions", None, None, "Sessions open at once, in total (default 1000)."],
        ["max-sessions-per-ip", None, None, "Sessions open at once per client IP (default 50)."],
        [
            "max-passive-ports-per-ip",
            None,
            None,
            "Passive ports one client IP may hold at once (from PASV/EPSV until the "
            "transfer ends); beyond it PASV/EPSV get 425. Default 0: a tenth of the "
            "range, at least 2 (of each worker's slice with --workers).",
        ],
        ["login-timeout", None, None, "Seconds from connection to login (default 60)."],
        ["idle-timeout", None, None, "Seconds without a command, outside transfers (default 900)."],
        [
            "data-stall-timeout",
            None,
            None,
            "Seconds a running transfer may move no byte before it is aborted (default 300).",
        ],
        [
            "close-timeout",
            None,
            None,
            "Seconds a closing connection may take to flush and answer TLS close_notify "
            "before it is reset (default 10).",
        ],
        [
            "max-login-failures",
            None,
            None,
            "Failed logins from one IP within --login-lockout seconds that lock it out "
            "(default 5).",
        ],
        [
            "login-lockout",
            None,
            None,
            "Seconds an IP stays locked out (new sessions get 421); also the window "
            "failures are counted over (default 300).",
        ],
        [
            "login-failure-delay",
            None,
            None,
            "Seconds every failed login's 530 is held back, 0 to 60 (default 1).",
        ],
        [
            "backend-reply-timeout",
            None,
            None,
            "Seconds the backend may take to answer a command (default 60).",
        ],
        ["certificate", None, None, "PEM certificate chain for client-facing TLS."],
        ["private-key", None, None, "PEM private key for --certificate."],
        ["tls-minimum-version", None, None, "Lowest TLS version accepted: 1.2 (default) or 1.3."],
        [
            "tls-ciphers",
            None,
            None,
            "OpenSSL cipher string for TLS 1.2 (default: ECDHE with AES-GCM or "
            "ChaCha20-Poly1305 only; TLS 1.3 suites are OpenSSL's).",
        ],
        ["passive-ports", None, None, "Passive data port range MIN-MAX (default 30000-30099)."],
        ["public-address", None, None, "IPv4 address announced in PASV replies."],
        ["passive-timeout", None, None, "Seconds to wait for data connections (default 30)."],
        [
            "backend-connect-timeout",
            None,
            None,
            "Seconds to set a backend session up: connect, TLS, greeting (default 10).",
        ],
        ["metrics", None, None, "Endpoint for /metrics, /healthz, /readyz, e.g. tcp:9102."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-implicit"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint for plain FTP and explicit FTPS (repeatable), e.g. tcp:2121."""
        self["listen"].append(endpoint)

    def opt_listen_implicit(self, endpoint: str) -> None:
        """Endpoint for implicit FTPS (repeatable), e.g. tcp:990."""
        self["listen-implicit"].append(endpoint)

    def opt_version(self) -> None:
        """Print the ftpsproxy version and exit."""
        print(f"ftpsproxy {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        cli: dict[str, Any] = {key: self[key] for key in self if key != "config"}
        for flag in (
            "require-tls",
            "require-session-reuse",
            "client-certificate-user-match",
            "backend-insecure",
        ):
            cli[flag] = True if self[flag] else None
        self._cli = cli
        try:
            self.config = self.read_config()
        except ConfigError as error:
            raise usage.UsageError(str(error)) from error

    def read_config(self) -> Config:
        """The configuration file (read again on every call) merged with the command line."""
        file_values = load_toml(Path(self["config"])) if self["config"] else {}
        return build_config(file_values, self._cli)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from ftpsproxy.ops.service import ProxyService
    from ftpsproxy.ops.supervisor import WorkerSupervisor

    config = options.config
    try:
        if config.workers > 1:
            return WorkerSupervisor(
                config,
                reactor,
                options._cli,
                config_file=options["config"],
                reread_config=options.read_config,
            )
        return ProxyService(config, reactor, reread_config=options.read_config)
    except ConfigError as error:
        raise SystemExit(f"ftpsproxy: {error}") from error
