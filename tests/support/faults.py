"""Misbehaving FTP backends for the fault-injection tests, and process facts read from /proc.

``FakeBackend`` is a loopback TCP server in a thread of the test process: every accepted
connection runs a *behaviour* (a function of a ``FakeConnection``) in its own thread.
Behaviours here: ``silent`` (never greets), ``sends(data)`` (garbage, a huge reply …)
and ``ftp_server(...)`` (a minimal FTP dialogue whose answers a test can replace, for a
backend that misbehaves only after login). Everything is bounded: a connection held open
is released when the peer closes it, when the fake is stopped, or after ``HOLD_LIMIT``.

``UnlimitedPyftpdBackend`` is the usual pyftpdlib backend without pyftpdlib's limit of
512 sockets, for hundreds of concurrent sessions.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

from tests.support.backend import PyftpdBackend

#: The longest a fake holds a connection open without the peer or the test ending it.
HOLD_LIMIT = 120.0
READ_TIMEOUT = 30.0
_TICK = 0.05


class FakeConnection:
    """One accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self._stopping = stopping
        self._buffer = b""
        self.received: list[bytes] = []  # command lines read, line ends stripped
        self.peer_closed = False
        self.closed = False  # the behaviour ended and the socket is closed

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes | None:
        """Some bytes; b"" when the peer closed; None on timeout or stop."""
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.2))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.peer_closed = True
            return chunk
        return None

    def readline(self, timeout: float = READ_TIMEOUT) -> bytes | None:
        """The next line without its end; None when the peer closed, on timeout or on stop."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            chunk = self._recv(deadline)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        line = line.rstrip(b"\r")
        self.received.append(line)
        return line

    def hold(self, timeout: float = HOLD_LIMIT) -> None:
        """Read and drop input until the peer closes, the fake stops, or *timeout*."""
        deadline = time.monotonic() + timeout
        while self._recv(deadline):
            pass


Behaviour = Callable[[FakeConnection], None]


class FakeBackend:
    """A loopback server running *behaviour* on every connection, in threads of this process."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.host = host
        self.port = 0
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.connections: list[FakeConnection] = []

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=_TICK):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                connection = FakeConnection(sock, self._stopping)
                worker = threading.Thread(target=self._serve, args=(connection,), daemon=True)
                with self._lock:
                    self.connections.append(connection)
                    self._workers.append(worker)
                worker.start()

    def _serve(self, connection: FakeConnection) -> None:
        try:
            self.behaviour(connection)
        finally:
            with contextlib.suppress(OSError):
                connection.sock.close()
            connection.closed = True

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}"

    def accepted(self) -> int:
        with self._lock:
            return len(self.connections)

    def all_closed(self) -> bool:
        """Whether every connection so far is closed: by the peer (the proxy), or by the
        behaviour itself (after ``QUIT``, say). A behaviour that holds a connection
        open ends only when the peer closes it, or after ``HOLD_LIMIT``."""
        with self._lock:
            return all(connection.closed for connection in self.connections)


# -- behaviours -------------------------------------------------------------------------------


def silent(connection: FakeConnection) -> None:
    """Accept, never greet."""
    connection.hold()


def sends(data: bytes) -> Behaviour:
    """Send *data* at once (instead of a greeting), then hold the connection open."""

    def behaviour(connection: FakeConnection) -> None:
        connection.send(data)
        connection.hold()

    return behaviour


#: Answers that a test can give to a command: bytes to send, or a function of the
#: connection and the command's argument that does the talking (and may hold).
Answer = bytes | Callable[[FakeConnection, bytes], None]

_DEFAULT_ANSWERS: dict[str, Answer] = {
    "USER": b"331 Password required.\r\n",
    "PASS": b"230 Logged in.\r\n",
    "TYPE": b"200 Type set.\r\n",
    "PWD": b'257 "/" is the current directory.\r\n',
    "NOOP": b"200 NOOP ok.\r\n",
    "SYST": b"215 UNIX Type: L8\r\n",
}


def ftp_server(answers: Mapping[str, Answer] | None = None) -> Behaviour:
    """A minimal FTP server: greets, logs anyone in, answers by verb, ``502`` otherwise.

    ``QUIT`` gets ``221`` and a close; *answers* add to or replace the defaults.
    """
    table = {**_DEFAULT_ANSWERS, **(answers or {})}

    def behaviour(connection: FakeConnection) -> None:
        connection.send(b"220 fake FTP server ready.\r\n")
        while (line := connection.readline()) is not None:
            verb, _, argument = line.partition(b" ")
            name = verb.decode(errors="replace").upper()
            if name == "QUIT":
                connection.send(b"221 Goodbye.\r\n")
                return
            answer = table.get(name, b"502 Command not implemented.\r\n")
            if isinstance(answer, bytes):
                connection.send(answer)
            else:
                answer(connection, argument)

    return behaviour


def then_hold(data: bytes) -> Callable[[FakeConnection, bytes], None]:
    """An answer: send *data*, then hold the connection open (no further dialogue)."""

    def answer(connection: FakeConnection, argument: bytes) -> None:
        connection.send(data)
        connection.hold()

    return answer


def delayed(*replies: bytes, delay: float) -> Callable[[FakeConnection, bytes], None]:
    """An answer: send the first reply now and each further one *delay* seconds later."""

    def answer(connection: FakeConnection, argument: bytes) -> None:
        for index, reply in enumerate(replies):
            if index:
                time.sleep(delay)
            connection.send(reply)

    return answer


def pasv_reply(host: str, port: int) -> bytes:
    h = host.split(".")
    return f"227 Entering Passive Mode ({','.join(h)},{port >> 8},{port & 255}).\r\n".encode()


def client_hello(server_name: str = "localhost") -> bytes:
    """The first flight of a real TLS client (its ClientHello record), as bytes."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:8]  # a TLS handshake record
    return hello


# -- process facts ------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    """Open file descriptors of any process of ours (the backend, say)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def port_is_closed(port: int, host: str = "127.0.0.1") -> bool:
    """Nobody listens on *host*:*port* (a connection attempt is refused)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


# -- pyftpdlib without its connection cap -----------------------------------------------------

_UNLIMITED = (
    "import pyftpdlib.servers as s, sys; s.FTPServer.max_cons = 0; "
    "from tests.support.pyftpd_server import main; sys.exit(main())"
)


class UnlimitedPyftpdBackend(PyftpdBackend):
    """``PyftpdBackend`` with ``FTPServer.max_cons = 0``: pyftpdlib otherwise answers
    ``421 Too many connections`` once its process holds 512 sockets, which 500
    concurrent sessions with their data connections exceed."""

    def command(self) -> list[str]:
        args = super().command()
        module = args.index("tests.support.pyftpd_server")
        return [sys.executable, "-c", _UNLIMITED, *args[module + 1 :]]
