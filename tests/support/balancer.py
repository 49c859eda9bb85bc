"""A stand-in for an L4 balancer: connects from its own loopback address, sends a PROXY
protocol header (built here from the spec, not with the proxy's parser), then lets a
client speak FTP or FTPS through the same socket.

127.0.0.0/8 is all loopback on Linux, so the "balancer" binds 127.0.0.2 and the header
can claim any client address (127.0.0.7, say).
"""

from __future__ import annotations

import ftplib
import ipaddress
import socket
import ssl
import struct

BALANCER = "127.0.0.2"  # the address the tests' proxies trust
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # proxy-protocol.txt, section 2.2


def v1_header(
    source: str, destination: str = "127.0.0.1", sport: int = 40000, dport: int = 21
) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {sport} {dport}\r\n".encode()


def v2_header(
    source: str, destination: str = "127.0.0.1", sport: int = 40000, dport: int = 21
) -> bytes:
    """A v2 PROXY command for a TCP connection (IPv4 or IPv6)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21  # AF_INET or AF_INET6, STREAM
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def v2_local() -> bytes:
    """A v2 LOCAL command: what HAProxy's health checks send (no addresses)."""
    return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def connect(
    port: int, header: bytes, *, source: str = BALANCER, timeout: float = 10
) -> socket.socket:
    """A connection to the proxy from *source* that starts with *header*."""
    sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    if header:
        sock.sendall(header)
    return sock


def closed_without_reply(sock: socket.socket) -> bool:
    """Whether the peer ended the connection (FIN or reset) without sending a byte."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


class BalancedFTP(ftplib.FTP):
    """ftplib over a connection that has already sent its PROXY header.

    Passive data connections go out from ``data_source`` (the client's own address, as
    when the balancer forwards only control ports and the client reaches the passive
    ports directly), each first sending ``data_header`` if set (a balancer that forwards
    passive ports with a header too).
    """

    def __init__(self, sock: socket.socket, *, data_source: str, data_header: bytes = b"") -> None:
        super().__init__(timeout=10)
        self.data_source = data_source
        self.data_header = data_header
        self.attach(sock)

    def attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.af = sock.family
        self.host = "127.0.0.1"
        self.file = sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        host, port = self.makepasv()
        conn = socket.create_connection((host, port), 10, source_address=(self.data_source, 0))
        try:
            if self.data_header:
                conn.sendall(self.data_header)
            if rest is not None:
                self.sendcmd(f"REST {rest}")
            resp = self.sendcmd(cmd)
            if resp[0] == "2":
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)
            conn = self.wrap_data(conn)  # TLS after 150, as ftplib does
        except BaseException:
            conn.close()
            raise
        return conn, None

    def wrap_data(self, conn: socket.socket) -> socket.socket:
        return conn


class BalancedFTPS(BalancedFTP, ftplib.FTP_TLS):
    """FTPS behind the balancer: explicit (``login`` sends AUTH TLS), or *implicit*: TLS
    starts after the header, before the greeting."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        implicit: bool,
        data_source: str,
        data_header: bytes = b"",
    ) -> None:
        ftplib.FTP_TLS.__init__(self, context=context, timeout=10)
        self.data_source = data_source
        self.data_header = data_header
        self.attach(context.wrap_socket(sock, server_hostname="localhost") if implicit else sock)

    def wrap_data(self, conn: socket.socket) -> socket.socket:
        if self._prot_p:  # type: ignore[attr-defined]
            return self.context.wrap_socket(conn, server_hostname="localhost")
        return conn
