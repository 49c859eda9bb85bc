"""Backends that expect a PROXY protocol header: a recorder in the test process, and HAProxy.

``HeaderRecorder`` is a ``FakeBackend`` (tests/support/faults.py) whose connections must
start with a PROXY header: it reads exactly the header's bytes (so implicit TLS can start
right after it), parses it with Twisted's own parsers, decodes the v2 TLVs, records it,
then (TLS first for an ``ftps://`` recorder) speaks enough FTP to log a user in.

``HAProxyReceiver`` is a real receiver: Debian's ``haproxy`` with ``accept-proxy`` on its
``bind``, in TCP mode in front of a backend, logging one line per connection to its
stdout with the client and frontend addresses it took from the header, and the v2
``authority`` and ``unique id`` TLVs.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ftpsproxy.net.twisted_internals import InvalidProxyHeader, V1Parser, V2Parser
from tests.support._proc import ManagedProcess
from tests.support.ci import unavailable
from tests.support.faults import FakeBackend, FakeConnection, ftp_server
from tests.support.ports import free_port
from tests.support.waiting import wait_until

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CIPHER = 0x23
HEADER_TIMEOUT = 10.0


def decode_tlvs(data: bytes) -> dict[int, bytes]:
    """TLVs as type -> value; raises ValueError when they do not fill *data* exactly."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        if at + 3 > len(data):
            raise ValueError("truncated TLV")
        kind, length = data[at], struct.unpack("!H", data[at + 1 : at + 3])[0]
        if at + 3 + length > len(data):
            raise ValueError("TLV longer than the header")
        found[kind] = data[at + 3 : at + 3 + length]
        at += 3 + length
    return found


@dataclass
class ReceivedHeader:
    """One connection's header as the backend read it."""

    raw: bytes
    version: int
    source: tuple[str, int] | None  # None: LOCAL / UNKNOWN, no client behind it
    destination: tuple[str, int] | None
    peer: tuple[str, int]  # who really connected (the proxy)
    tlvs: dict[int, bytes] = field(default_factory=dict)
    commands: list[bytes] = field(default_factory=list)

    @property
    def ssl(self) -> tuple[int, int, dict[int, bytes]] | None:
        """PP2_TYPE_SSL as (client bits, verify, sub-TLVs), or None without it."""
        value = self.tlvs.get(PP2_TYPE_SSL)
        if value is None:
            return None
        client, verify = struct.unpack("!BI", value[:5])
        return client, verify, decode_tlvs(value[5:])


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed before the PROXY header ended")
        data += chunk
    return data


def read_header(sock: socket.socket) -> ReceivedHeader:
    """Read one header, not a byte more; parse it with Twisted's V1Parser or V2Parser."""
    sock.settimeout(HEADER_TIMEOUT)
    peer = sock.getpeername()[:2]
    first = _recv_exactly(sock, 1)
    if first == b"\r":  # v2
        fixed = first + _recv_exactly(sock, 15)
        if not fixed.startswith(V2_SIGNATURE):
            raise InvalidProxyHeader()
        raw = fixed + _recv_exactly(sock, struct.unpack("!H", fixed[14:16])[0])
        info, rest = V2Parser().feed(raw)
        family = raw[13]
        addresses = {0x11: 12, 0x21: 36}.get(family, 0) if raw[12] == 0x21 else 0
        tlvs = decode_tlvs(raw[16 + addresses :]) if raw[12] == 0x21 else {}
        version = 2
    else:
        raw = first
        while not raw.endswith(b"\r\n") and len(raw) < 108:
            raw += _recv_exactly(sock, 1)
        version, tlvs = 1, {}
        if raw == b"PROXY UNKNOWN\r\n":  # Twisted's V1Parser wants "UNKNOWN " (a space)
            return ReceivedHeader(raw, 1, None, None, peer)
        info, rest = V1Parser().feed(raw)
    if info is None or rest != b"":
        raise InvalidProxyHeader()
    source = None if info.source is None else (info.source.host, info.source.port)
    destination = None if info.destination is None else (
        info.destination.host, info.destination.port
    )  # fmt: skip
    return ReceivedHeader(raw, version, source, destination, peer, tlvs)


class HeaderRecorder(FakeBackend):
    """A fake FTP backend that requires a PROXY header and records each one it read."""

    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(self._behaviour, host)
        self._tls = tls
        self.headers: list[ReceivedHeader] = []
        self.errors: list[str] = []
        self._recorded = threading.Lock()

    @property
    def url(self) -> str:
        return f"{'ftps' if self._tls else 'ftp'}://{self.host}:{self.port}"

    def _behaviour(self, connection: FakeConnection) -> None:
        try:
            header = read_header(connection.sock)
        except (OSError, InvalidProxyHeader, ValueError) as error:
            with self._recorded:
                self.errors.append(f"{type(error).__name__}: {error}")
            return  # closed: the proxy's set-up fails
        with self._recorded:
            self.headers.append(header)
        if self._tls is not None:
            try:
                connection.sock = self._tls.wrap_socket(connection.sock, server_side=True)
            except OSError as error:
                with self._recorded:
                    self.errors.append(f"TLS: {error}")
                return
        answers = {"PBSZ": b"200 PBSZ=0\r\n", "PROT": b"200 PROT ok\r\n"}
        ftp_server(answers)(connection)
        header.commands = list(connection.received)

    def sessions(self) -> list[ReceivedHeader]:
        """Headers that named a client (not a probe's LOCAL / UNKNOWN)."""
        with self._recorded:
            return [each for each in self.headers if each.source is not None]

    def probes(self) -> list[ReceivedHeader]:
        with self._recorded:
            return [each for each in self.headers if each.source is None]


class HAProxyReceiver(ManagedProcess):
    """``haproxy -db`` with ``bind HOST:PORT accept-proxy`` in front of *backend* (host, port)."""

    name = "haproxy"
    stop_grace = 5.0
    LOG_FORMAT = (
        "conn client=%ci:%cp frontend=%fi:%fp authority=%[fc_pp_authority] "
        "unique_id=%[fc_pp_unique_id]"
    )

    def __init__(self, directory: Path, backend: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(directory / "haproxy.log")
        self.directory = directory
        self.backend = backend
        self.host = host
        self.port = 0

    def config(self) -> str:
        host, port = self.backend
        return (
            "global\n"
            "    log stdout format raw local0 info\n"
            "defaults\n"
            "    mode tcp\n"
            "    log global\n"
            "    timeout connect 5s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "frontend ftp\n"
            f"    bind {self.host}:{self.port} accept-proxy\n"
            f'    log-format "{self.LOG_FORMAT}"\n'
            "    default_backend ftp\n"
            "backend ftp\n"
            f"    server backend {host}:{port}\n"
        )

    def start(self) -> Self:
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if binary is None:
            unavailable("haproxy is not installed (Debian package haproxy; tests/run.sh)")
        self.port = free_port()
        path = self.directory / "haproxy.cfg"
        path.write_text(self.config())
        self._launch([binary, "-db", "-f", str(path)], cwd=self.directory, env={})
        wait_until(lambda: self._listening() or not self.is_running(), 10)
        if not self.is_running():
            raise RuntimeError(f"haproxy exited:\n{self.log_text()}")
        return self

    def _listening(self) -> bool:
        # A v2 LOCAL header: accepted as a connection of no client; haproxy logs it.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(V2_SIGNATURE + b"\x20\x00\x00\x00")
                return True
        except OSError:
            return False

    def lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.startswith("conn ")]


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    return context


def client_address(ftp: Any) -> tuple[str, int]:
    """The (host, port) an ftplib client's control connection comes from."""
    host, port = ftp.sock.getsockname()[:2]
    return str(host), int(port)
