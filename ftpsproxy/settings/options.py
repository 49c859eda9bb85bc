"""The option table: every setting declared once, as a field of :class:`Config`.

A field's declaration carries its type, its default, its kind (how the TOML file
and the command line spell it), its help text and whether SIGHUP may change it
in a running proxy.  The twistd options (``ftpsproxy.ops.tap``), the TOML reader
and the reload rules (``ftpsproxy.settings.config``) are all derived from it;
``tests/test_options.py`` holds the README and the example file to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from ftpsproxy.settings.backends import SINGLE_BACKEND_NAME, Backend, Policy
from ftpsproxy.settings.kinds import (
    BACKEND_URL,
    COUNT,
    COUNT_OR_ZERO,
    DELAY,
    ENDPOINT,
    ENDPOINTS,
    FLAG,
    HTTP_URL,
    INSTANCE,
    IPV4,
    NAMES,
    NETWORKS,
    PATH,
    PORT_RANGE,
    PREFIX_LENGTH,
    SECONDS,
    TABLES,
    TEXT,
    Kind,
    choice,
)
from ftpsproxy.settings.values import (
    BackendAddress,
    BackendDataMode,
    ClientCertificates,
    DataPath,
    DataProtection,
    InstanceSlice,
    LogFormat,
    LookupFailure,
    PortRange,
    ProxyProtocolOut,
    TLSVersion,
    default_share,
)

T = TypeVar("T")
_OPTION = "ftpsproxy.option"  # the field metadata key


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and the TOML file know it."""

    name: str  # the long option, and the key in the file
    kind: Kind[Any]
    default: Any  # None: unset (or, for ``backend``, required)
    help: str
    reloadable: bool = False  # SIGHUP applies a new value to new sessions and commands
    short: str | None = None
    in_file: bool = True  # False: command line only

    @property
    def field(self) -> str:
        """The name of the :class:`Config` field."""
        return self.name.replace("-", "_")

    @property
    def help_text(self) -> str:
        """The help text with the choices and the default from the table."""
        notes: list[str] = []
        if self.kind.choices:
            *others, last = self.kind.choices
            notes.append(f"{', '.join(others)} or {last}")
        if self.default is not None and not self.kind.flag and self.default != ():
            notes.append(f"default: {self.kind.show(self.default)}")
        return f"{self.help} ({'; '.join(notes)})." if notes else f"{self.help}."


@dataclass(frozen=True, slots=True)
class _Declared:
    """What a field's declaration says beyond its name, type and default (field metadata)."""

    kind: Kind[Any]
    help: str
    reloadable: bool
    short: str | None


@overload
def option(
    kind: Kind[T], default: T, help: str, *, reloadable: bool = ..., short: str | None = ...
) -> T: ...
@overload
def option(
    kind: Kind[T], default: None, help: str, *, reloadable: bool = ..., short: str | None = ...
) -> T | None: ...
def option(
    kind: Kind[T],
    default: T | None,
    help: str,
    *,
    reloadable: bool = False,
    short: str | None = None,
) -> T | None:
    """A :class:`Config` field that is an option: its default and all the table says of it."""
    declared = _Declared(kind, help, reloadable, short)
    return field(default=default, metadata={_OPTION: declared})


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """What a proxy process runs with, frozen and validated; one field per option."""

    # -- listeners and client-facing TLS
    listen: tuple[str, ...] = option(
        ENDPOINTS,
        (),
        "Endpoint for plain FTP and explicit FTPS (repeatable), e.g. tcp:2121; "
        "haproxy:tcp:2121 expects a PROXY header there (see --proxy-protocol)",
    )
    listen_implicit: tuple[str, ...] = option(
        ENDPOINTS, (), "Endpoint for implicit FTPS (repeatable), e.g. tcp:990"
    )
    proxy_protocol: bool = option(
        FLAG,
        False,
        "Control listeners (plain and implicit) require a PROXY protocol v1/v2 header from "
        "--proxy-protocol-from before anything else, and take the client's address from it: "
        "behind an L4 balancer (HAProxy send-proxy, a cloud NLB) every client would "
        "otherwise have the balancer's address (limits, lockout, logs, data checks); "
        "for one listener only, prefix its endpoint with haproxy:",
    )
    proxy_protocol_data: bool = option(
        FLAG,
        False,
        "Passive data listeners require the PROXY header too (a balancer that forwards the "
        "passive ports with send-proxy-v2) for sessions that came with a header, so the "
        "data connection's source check compares the real client addresses; without it a "
        "header on a data connection is data",
    )
    proxy_protocol_from: tuple[str, ...] = option(
        NETWORKS,
        (),
        "Network (CIDR) of the balancers allowed to send PROXY headers (repeatable; "
        "required with --proxy-protocol or --proxy-protocol-data): a header claims any "
        "client address, so only these may send one; connections from elsewhere are closed",
        reloadable=True,
    )
    public_address_from_proxy_header: bool = option(
        FLAG,
        False,
        "Announce in 227 the IPv4 address the client connected to, from the PROXY header "
        "(balancers with several public addresses), instead of --public-address",
        reloadable=True,
    )
    certificate: Path | None = option(
        PATH, None, "PEM certificate chain for client-facing TLS", reloadable=True
    )
    private_key: Path | None = option(
        PATH, None, "PEM private key for --certificate", reloadable=True
    )
    tls_minimum_version: TLSVersion = option(
        choice(TLSVersion), TLSVersion.V1_2, "Lowest TLS version accepted", reloadable=True
    )
    tls_ciphers: str | None = option(
        TEXT,
        None,
        "OpenSSL cipher string for TLS 1.2 (default: ECDHE with AES-GCM or "
        "ChaCha20-Poly1305 only; TLS 1.3 suites are OpenSSL's)",
        reloadable=True,
    )
    require_tls: bool = option(
        FLAG,
        False,
        "Refuse USER/PASS before AUTH TLS and transfers without PROT P",
        reloadable=True,
    )
    require_session_reuse: bool = option(
        FLAG,
        False,
        "Refuse TLS data connections that do not resume the control connection's session",
        reloadable=True,
    )
    client_ca: Path | None = option(
        PATH, None, "CA bundle for client certificates", reloadable=True
    )
    client_certificate: ClientCertificates = option(
        choice(ClientCertificates),
        ClientCertificates.NONE,
        "Client certificates; with optional, a presented one must still be valid",
        reloadable=True,
    )
    client_certificate_user_match: bool = option(
        FLAG,
        False,
        "USER must match the client certificate's CN or a subjectAltName, else 530",
        reloadable=True,
    )
    # -- the backend: one (--backend) or a pool (backends, in the file); one is required
    backend: BackendAddress | None = option(
        BACKEND_URL,
        None,
        "Backend URL: ftp://HOST:PORT (plain), ftpes://HOST:PORT (explicit FTPS), "
        "ftps://HOST:PORT (implicit FTPS, default port 990); IPv6 hosts in brackets",
        short="b",
    )
    backends: tuple[Backend, ...] = option(
        TABLES,
        (),
        "A pool of backends instead of --backend, as [[backends]] tables in the file: "
        "name, url, weight, max-sessions, state (active or drain) and the TLS keys ca, "
        "server-name, insecure, client-certificate, client-key, tls-max-version, "
        "data-protection, and proxy-protocol (default: the backend-* options); SIGHUP "
        "applies a changed list to new sessions",
        reloadable=True,
    )
    balance: Policy = option(
        choice(Policy),
        Policy.ROUND_ROBIN,
        "How a pool's backend is chosen at USER; SIGHUP applies a change to new sessions",
        reloadable=True,
    )
    # -- routing by user: a map file, an HTTP lookup, a client's own choice
    user_map: Path | None = option(
        PATH,
        None,
        "TOML file mapping user names and glob patterns to backends, optionally rewriting "
        "the name the backend gets; re-read on SIGHUP and when it changes (a broken file "
        "keeps the previous map). A user it does not map gets 530 and no backend is contacted",
        reloadable=True,
    )
    user_map_default: str | None = option(
        TEXT,
        None,
        "Backend for users that neither the map nor the lookup maps (instead of 530)",
        reloadable=True,
    )
    user_lookup: str | None = option(
        HTTP_URL,
        None,
        "HTTP(S) URL asked for users the map does not have: {user} is replaced by the "
        "URL-encoded name (else ?user= is appended); 200 with JSON "
        '{"backend": NAME} or {"backends": [...]} and optionally "user": NAME routes, '
        "404 means no backend for this user",
        reloadable=True,
    )
    user_lookup_timeout: float = option(
        SECONDS,
        2.0,
        "Seconds the user lookup may take before it counts as failed",
        reloadable=True,
    )
    user_lookup_ttl: float = option(
        SECONDS, 60.0, "Seconds a user lookup's answer is kept", reloadable=True
    )
    user_lookup_negative_ttl: float = option(
        SECONDS, 10.0, "Seconds a user lookup's 404 is kept", reloadable=True
    )
    user_lookup_failure: LookupFailure = option(
        choice(LookupFailure),
        LookupFailure.CLOSED,
        "While the user lookup fails (unreachable, timeout, an error status or a bad "
        "answer): closed answers 421; policy balances over every backend by --balance",
        reloadable=True,
    )
    user_selects_backend: tuple[str, ...] = option(
        NAMES,
        (),
        "Backends a client may choose by logging in as USER@BACKEND (repeatable; the "
        "suffix is stripped before USER goes to the backend); off when none is given",
        reloadable=True,
    )
    backend_ca: Path | None = option(
        PATH, None, "CA bundle to verify the backend (default: system store)"
    )
    backend_server_name: str | None = option(TEXT, None, "Name the backend certificate must carry")
    backend_insecure: bool = option(FLAG, False, "Do not verify the backend's certificate (logged)")
    backend_client_certificate: Path | None = option(
        PATH, None, "PEM client certificate for the backend"
    )
    backend_client_key: Path | None = option(PATH, None, "PEM key for --backend-client-certificate")
    backend_tls_max_version: TLSVersion | None = option(
        choice(TLSVersion), None, "Cap TLS towards the backend"
    )
    backend_data_protection: DataProtection = option(
        choice(DataProtection), DataProtection.PRIVATE, "PROT level towards an FTPS backend"
    )
    backend_proxy_protocol: ProxyProtocolOut = option(
        choice(ProxyProtocolOut),
        ProxyProtocolOut.OFF,
        "Start each backend control connection with a PROXY protocol header naming the "
        "client's address (the backend must expect it: ProFTPD mod_proxy_protocol, HAProxy "
        "accept-proxy); v2 also carries the client's TLS version, cipher, SNI name and the "
        "session id; probes send a LOCAL (v1: UNKNOWN) header",
    )
    backend_data_mode: BackendDataMode = option(
        choice(BackendDataMode),
        BackendDataMode.PASSIVE,
        "Who opens data connections to the backend: passive, the proxy (EPSV, then PASV); "
        "active, the backend (EPRT/PORT to the proxy, for backends that only allow it)",
    )
    backend_connect_timeout: float = option(
        SECONDS, 10.0, "Seconds to set a backend session up: connect, TLS, greeting"
    )
    backend_reply_timeout: float = option(
        SECONDS, 60.0, "Seconds the backend may take to answer a command", reloadable=True
    )
    # -- passive data connections
    passive_ports: PortRange = option(
        PORT_RANGE, PortRange(30000, 30099), "Passive data port range MIN-MAX"
    )
    instance: InstanceSlice | None = option(
        INSTANCE,
        None,
        "This instance's share of --passive-ports when several instances sit behind one "
        "balancer: slice INDEX of COUNT (from 0), split as the workers split it, so each "
        "instance owns ports no other uses",
    )
    public_address: str | None = option(
        IPV4, None, "IPv4 address announced in PASV replies", reloadable=True
    )
    passive_timeout: float = option(
        SECONDS, 30.0, "Seconds to wait for data connections", reloadable=True
    )
    max_passive_ports_per_ip: int = option(
        COUNT_OR_ZERO,
        0,
        "Passive ports one client IP may hold at once (from PASV/EPSV until the transfer "
        "ends); beyond it PASV/EPSV get 425. 0: a tenth of the range, at least 2 (of each "
        "worker's slice with --workers)",
        reloadable=True,
    )
    # -- limits and timeouts
    tls_handshake_timeout: float = option(
        SECONDS,
        10.0,
        "Seconds a TLS handshake, or a PROXY protocol header, may take",
        reloadable=True,
    )
    max_sessions: int = option(COUNT, 1000, "Sessions open at once, in total", reloadable=True)
    max_sessions_per_ip: int = option(
        COUNT, 50, "Sessions open at once per client IP", reloadable=True
    )
    ipv6_prefix_length: int = option(
        PREFIX_LENGTH,
        64,
        "The per-IP limits and the login lockout count an IPv6 client by its network of "
        "this many bits (an IPv6 host usually has a whole /64); 128: each address",
        reloadable=True,
    )
    login_timeout: float = option(
        SECONDS, 60.0, "Seconds from connection to login", reloadable=True
    )
    idle_timeout: float = option(
        SECONDS, 900.0, "Seconds without a command, outside transfers", reloadable=True
    )
    drain_timeout: float = option(
        SECONDS,
        30.0,
        "On SIGTERM or SIGINT, seconds running transfers get to finish",
        reloadable=True,
    )
    data_stall_timeout: float = option(
        SECONDS,
        300.0,
        "Seconds a running transfer may move no byte before it is aborted",
        reloadable=True,
    )
    close_timeout: float = option(
        SECONDS,
        10.0,
        "Seconds a closing connection may take to flush and answer TLS close_notify "
        "before it is reset",
        reloadable=True,
    )
    # -- failed logins
    max_login_failures: int = option(
        COUNT,
        5,
        "Failed logins from one IP within --login-lockout seconds that lock it out",
        reloadable=True,
    )
    login_lockout: float = option(
        SECONDS,
        300.0,
        "Seconds an IP stays locked out (new sessions get 421); also the window failures "
        "are counted over",
        reloadable=True,
    )
    login_failure_delay: float = option(
        DELAY, 1.0, "Seconds every failed login's 530 is held back, 0 to 60", reloadable=True
    )
    # -- the process, observability
    data_path: DataPath = option(
        choice(DataPath),
        DataPath.SPLICE,
        "splice: plain-to-plain transfers move in the kernel (Linux splice), others through "
        "Python; copy: always through Python",
    )
    workers: int = option(
        COUNT,
        1,
        "Processes sharing the listening sockets, each with its own slice of --passive-ports",
    )
    metrics: str | None = option(
        ENDPOINT, None, "Endpoint for /metrics, /healthz, /readyz, e.g. tcp:9102"
    )
    health_interval: float = option(
        SECONDS, 5.0, "Seconds between backend probes (connect, greeting, TLS) for /readyz"
    )
    health_rise: int = option(
        COUNT, 2, "Good probes in a row that bring a backend that was down back into use"
    )
    health_fall: int = option(
        COUNT, 3, "Failed probes or session set-ups in a row that take a backend out of use"
    )
    log_format: LogFormat = option(
        choice(LogFormat), LogFormat.TEXT, "Log lines as text, or json: one JSON object per line"
    )
    xferlog: Path | None = option(
        PATH, None, "Append a wu-ftpd/ProFTPD xferlog line per file transfer here"
    )

    @property
    def tls_enabled(self) -> bool:
        return self.certificate is not None

    @property
    def pool(self) -> tuple[Backend, ...]:
        """Every backend: the ``backends`` tables, or the one ``--backend`` names."""
        if self.backends:
            return self.backends
        assert self.backend is not None  # build_config requires one of them
        return (
            Backend(
                name=SINGLE_BACKEND_NAME,
                address=self.backend,
                ca=self.backend_ca,
                server_name=self.backend_server_name,
                insecure=self.backend_insecure,
                client_certificate=self.backend_client_certificate,
                client_key=self.backend_client_key,
                tls_max_version=self.backend_tls_max_version,
                data_protection=self.backend_data_protection,
                proxy_protocol=self.backend_proxy_protocol,
            ),
        )

    @property
    def passive_share(self) -> int:
        """Passive ports one client address may hold at once (of this process's range)."""
        return self.max_passive_ports_per_ip or default_share(self.passive_ports.size)


def _declared(config_field: dataclasses.Field[Any]) -> Option:
    declared: _Declared = config_field.metadata[_OPTION]
    default = config_field.default
    return Option(
        name=config_field.name.replace("_", "-"),
        kind=declared.kind,
        default=None if default is dataclasses.MISSING else default,
        help=declared.help,
        reloadable=declared.reloadable,
        short=declared.short,
    )


#: ``--config``: the file the other options may come from.
CONFIG_FILE = Option("config", PATH, None, "TOML configuration file", short="c", in_file=False)
#: Every option, ``--config`` first, then the settings in :class:`Config`'s order.
OPTIONS: tuple[Option, ...] = (
    CONFIG_FILE,
    *(_declared(config_field) for config_field in dataclasses.fields(Config)),
)
#: The options a TOML file may set, by key.
FILE_OPTIONS: dict[str, Option] = {each.name: each for each in OPTIONS if each.in_file}
#: The :class:`Config` fields SIGHUP may change in a running proxy.
RELOADABLE: frozenset[str] = frozenset(each.field for each in OPTIONS if each.reloadable)
_BY_FIELD: dict[str, Option] = {each.field: each for each in OPTIONS}


def as_written(config_field: str, value: Any) -> tuple[str, str]:
    """The option's name and *value* as an operator writes them (``passive-ports``,
    ``45100-45139``), for log lines about settings."""
    option = _BY_FIELD[config_field]
    if value is None:
        return option.name, "(unset)"
    if isinstance(value, float):
        return option.name, f"{value:g}"
    if isinstance(value, tuple):
        return option.name, ", ".join(option.kind.show(item) for item in value) or "(none)"
    return option.name, option.kind.show(value)
