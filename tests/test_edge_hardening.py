"""Edge hardening: what one client address, or a hostile backend, can no longer do.

Each test is an attack that worked before, run against the real proxy on loopback,
measuring the bound it now meets.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import ReplyReader
from tests.support.faults import Answer, FakeBackend, FakeConnection, ftp_server, then_hold
from tests.test_e2e_core import Proxied, start_proxy

PARALLEL = 50


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
    readers: list[ReplyReader] = []
    for _ in range(PARALLEL):
        sock = socket.socket()
        sock.settimeout(30)
        sock.bind(("127.0.0.3", 0))
        sock.connect(("127.0.0.1", proxied.port))
        reader = ReplyReader(sock)
        assert reader.reply().startswith("220")
        sock.sendall(b"USER demo\r\n")
        assert reader.reply().startswith("331")
        readers.append(reader)
    answers: list[str] = [""] * PARALLEL
    start = threading.Barrier(PARALLEL)

    def guess(index: int) -> None:
        start.wait(timeout=30)
        readers[index].stream.sendall(b"PASS wrong-password\r\n")
        answers[index] = readers[index].reply()

    threads = [threading.Thread(target=guess, args=(index,)) for index in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for reader in readers:
        reader.stream.close()
    codes = sorted(answer[:3] for answer in answers)
    reached = backend.log_text().count("failed login")
    print(f"guesses that reached the backend: {reached} of {PARALLEL}; replies: {codes}")
    assert reached == 5, backend.log_text()[-2000:]
    assert codes.count("530") == 5 and codes.count("421") == PARALLEL - 5, codes
    # The address is locked out; another address is not.
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as other:
        assert ReplyReader(other).reply().startswith("220")
    locked = socket.socket()
    locked.settimeout(10)
    locked.bind(("127.0.0.3", 0))
    locked.connect(("127.0.0.1", proxied.port))
    with locked:
        assert ReplyReader(locked).reply().startswith("421")


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
            reader = ReplyReader(sock)
            reader.reply()
            sock.sendall(f"USER {backend.user}\r\nPASS {backend.password}\r\n".encode())
            reader.reply()
            results.append(reader.reply())
            sock.sendall(b"QUIT\r\n")

    started = time.monotonic()
    threads = [threading.Thread(target=login) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [result[:3] for result in results] == ["230"] * 12, results
    assert time.monotonic() - started < 30


# -- trust nothing the backend says ---------------------------------------------------------


@contextlib.contextmanager
def _fake_proxied(
    make_proxy: MakeProxy, pki: Pki, answers: dict[str, Answer], *extra: str
) -> Iterator[Proxied]:
    """The proxy in front of a scripted backend that answers by verb."""
    with FakeBackend(ftp_server(answers)) as fake:
        yield start_proxy(make_proxy, cast(PyftpdBackend, fake), pki, *extra)


def _logged_in(proxied: Proxied) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login("anyone", "whatever")
    return ftp


def test_backend_data_ports_below_1024_are_refused(make_proxy: MakeProxy, pki: Pki) -> None:
    """A 229 or 227 naming port 21 (the backend's own FTP port) is never followed."""
    answers: dict[str, Answer] = {"EPSV": b"229 Entering Extended Passive Mode (|||21|)\r\n"}
    with _fake_proxied(make_proxy, pki, answers) as proxied:
        ftp = _logged_in(proxied)
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.sendcmd("PASV")
        assert ftp.sendcmd("NOOP").startswith("200")
        ftp.quit()
        refused = proxied.metrics()["ftpsproxy_data_connections_refused_total{reason=backend_port}"]
        assert refused == 1
    assert "privileged data port 21" in proxied.proxy.log_text()  # type: ignore[attr-defined]


def test_control_bytes_in_backend_replies_do_not_reach_the_client(
    make_proxy: MakeProxy, pki: Pki
) -> None:
    answers: dict[str, Answer] = {"NOOP": b"200 ok\rINJECT 200 fake \x1b[31mred\x1b[0m\x07\r\n"}
    with _fake_proxied(make_proxy, pki, answers) as proxied:
        ftp = _logged_in(proxied)
        assert ftp.sendcmd("NOOP") == "200 ok?INJECT 200 fake ?[31mred?[0m?"
        ftp.quit()


def test_replies_that_answer_nothing_are_dropped(make_proxy: MakeProxy, pki: Pki) -> None:
    """A second final reply must not become the answer to the client's next command."""
    answers: dict[str, Answer] = {"NOOP": b"200 ok\r\n200 second, unasked\r\n"}
    with _fake_proxied(make_proxy, pki, answers) as proxied:
        ftp = _logged_in(proxied)
        assert ftp.sendcmd("NOOP") == "200 ok"
        time.sleep(0.3)  # the second reply has arrived at the proxy
        assert ftp.sendcmd("PWD").startswith("257")
        ftp.quit()
        assert proxied.metrics()["ftpsproxy_backend_replies_dropped_total{}"] == 1


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (then_hold(b""), "the backend did not answer in time"),
        (then_hold(b"200 " + b"A" * 1_100_000 + b"\r\n"), "the backend sent an invalid reply"),
        (b"221 Bye.\r\n", ""),  # answered, then the backend closes (see below)
    ],
    ids=["reply-timeout", "reply-over-the-cap", "closed"],
)
def test_the_421_says_why_the_backend_went_away(
    make_proxy: MakeProxy, pki: Pki, answer: Answer, text: str
) -> None:
    def closes(connection: FakeConnection, argument: bytes) -> None:
        connection.sock.shutdown(socket.SHUT_RDWR)  # the dialogue loop then ends

    answers: dict[str, Answer] = {"NOOP": answer if text else closes}
    text = text or "the backend closed the connection"
    with _fake_proxied(make_proxy, pki, answers, "--backend-reply-timeout", "1") as proxied:
        ftp = _logged_in(proxied)
        with pytest.raises(ftplib.error_temp) as raised:
            ftp.sendcmd("NOOP")
        assert str(raised.value) == f"421 Service not available: {text}."
        ftp.close()


# -- nothing about the inside reaches the outside -----------------------------------------


def test_stat_and_feat_before_login_show_nothing_of_the_inside(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    """The backend listens on 127.0.0.5 and the client comes from 127.0.0.9: STAT shows
    the client's view (the proxy's address, the client's own), never the backend's."""
    backend = make_backend(host="127.0.0.5")
    proxied = start_proxy(make_proxy, backend, pki)
    ftp = ftplib.FTP(timeout=20, source_address=("127.0.0.9", 0))
    ftp.connect("127.0.0.1", proxied.port)
    before_login = ftp.sendcmd("FEAT")
    assert "MLST" not in before_login and "MDTM" not in before_login  # pyftpdlib's own
    ftp.login(backend.user, backend.password)
    status = ftp.sendcmd("STAT")
    ftp.quit()
    assert status.startswith("211") and "Connected to" in status, status
    assert "127.0.0.5" not in status, status
    assert f":{backend.port}" not in status or "127.0.0.1" in status, status
    assert "127.0.0.9" in status or "127.0.0.1" in status, status
