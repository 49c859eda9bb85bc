"""Edge hardening: what one client address, or a hostile backend, can no longer do.

Each test is an attack that worked before, run against the real proxy on loopback,
measuring the bound it now meets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.test_e2e_core import start_proxy

PARALLEL = 50


def _reply(sock: socket.socket, buffer: list[bytes]) -> str:
    """The next final reply line on *sock* (multi-line replies skipped to their end)."""
    data = buffer[0] if buffer else b""
    while True:
        end = data.find(b"\r\n")
        if end >= 0:
            line, data = data[:end], data[end + 2 :]
            if line[3:4] != b"-":
                buffer[:] = [data]
                return line.decode(errors="replace")
            continue
        more = sock.recv(4096)
        if not more:
            buffer[:] = [data]
            return ""
        data += more


def test_parallel_sessions_from_one_address_get_at_most_the_allowed_guesses(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    """50 sessions from 127.0.0.3 send a wrong PASS at the same moment: 5 reach the
    backend (--max-login-failures), the rest wait for a place and are refused (421) once
    those 5 lock the address out."""
    backend = make_backend(extra_args=["--verbose"])
    proxied = start_proxy(
        make_proxy, backend, pki, "--max-sessions-per-ip", str(PARALLEL + 5),
        "--max-sessions", "200",
    )  # fmt: skip
    sockets: list[socket.socket] = []
    buffers: list[list[bytes]] = []
    for _ in range(PARALLEL):
        sock = socket.socket()
        sock.settimeout(30)
        sock.bind(("127.0.0.3", 0))
        sock.connect(("127.0.0.1", proxied.port))
        buffer: list[bytes] = []
        assert _reply(sock, buffer).startswith("220")
        sock.sendall(b"USER demo\r\n")
        assert _reply(sock, buffer).startswith("331")
        sockets.append(sock)
        buffers.append(buffer)
    answers: list[str] = [""] * PARALLEL
    start = threading.Barrier(PARALLEL)

    def guess(index: int) -> None:
        start.wait(timeout=30)
        sockets[index].sendall(b"PASS wrong-password\r\n")
        answers[index] = _reply(sockets[index], buffers[index])

    threads = [threading.Thread(target=guess, args=(index,)) for index in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for sock in sockets:
        sock.close()
    codes = sorted(answer[:3] for answer in answers)
    reached = backend.log_text().count("failed login")
    print(f"guesses that reached the backend: {reached} of {PARALLEL}; replies: {codes}")
    assert reached == 5, backend.log_text()[-2000:]
    assert codes.count("530") == 5 and codes.count("421") == PARALLEL - 5, codes
    # The address is locked out; another address is not.
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as other:
        assert _reply(other, []).startswith("220")
    locked = socket.socket()
    locked.settimeout(10)
    locked.bind(("127.0.0.3", 0))
    locked.connect(("127.0.0.1", proxied.port))
    with locked:
        assert _reply(locked, []).startswith("421")


def test_a_success_frees_its_place_for_the_next_parallel_login(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    """Clients that open many sessions at once (rclone, lftp mirror) all log in: guesses
    beyond the limit wait for a place and succeed, none is refused."""
    proxied = start_proxy(
        make_proxy, backend, pki, "--max-login-failures", "2", "--max-sessions-per-ip", "20"
    )
    results: list[str] = []

    def login() -> None:
        with socket.create_connection(("127.0.0.1", proxied.port), timeout=30) as sock:
            buffer: list[bytes] = []
            _reply(sock, buffer)
            sock.sendall(f"USER {backend.user}\r\nPASS {backend.password}\r\n".encode())
            _reply(sock, buffer)
            results.append(_reply(sock, buffer))
            sock.sendall(b"QUIT\r\n")

    started = time.monotonic()
    threads = [threading.Thread(target=login) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [result[:3] for result in results] == ["230"] * 12, results
    assert time.monotonic() - started < 30
