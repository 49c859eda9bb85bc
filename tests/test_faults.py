"""Fault injection against the real proxy process (issue 7, hardening).

Backends that die mid-transfer or misbehave, clients that vanish with a TCP reset or
send garbage, an exhausted passive range. After each fault: the client got a clear
``4xx`` (or a clean close) within a bounded time, the proxy released every port,
connection and descriptor (counted in /proc/PID/fd), its gauges are back to 0, and it
serves a normal session. The ``make_proxy`` fixture fails any test whose proxy logged a
Traceback.

Covered elsewhere, not repeated here:
- plain ``USER`` to the implicit port and TLS garbage after ``AUTH TLS``:
  ``test_e2e_core.py::test_tls_garbage_and_plain_ftp_to_implicit_port_do_not_hurt``
  (fuzzed further below, with leak checks);
- passive range exhausted, ``425``, recovery once the holders ``QUIT``:
  ``test_e2e_core.py::test_exhausted_passive_range_gives_425_and_recovers`` (here: recovery
  by the passive timeout, holders still connected);
- a client closing both connections (FIN) mid-transfer, and a data connection reset
  during an upload: ``test_e2e_protocol.py::test_transfer_cut_off_by_the_client_going_away
  _is_counted`` and ``::test_upload_cut_off_uncleanly_is_not_reported_complete`` (here: the
  whole client reset, and the leak checks on the proxy and on the backend);
- random command lines and backend replies through the session state machine, sans IO:
  ``test_session.py::test_random_client_lines_and_backend_replies_never_break_the_session``
  (here: random bytes through real sockets, TLS and line buffering included).
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import client_context, make_random_file
from tests.support.faults import (
    Answer,
    FakeBackend,
    client_hello,
    delayed,
    fd_count,
    ftp_server,
    pasv_reply,
    port_is_closed,
    sends,
    silent,
    then_hold,
)
from tests.support.proxy import ProxyProcess
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

MIB = 1024 * 1024
BIG = 64 * MIB
IN_USE = "ftpsproxy_passive_ports_in_use{}"
ACTIVE = "ftpsproxy_transfers_active{}"
#: The health probe every 5 s would open a backend connection at random moments and
#: disturb the descriptor counts; once at start-up is enough here.
QUIET = ("--health-interval", "3600")


# -- helpers ------------------------------------------------------------------------------------


def proxy_of(proxied: Proxied) -> ProxyProcess:
    return cast(ProxyProcess, proxied.proxy)


def sessions_active(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("ftpsproxy_sessions_active{"))


def transfers(samples: dict[str, float], direction: str, result: str) -> float:
    key = f"ftpsproxy_transfers_total{{direction={direction},result={result}}}"
    return samples.get(key, 0.0)


def settle(proxied: Proxied, fds: int | None = None, timeout: float = 20.0) -> dict[str, float]:
    """Wait until no session, transfer or passive port is left, and (given) the proxy is
    back to *fds* open descriptors; return the final metrics."""

    def idle() -> bool:
        samples = proxied.metrics()
        return samples[IN_USE] == 0 and samples[ACTIVE] == 0 and sessions_active(samples) == 0

    wait_until(idle, timeout, "sessions, transfers and passive ports back to 0")
    samples = proxied.metrics()
    if fds is not None:
        proxy = proxy_of(proxied)
        try:
            # Polls /proc only: the metrics request above may still be closing.
            wait_until(lambda: proxy.fd_count() == fds, timeout, f"the proxy back to {fds} fds")
        except AssertionError:
            listing = {n: _readlink(proxy.pid, n) for n in os.listdir(f"/proc/{proxy.pid}/fd")}
            raise AssertionError(f"fds {proxy.fd_count()} != {fds}: {listing}") from None
    return samples


def _readlink(pid: int, name: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{name}")
    except OSError:
        return "?"


def normal_session(proxied: Proxied, name: str = "normal.bin", size: int = 50_000) -> None:
    """Log in, upload and download a file (checked by hash), list, quit."""
    data = os.urandom(size)
    with ftplib.FTP(timeout=20) as ftp:
        ftp.connect("127.0.0.1", proxied.port)
        ftp.login(proxied.backend.user, proxied.backend.password)
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        back = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", back.write)
        assert hashlib.sha256(back.getvalue()).digest() == hashlib.sha256(data).digest()
        assert name in ftp.nlst()
        ftp.delete(name)
        assert ftp.quit().startswith("221")


def warm_baseline(proxied: Proxied) -> int:
    """One normal session, then the proxy's idle descriptor count."""
    normal_session(proxied)
    settle(proxied)
    return idle_fds(proxy_of(proxied))


def idle_fds(proxy: ProxyProcess) -> int:
    """The proxy's descriptors once no TCP connection (a metrics request's …) is left."""
    wait_until(lambda: not proxy.tcp_connections(), 15, "no connection left on the proxy")
    return proxy.fd_count()


def arm_reset(sock: socket.socket) -> None:
    """Make the socket's close send a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def read_until_closed(sock: socket.socket, limit: int = 256 * MIB) -> bytes:
    """Everything until EOF or a reset (bounded by the socket's timeout and *limit*)."""
    received = bytearray()
    try:
        while len(received) < limit:
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            received += chunk
    except OSError:  # a reset, or a TLS connection cut without close_notify
        pass
    return bytes(received)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def control_socket(ftp: ftplib.FTP) -> socket.socket:
    assert ftp.sock is not None
    return ftp.sock


def login(proxied: Proxied, tls: bool = False) -> ftplib.FTP:
    """A logged-in session in TYPE I: plain FTP, or explicit FTPS with ``PROT P``."""
    ftp: ftplib.FTP
    if tls:
        ftp = ftplib.FTP_TLS(context=client_context(proxied.pki.ca_cert), timeout=20)
    else:
        ftp = ftplib.FTP(timeout=20)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    ftp.voidcmd("TYPE I")
    return ftp


#: Plain FTP on both legs, or FTPS on both: the client's explicit TLS with ``PROT P``, and
#: an ``ftpes://`` backend requiring TLS on control and data connections.
LEGS = ["plain", "tls"]


def make_leg_backend(
    make_backend: Callable[..., PyftpdBackend], pki: Pki, legs: str, **kwargs: object
) -> PyftpdBackend:
    if legs == "tls":
        kwargs.update(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_required=True)
    return make_backend(**kwargs)


def start_leg_proxy(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, legs: str, *extra: str
) -> Proxied:
    if legs == "tls":
        url = f"ftpes://127.0.0.1:{backend.port}"
        extra = ("--backend", url, "--backend-ca", str(pki.ca_cert), *extra)
    return start_proxy(make_proxy, backend, pki, *QUIET, *extra)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


# -- 1. the backend killed mid-transfer -----------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("legs", LEGS)
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_backend_killed_mid_transfer(
    make_proxy: MakeProxy,
    make_backend: Callable[..., PyftpdBackend],
    pki: Pki,
    direction: str,
    legs: str,
) -> None:
    backend = make_leg_backend(make_backend, pki, legs)
    make_random_file(backend.path("big.bin"), BIG)
    whole = backend.path("big.bin").read_bytes()
    proxied = start_leg_proxy(make_proxy, backend, pki, legs)
    proxy = proxy_of(proxied)
    baseline = warm_baseline(proxied)
    before = proxied.metrics()

    ftp = login(proxied, tls=legs == "tls")
    if direction == "download":
        conn = ftp.transfercmd("RETR big.bin")
        conn.settimeout(20)
        received = bytearray()
        while len(received) < MIB:
            chunk = conn.recv(256 * 1024)
            assert chunk, "the download ended early"
            received += chunk
        os.kill(backend.pid, signal.SIGKILL)  # our own pyftpdlib subprocess
        wait_until(lambda: not backend.is_running(), 10, "the backend dead")
        received += read_until_closed(conn)
        conn.close()
        # Whatever arrived is the file's beginning, and never all of it.
        assert 0 < len(received) < BIG
        assert sha(bytes(received)) == sha(whole[: len(received)])
    else:
        conn = ftp.transfercmd("STOR up.bin")
        conn.settimeout(20)
        block = os.urandom(256 * 1024)
        for _ in range(4):
            conn.sendall(block)
        wait_until(lambda: _size(backend.path("up.bin")) > 0, 10, "the upload under way")
        os.kill(backend.pid, signal.SIGKILL)
        wait_until(lambda: not backend.is_running(), 10, "the backend dead")
        started = time.monotonic()
        with pytest.raises(OSError):  # the proxy resets the client's data connection
            while time.monotonic() - started < 30:
                conn.sendall(block)
        conn.close()
    started = time.monotonic()
    with pytest.raises(ftplib.error_temp, match=r"^426 "):  # the transfer failed
        reply = ftp.getresp()
        pytest.fail(f"got {reply!r} after the backend died")
    with pytest.raises(ftplib.error_temp, match=r"^421 "):  # the session ends with its backend
        ftp.getresp()
    assert time.monotonic() - started < 15
    assert closed_by_peer(control_socket(ftp))
    ftp.close()

    after = settle(proxied, baseline)
    assert transfers(after, direction, "complete") == transfers(before, direction, "complete")
    assert transfers(after, direction, "failed") == transfers(before, direction, "failed") + 1
    assert all(proxied.metrics_port in c[:2] for c in proxy.tcp_connections())

    # A backend back on the same port: the proxy serves as before.
    revived = make_leg_backend(make_backend, pki, legs, root=backend.root, port=backend.port)
    proxied.backend = revived
    normal_session(proxied)
    settle(proxied, baseline)


# -- 2. the client vanishes with a reset mid-transfer ------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("legs", LEGS)
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_reset_mid_transfer_leaks_nothing(
    make_proxy: MakeProxy,
    make_backend: Callable[..., PyftpdBackend],
    pki: Pki,
    direction: str,
    legs: str,
) -> None:
    backend = make_leg_backend(make_backend, pki, legs)
    make_random_file(backend.path("big.bin"), BIG)
    proxied = start_leg_proxy(make_proxy, backend, pki, legs)
    proxy = proxy_of(proxied)
    baseline = warm_baseline(proxied)
    backend_baseline = fd_count(backend.pid)
    before = proxied.metrics()

    ftp = login(proxied, tls=legs == "tls")
    if direction == "download":
        conn = ftp.transfercmd("RETR big.bin")
        conn.settimeout(20)
        got = 0
        while got < MIB:
            chunk = conn.recv(256 * 1024)
            assert chunk
            got += len(chunk)
    else:
        conn = ftp.transfercmd("STOR up.bin")
        conn.sendall(os.urandom(MIB))
        wait_until(lambda: _size(backend.path("up.bin")) > 0, 10, "the upload under way")
    wait_until(lambda: proxied.metrics()[ACTIVE] == 1, 10, "the transfer counted as running")
    # The client dies: both connections reset, no ABOR, no QUIT.
    arm_reset(conn)
    conn.close()
    arm_reset(control_socket(ftp))
    ftp.close()  # ftplib's file object on the socket too: only then is the fd closed

    after = settle(proxied, baseline)
    assert transfers(after, direction, "complete") == transfers(before, direction, "complete")
    ended = sum(transfers(after, direction, r) - transfers(before, direction, r)
                for r in ("failed", "aborted"))  # fmt: skip
    assert ended == 1
    # The backend side is closed too: no connection left on the proxy, and the backend
    # process is back to its own idle descriptors (its session and data socket gone).
    wait_until(
        lambda: all(proxied.metrics_port in c[:2] for c in proxy.tcp_connections()),
        15,
        "no proxy connection left",
    )
    wait_until(
        lambda: fd_count(backend.pid) == backend_baseline, 15, "the backend's session closed"
    )
    normal_session(proxied)
    settle(proxied, baseline)


# -- 3. misbehaving backends ----------------------------------------------------------------

GARBAGE = {
    "ssh-banner": b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "binary": bytes(range(256)) * 4,
    "tls-alert": b"\x15\x03\x03\x00\x02\x02\x46",
    "huge-line": b"220 " + b"A" * MIB,  # a 1 MiB reply with no line end, then silence
    "huge-multiline": b"220-" + b"x" * 70 + b"\r\n" + (b" " + b"y" * 98 + b"\r\n") * 11_000,
}

BROKEN_BACKENDS = {
    "silent": silent,  # accepts, never greets
    **{f"greeting-{name}": sends(data) for name, data in GARBAGE.items()},
    **{
        f"after-login-{name}": ftp_server({"PWD": then_hold(GARBAGE[name])})
        for name in ("binary", "huge-line", "huge-multiline")
    },
    "after-login-silent": ftp_server({"PWD": lambda conn, arg: conn.hold()}),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKEN_BACKENDS))
def test_misbehaving_backend_gives_421_quickly_and_leaks_nothing(
    make_proxy: MakeProxy, pki: Pki, kind: str
) -> None:
    with FakeBackend(BROKEN_BACKENDS[kind]) as fake:
        proxied = start_proxy(
            make_proxy,
            cast(PyftpdBackend, fake),  # only its url is used
            pki,
            *QUIET,
            "--backend-connect-timeout", "2",
            "--backend-reply-timeout", "2",
        )  # fmt: skip
        proxy = proxy_of(proxied)
        # Warm up without the backend: a session the proxy answers alone.
        with ftplib.FTP(timeout=10) as ftp:
            ftp.connect("127.0.0.1", proxied.port)
            ftp.voidcmd("NOOP")
            ftp.quit()
        settle(proxied)
        # The start-up probe (bounded by the connect timeout) ends.
        wait_until(fake.all_closed, 10, "the proxy's start-up backend connections closed")
        baseline = idle_fds(proxy)

        ftp = ftplib.FTP(timeout=20)
        ftp.connect("127.0.0.1", proxied.port)
        started = time.monotonic()
        with pytest.raises(ftplib.error_temp, match=r"^421"):
            if kind.startswith("after-login"):
                ftp.login("anyone", "whatever")
                ftp.sendcmd("PWD")
            else:
                ftp.sendcmd("USER anyone")
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"421 after {elapsed:.1f} s"
        assert closed_by_peer(control_socket(ftp))
        ftp.close()

        settle(proxied, baseline)
        # The proxy closed its end of every backend connection (the session's, and the
        # start-up health probe's).
        wait_until(fake.all_closed, 10, "the proxy closing the backend connections")
        assert fake.accepted() >= 2
        assert proxy.is_running()


@pytest.mark.timeout(60)
def test_client_reset_while_the_backend_never_greets(make_proxy: MakeProxy, pki: Pki) -> None:
    """The client vanishes while the proxy waits for a silent backend: the half-made
    backend connection is still closed (by the connect timeout), nothing stays behind."""
    with FakeBackend(silent) as fake:
        proxied = start_proxy(
            make_proxy, cast(PyftpdBackend, fake), pki, *QUIET, "--backend-connect-timeout", "2"
        )
        proxy = proxy_of(proxied)
        wait_until(fake.all_closed, 10, "the proxy's start-up backend connections closed")
        settle(proxied)
        baseline = idle_fds(proxy)
        accepted = fake.accepted()
        raw = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
        assert raw.recv(100).startswith(b"220")
        raw.sendall(b"USER anyone\r\n")
        wait_until(lambda: fake.accepted() == accepted + 1, 10, "the backend connection made")
        arm_reset(raw)
        raw.close()
        settle(proxied, baseline)
        wait_until(fake.all_closed, 10, "the proxy closing the backend connection")
        samples = proxied.metrics()
        assert (
            samples.get("ftpsproxy_backend_connects_total{backend=default,result=timeout}", 0) >= 1
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", ["pasv-foreign-host", "epsv-dead-port"])
def test_backend_passive_address_elsewhere_gives_425(
    make_proxy: MakeProxy, pki: Pki, variant: str
) -> None:
    """The proxy never follows a backend's 227 address: it connects to the control peer.

    A decoy listens on 127.0.0.2:P, where the backend points; nothing listens on
    127.0.0.1:P. The transfer fails with a 4xx, the decoy sees no connection, and the
    session goes on.
    """
    decoy = socket.socket()
    decoy.bind(("127.0.0.2", 0))
    decoy.listen(4)
    decoy.setblocking(False)
    port = decoy.getsockname()[1]
    assert port_is_closed(port)
    answers: dict[str, Answer]
    if variant == "pasv-foreign-host":
        answers = {"EPSV": b"500 EPSV not understood.\r\n", "PASV": pasv_reply("127.0.0.2", port)}
    else:
        answers = {"EPSV": f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()}
    answers["RETR"] = delayed(
        b"150 Opening BINARY mode data connection.\r\n",
        b"425 Can't open data connection.\r\n",
        delay=0.5,
    )
    with FakeBackend(ftp_server(answers)) as fake, decoy:
        proxied = start_proxy(make_proxy, cast(PyftpdBackend, fake), pki, *QUIET)
        ftp = ftplib.FTP(timeout=20)
        ftp.connect("127.0.0.1", proxied.port)
        ftp.login("anyone", "whatever")
        ftp.voidcmd("TYPE I")
        host, data_port = ftp.makepasv()
        started = time.monotonic()
        with socket.create_connection((host, data_port), timeout=20) as data:
            ftp.putcmd("RETR file")
            with pytest.raises(ftplib.error_temp, match=r"^42[56]"):
                while True:
                    reply = ftp.getresp()
                    assert reply.startswith("150"), reply
            assert read_until_closed(data) == b""
        assert time.monotonic() - started < 10
        assert ftp.sendcmd("NOOP").startswith("200")  # the session goes on
        ftp.quit()
        with pytest.raises(BlockingIOError):
            decoy.accept()
        samples = settle(proxied)
        assert transfers(samples, "download", "failed") == 1


# -- 4. client garbage -------------------------------------------------------------------------

REPLY_LINE = re.compile(rb"^(\d{3}[ -]| )")


def _replies_are_ftp(stream: bytes) -> list[bytes]:
    lines = stream.split(b"\r\n")
    assert lines[-1] == b"", stream[-80:]  # nothing after the last line end
    for line in lines[:-1]:
        assert REPLY_LINE.match(line), line
    return lines[:-1]


@pytest.mark.timeout(60)
def test_tls_client_hello_to_the_plain_port(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    """An implicit-FTPS client on the plain port: FTP replies only, no harm done."""
    proxied = start_proxy(make_proxy, backend, pki, *QUIET)
    baseline = warm_baseline(proxied)
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as raw:
        raw.sendall(client_hello())  # first, as a TLS client does, before any greeting
        time.sleep(0.5)
        raw.shutdown(socket.SHUT_WR)  # the client gives up on its handshake
        stream = read_until_closed(raw)
    lines = _replies_are_ftp(stream)
    assert lines[0].startswith(b"220")
    assert all(line[:1] == b"5" for line in lines[1:]), lines  # 500/530, never 2xx
    samples = settle(proxied, baseline)
    assert samples.get("ftpsproxy_logins_total{result=success}") == 1  # the warm-up only
    normal_session(proxied)


def _plain(proxied: Proxied, payload: bytes, logged_in: bool) -> None:
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=15) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        if logged_in:
            raw.sendall(f"USER {proxied.backend.user}\r\n".encode())
            assert reader.readline().startswith(b"331")
            raw.sendall(f"PASS {proxied.backend.password}\r\n".encode())
            assert reader.readline().startswith(b"230")
        raw.sendall(payload + b"\r\nQUIT\r\n")
        stream = reader.read()  # to EOF: QUIT (221) or a too-long line (500) ends it
        reader.close()
    lines = _replies_are_ftp(stream)
    assert lines and lines[-1][:3] in (b"221", b"500", b"421"), lines[-3:]


def _tls_garbage(proxied: Proxied, payload: bytes, port: int, auth: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        if auth:
            reader = raw.makefile("rb")
            assert reader.readline().startswith(b"220")
            raw.sendall(b"AUTH TLS\r\n")
            assert reader.readline().startswith(b"234")
            reader.close()
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        read_until_closed(raw)  # an alert, or nothing: then the proxy closes


TARGETS = ["plain-before-login", "plain-after-login", "after-auth-tls", "implicit-port"]
_PRINTABLE_LINES = st.lists(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    min_size=1,
    max_size=8,
).map(lambda lines: "\r\n".join(lines).encode())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("target", TARGETS)
def test_random_client_bytes_through_real_sockets(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, target: str
) -> None:
    proxied = start_proxy(
        make_proxy, backend, pki, *QUIET,
        "--tls-handshake-timeout", "3",
        "--max-login-failures", "1000",  # a fuzzed PASS must not lock 127.0.0.1 out
        "--login-failure-delay", "0",
    )  # fmt: skip
    proxy = proxy_of(proxied)
    baseline = warm_baseline(proxied)
    ran: list[bytes] = []

    @settings(max_examples=50, deadline=None, database=None)
    @given(payload=st.one_of(st.binary(min_size=1, max_size=3000), _PRINTABLE_LINES))
    @example(payload=b"USER x\r\n")
    @example(payload=client_hello())
    @example(payload=b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
    def fuzz(payload: bytes) -> None:
        ran.append(payload)
        if target.startswith("plain"):
            _plain(proxied, payload, logged_in=target == "plain-after-login")
        elif target == "after-auth-tls":
            _tls_garbage(proxied, payload, proxied.port, auth=True)
        else:
            _tls_garbage(proxied, payload, proxied.implicit_port, auth=False)
        assert proxy.is_running()
        with ftplib.FTP(timeout=10) as ftp:  # and it still serves
            ftp.connect("127.0.0.1", proxied.port)
            ftp.login(backend.user, backend.password)
            assert ftp.pwd() == "/"
            ftp.quit()

    fuzz()
    assert len(ran) >= 50, len(ran)  # the 3 explicit examples and at least 47 generated
    settle(proxied, baseline)
    normal_session(proxied)
    # Explicit TLS with a proper client, after all that.
    tls = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=20)
    tls.connect("127.0.0.1", proxied.port)
    tls.login(backend.user, backend.password)
    tls.prot_p()
    assert tls.nlst() == []
    tls.quit()
    settle(proxied, baseline)


# -- 5. the passive range held by idle clients -----------------------------------------------


@pytest.mark.timeout(60)
def test_passive_ports_held_by_idle_clients_come_back_after_the_passive_timeout(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start_proxy(
        make_proxy,
        backend,
        pki,
        *QUIET,
        "--passive-timeout", "2",
        "--max-passive-ports-per-ip", "4",  # the range runs out, not one address's share
        passive_count=3,
    )  # fmt: skip
    baseline = warm_baseline(proxied)
    holders = [login(proxied) for _ in range(3)]
    for ftp in holders:
        ftp.makepasv()  # holds a port: no data connection, no transfer
    assert proxied.metrics()[IN_USE] == 3
    late = login(proxied)
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        late.makepasv()
    assert proxied.metrics()["ftpsproxy_passive_ports_exhausted_total{}"] == 1
    # Nobody quits: the passive timeout takes the ports back.
    took = wait_until(lambda: proxied.metrics()[IN_USE] == 0, 15, "ports released by timeout")
    assert took < 10
    late.storbinary("STOR late.bin", io.BytesIO(b"late" * 1000))
    assert backend.path("late.bin").read_bytes() == b"late" * 1000
    for ftp in holders:
        # Their prepared data connection is gone: the transfer command gets 425 ...
        with pytest.raises(ftplib.error_temp, match=r"^425"):
            ftp.sendcmd("NLST")
        # ... and the session goes on, with a new PASV.
        assert ftp.nlst() == ["late.bin"]
        ftp.quit()
    late.quit()
    settle(proxied, baseline)
