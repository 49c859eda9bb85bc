"""The seams of a session: what it needs from the client's control connection (the
backend's, :class:`BackendLink`, is declared beside its implementation), and what its
parts (login, local answers, data set-up, transfers) need from the session.

The session never touches a Twisted protocol's attributes beyond these, so tests can drive
it with stand-ins and the backend side can become a pool's connection later.
"""

from __future__ import annotations

from typing import Protocol

from ftpsproxy.control.backend import BackendLink, ReplyHandler
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.replies import Reply
from ftpsproxy.net.proxy_header_out import ClientFacts


class ClientLink(Protocol):
    """What the session needs from the client-facing control connection."""

    peer_host: str
    # What the per-address limits and the lockout count it by: its IPv4 address or its
    # IPv6 network (ftpsproxy.net.client_address), fixed when it connected.
    counted_as: str
    local_host: str
    proxied_destination: str | None  # where the client connected to, from a PROXY header
    tls_active: bool
    certificate_names: list[str] | None  # None: no client certificate presented

    def facts(self, unique_id: str) -> ClientFacts:
        """The client as a backend's PROXY header tells it, TLS as it is now."""

    def send(self, data: bytes) -> None: ...

    def start_tls(self) -> None: ...

    def close(self) -> None: ...


class SessionCore(Protocol):
    """What a session's parts may ask of the session."""

    id: int

    def send(self, reply: Reply) -> None: ...

    def reply(self, code: int, text: str) -> None:
        """Send a reply of the proxy's own."""

    def close(self, code: int, text: str) -> None:
        """End the session with this reply."""

    def request(self, line: bytes, handler: ReplyHandler) -> None:
        """Send *line* to the backend; the command queue waits until :meth:`done`."""

    def relay(self, command: Command, on_final: ReplyHandler | None = None) -> None:
        """Send *command* to the backend, pass every reply on, then :meth:`done`."""

    def done(self) -> None:
        """The command in flight is answered: run what the client pipelined."""


__all__ = ["BackendLink", "ClientLink", "ReplyHandler", "SessionCore"]
