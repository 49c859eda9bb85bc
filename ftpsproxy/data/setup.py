"""Data-connection set-up as decisions: what a PASV/EPSV/PORT/EPRT asks for, and how the
backend's side is prepared, without doing any of it.

The client's side: :func:`client_request` turns the command into a refusal (a reply), a
request to listen (passive) or a target to connect to (active, only the client's own
address, RFC 2577).  The backend's side: :class:`BackendDataPlan` says which line to send
(``EPSV``, falling back to ``PASV``; ``EPRT``, falling back to ``PORT``) and what each reply
means.  The session carries the decisions out; these are tested as plain function calls.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ftpsproxy.data.passive import same_host
from ftpsproxy.ftp.addresses import (
    UnsupportedFamily,
    format_eprt_argument,
    format_port_argument,
    parse_eprt_argument,
    parse_epsv_reply,
    parse_pasv_reply,
    parse_port_argument,
)
from ftpsproxy.ftp.errors import FTPSyntaxError
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.replies import Reply

# Replies by which a backend says it does not know EPSV/EPRT (RFC 2428 §3).
_NOT_UNDERSTOOD = frozenset({500, 501, 502, 504, 522})


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the command with this reply; nothing is set up."""

    code: int
    text: str
    bounce: str | None = None  # an active-mode target other than the client: host:port


@dataclass(frozen=True, slots=True)
class Listen:
    """Passive mode: listen on a port of the range for the client; answer 227 or 229."""

    extended: bool


@dataclass(frozen=True, slots=True)
class Connect:
    """Active mode: connect to the client at this address when the transfer starts."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class EpsvAll:
    """``EPSV ALL``: from now on PASV, PORT and EPRT are refused (RFC 2428 §4)."""


ClientRequest = Refuse | Listen | Connect | EpsvAll


def client_request(
    command: Command, *, epsv_all: bool, client_host: str, local_host: str
) -> ClientRequest:
    """What the client's PASV, EPSV, PORT or EPRT asks the proxy to do."""
    if command.verb in ("PASV", "EPSV"):
        return _passive(command, epsv_all=epsv_all, local_host=local_host)
    return _active(command, epsv_all=epsv_all, client_host=client_host)


def _passive(command: Command, *, epsv_all: bool, local_host: str) -> ClientRequest:
    extended = command.verb == "EPSV"
    argument = command.argument.strip().upper()
    if extended and argument == b"ALL":
        return EpsvAll()
    if not extended and epsv_all:
        return Refuse(503, "PASV is not allowed after EPSV ALL.")
    client_v6 = ipaddress.ip_address(local_host).version == 6
    if extended and argument not in (b"", b"1", b"2"):
        return Refuse(522, "Network protocol not supported, use (1,2).")
    if extended and argument and (argument == b"2") != client_v6:
        return Refuse(522, "Network protocol not supported on this connection.")
    if not extended and client_v6:
        # RFC 2428 §3: PASV cannot name an IPv6 address, and the data listener is on
        # the IPv6 address the client used.
        return Refuse(425, "PASV is not available on an IPv6 connection; use EPSV.")
    return Listen(extended)


def _active(command: Command, *, epsv_all: bool, client_host: str) -> ClientRequest:
    if epsv_all:
        return Refuse(503, f"{command.verb} is not allowed after EPSV ALL.")
    try:
        if command.verb == "PORT":
            target = parse_port_argument(command.argument)
        else:
            target = parse_eprt_argument(command.argument)
    except UnsupportedFamily:
        return Refuse(522, "Network protocol not supported, use (1,2).")
    except FTPSyntaxError:
        return Refuse(501, f"Syntax error in {command.verb} argument.")
    # RFC 2577 §3: no bounce attacks. Data goes only to the client itself, never to a
    # privileged port.
    if not same_host(target.host, client_host) or target.port < 1024:
        return Refuse(
            504,
            "Data connections go only to your own address, ports >= 1024.",
            bounce=f"{target.host}:{target.port}",
        )
    return Connect(target.host, target.port)


# -- the backend's side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this line to the backend and hand its reply back to the plan."""

    line: bytes


@dataclass(frozen=True, slots=True)
class UsePort:
    """The backend listens on this port (of its control connection's peer address)."""

    port: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The backend will connect to the proxy's listener (EPRT/PORT accepted)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The backend's side cannot be set up: the client gets 425."""

    why: str
    privileged_port: bool = False  # the backend named a port below 1024


BackendStep = Send | UsePort | Accepted | Failed


class BackendDataPlan:
    """Prepares the backend's side of a data connection; remembers across transfers which
    of EPSV/PASV and EPRT/PORT the backend understands."""

    def __init__(self) -> None:
        self.epsv = True
        self.eprt = True
        self._listening: tuple[str, int] | None = None

    # passive towards the backend (the default)

    def passive(self) -> Send:
        self._listening = None
        return Send(b"EPSV\r\n" if self.epsv else b"PASV\r\n")

    # active towards the backend (backend-data-mode = active): the proxy listens at host:port

    def active(self, host: str, port: int) -> BackendStep:
        self._listening = (host, port)
        return self._announce()

    def _announce(self) -> BackendStep:
        assert self._listening is not None
        host, port = self._listening
        try:
            if self.eprt:
                return Send(b"EPRT " + format_eprt_argument(host, port) + b"\r\n")
            return Send(b"PORT " + format_port_argument(host, port) + b"\r\n")
        except (FTPSyntaxError, ValueError) as error:
            return Failed(f"cannot announce {host}:{port}: {error}")

    def on_reply(self, reply: Reply) -> BackendStep:
        """The backend's final reply to the line last sent: the next step."""
        if self._listening is not None:
            return self._on_active_reply(reply)
        return self._on_passive_reply(reply)

    def _on_passive_reply(self, reply: Reply) -> BackendStep:
        try:
            if self.epsv and reply.code == 229:
                port = parse_epsv_reply(reply.lines[0])
            elif not self.epsv and reply.code == 227:
                port = parse_pasv_reply(reply.lines[0]).port
            elif self.epsv and reply.code in _NOT_UNDERSTOOD:
                self.epsv = False
                return Send(b"PASV\r\n")
            else:
                return Failed(f"backend answered {reply.code}")
        except FTPSyntaxError as error:
            return Failed(str(error))
        if port < 1024:
            # Never a privileged port: the backend's own FTP port, or another service.
            return Failed(f"backend named privileged data port {port}", privileged_port=True)
        return UsePort(port)

    def _on_active_reply(self, reply: Reply) -> BackendStep:
        assert self._listening is not None
        if reply.code // 100 == 2:
            return Accepted()
        if self.eprt and reply.code in _NOT_UNDERSTOOD and ":" not in self._listening[0]:
            self.eprt = False
            return self._announce()
        return Failed(f"backend answered {reply.code}")
