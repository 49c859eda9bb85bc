"""What the kernel relay (:mod:`ftpsproxy.data.splice`) stands on: whether ``splice(2)``
works here, which transports it may take, and handing a connection back to Twisted."""

from __future__ import annotations

import functools
import os
import sys
from typing import Literal

from twisted.internet import tcp
from twisted.internet.interfaces import IReactorFDSet
from twisted.protocols.tls import TLSMemoryBIOProtocol

from ftpsproxy.net.twisted_internals import aborting, pending_output

Side = Literal["source", "sink", "pipe"]

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class SpliceError(Exception):
    """The pump failed on *side*: ``"source"``, ``"sink"`` or ``"pipe"`` (our own pipe).

    ``errno`` is the system error number when there is one (``ECONNRESET``,
    ``EPIPE``...), ``None`` otherwise (the reactor reported the socket gone, or
    the pump could make no progress).
    """

    def __init__(self, side: Side, message: str, error_number: int | None = None) -> None:
        super().__init__(f"{side}: {message}")
        self.side: Side = side
        self.errno = error_number


@functools.cache
def _kernel_splices() -> bool:
    """Whether ``splice(2)`` works here (it may be missing or filtered by seccomp)."""
    if not sys.platform.startswith("linux"):
        return False
    if not all(hasattr(os, name) for name in ("splice", "pipe2", "SPLICE_F_NONBLOCK")):
        return False
    fds: list[int] = []
    try:
        r1, w1 = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fds += [r1, w1]
        r2, w2 = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fds += [r2, w2]
        os.write(w1, b"x")
        return os.splice(r1, w2, 1, flags=SPLICE_FLAGS) == 1
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def splice_supported(reactor: object | None = None) -> bool:
    """Whether :class:`SplicePump` can run: Linux, a working ``os.splice``, and, when
    *reactor* is given, a reactor with file-descriptor readiness (``IReactorFDSet``:
    the epoll, poll, select and asyncio reactors; not IOCP)."""
    if reactor is not None and not IReactorFDSet.providedBy(reactor):
        return False
    return _kernel_splices()


def spliceable(transport: object) -> bool:
    """Whether *transport* is a plain (not TLS) Twisted TCP connection the pump can take."""
    return (
        isinstance(transport, tcp.Connection)
        and hasattr(transport, "socket")
        and not getattr(transport, "TLS", False)  # startTLS() was called on it
        and not isinstance(getattr(transport, "protocol", None), TLSMemoryBIOProtocol)
    )


def alive(conn: tcp.Connection) -> bool:
    """Connected, its socket still open, and neither aborted nor closing."""
    return (
        bool(conn.connected)
        and not conn.disconnected
        and not aborting(conn)
        and conn.fileno() != -1
    )


def hand_back(conn: tcp.Connection, reading: bool) -> None:
    """Let Twisted drive *conn* again: reading if *reading*, writing what it has queued."""
    if not conn.connected or conn.disconnected or aborting(conn):
        return
    if conn.fileno() == -1:
        return
    if reading and not conn.disconnecting:
        conn.startReading()
    if conn.disconnecting or pending_output(conn):
        # Something wrote or closed it while we owned the fd: let Twisted finish that.
        conn.startWriting()
