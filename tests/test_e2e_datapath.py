"""End to end: how transfer bytes move (kernel splice or Python copy) and the data timeouts.

Plain-to-plain transfers go through ``splice(2)`` by default; ``--data-path copy``
keeps them in Python.  Both must deliver the same bytes, count them the same, and
end a transfer whose peer stops reading instead of holding it forever.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import client_context, make_random_file
from tests.test_e2e_core import BIG, Proxied, start_proxy

DATA_PATHS = ["splice", "copy"]


@pytest.fixture
def proxied(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki) -> Proxied:
    return start_proxy(make_proxy, backend, pki)


def plain_ftp(proxied: Proxied) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    return ftp


@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_plain_transfers_arrive_whole_on_either_data_path(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, data_path: str
) -> None:
    proxied = start_proxy(make_proxy, backend, pki, "--data-path", data_path)
    digest = make_random_file(backend.path("down.bin"), BIG)
    upload = io.BytesIO(backend.path("down.bin").read_bytes()[::-1])
    upload_digest = hashlib.sha256(upload.getvalue()).hexdigest()

    ftp = plain_ftp(proxied)
    received = hashlib.sha256()
    ftp.retrbinary("RETR down.bin", received.update, blocksize=256 * 1024)
    assert received.hexdigest() == digest
    ftp.storbinary("STOR up.bin", upload, blocksize=256 * 1024)
    assert hashlib.sha256(backend.path("up.bin").read_bytes()).hexdigest() == upload_digest
    # A one-byte file and an empty one: the pump's smallest cases.
    backend.path("one.bin").write_bytes(b"x")
    backend.path("empty.bin").write_bytes(b"")
    for name, expected in (("one.bin", b"x"), ("empty.bin", b"")):
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {name}", chunks.append)
        assert b"".join(chunks) == expected
    ftp.quit()

    metrics = proxied.metrics()
    assert metrics[f"ftpsproxy_data_paths_total{{path={data_path}}}"] == 4
    other = "copy" if data_path == "splice" else "splice"
    assert metrics[f"ftpsproxy_data_paths_total{{path={other}}}"] == 0
    assert metrics["ftpsproxy_transfer_bytes_total{direction=download}"] == BIG + 1
    assert metrics["ftpsproxy_transfer_bytes_total{direction=upload}"] == BIG
    assert metrics["ftpsproxy_transfers_total{direction=download,result=complete}"] == 3
    assert metrics["ftpsproxy_transfers_active{}"] == 0


def test_tls_transfers_are_copied_in_python(proxied: Proxied) -> None:
    make_random_file(proxied.backend.path("small.bin"), 100_000)
    ftp = proxied.ftp_tls()
    chunks: list[bytes] = []
    ftp.retrbinary("RETR small.bin", chunks.append)
    ftp.quit()
    assert b"".join(chunks) == proxied.backend.path("small.bin").read_bytes()
    metrics = proxied.metrics()
    assert metrics["ftpsproxy_data_paths_total{path=copy}"] == 1
    assert metrics["ftpsproxy_data_paths_total{path=splice}"] == 0


def _read_reply(control: socket.socket, deadline: float) -> bytes:
    """Read control-channel bytes until a final reply line (bounded by *deadline*)."""
    data = b""
    while time.monotonic() < deadline:
        control.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = control.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        last = data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if data.endswith(b"\r\n") and len(last) >= 4 and last[3:4] == b" ":
            if not last.startswith(b"1"):
                break
    return data


def _open_download(proxied: Proxied, name: str) -> tuple[socket.socket, socket.socket]:
    """Log in over a raw socket, PASV, connect the data socket and send RETR."""
    control = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
    deadline = time.monotonic() + 10
    assert _read_reply(control, deadline).startswith(b"220")
    user, password = proxied.backend.user, proxied.backend.password
    for line in (f"USER {user}", f"PASS {password}", "TYPE I", "PASV"):
        control.sendall(line.encode() + b"\r\n")
        reply = _read_reply(control, deadline)
    assert reply.startswith(b"227"), reply
    numbers = reply.split(b"(")[1].split(b")")[0].split(b",")
    port = int(numbers[4]) * 256 + int(numbers[5])
    data = socket.socket()
    data.settimeout(10)
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # fill up quickly
    data.connect(("127.0.0.1", port))
    control.sendall(f"RETR {name}\r\n".encode())
    return control, data


@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_download_to_a_client_that_stops_reading_ends_with_426(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, data_path: str
) -> None:
    """The stall timeout: no byte moves for that long, the transfer ends; never 226."""
    proxied = start_proxy(
        make_proxy, backend, pki, "--data-path", data_path, "--data-stall-timeout", "1"
    )
    make_random_file(backend.path("big.bin"), BIG)
    control, data = _open_download(proxied, "big.bin")
    with control, data:
        data.recv(1000)  # the transfer started; now read no more
        started = time.monotonic()
        replies = _read_reply(control, started + 15)
        elapsed = time.monotonic() - started
        assert replies.startswith((b"150 ", b"125 ")), replies
        final = replies.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        assert final[:3] in (b"426", b"451"), replies
        assert elapsed < 10, elapsed
    metrics = proxied.metrics()
    assert metrics["ftpsproxy_data_timeouts_total{kind=stall}"] == 1
    assert metrics["ftpsproxy_transfers_total{direction=download,result=failed}"] == 1
    assert metrics["ftpsproxy_transfers_active{}"] == 0
    assert metrics["ftpsproxy_passive_ports_in_use{}"] == 0


def test_client_that_stops_reading_near_the_end_never_gets_226(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    """Whether the proxy still reads the backend (stall timeout) or has read everything and
    cannot flush it (close timeout) depends on the kernel's buffer sizing: either way the
    client is answered within the bounds, and a download it did not take is not 226.
    (A file that fits in the kernel's socket buffers is another matter: once it is there,
    the proxy, like any FTP server, has sent it.)"""
    size = 3 * 1024 * 1024
    proxied = start_proxy(
        make_proxy,
        backend,
        pki,
        "--data-path", "copy", "--data-stall-timeout", "2", "--close-timeout", "2",
    )  # fmt: skip
    make_random_file(backend.path("mid.bin"), size)
    control, data = _open_download(proxied, "mid.bin")
    with control, data:
        data.recv(1000)
        started = time.monotonic()
        replies = _read_reply(control, started + 20)
        elapsed = time.monotonic() - started
        final = replies.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        assert final[:3] in (b"426", b"451"), replies
        assert elapsed < 12, elapsed
    metrics = proxied.metrics()
    timeouts = [
        metrics[f"ftpsproxy_data_timeouts_total{{kind={kind}}}"] for kind in ("stall", "close")
    ]
    assert sum(timeouts) == 1, timeouts
    assert metrics["ftpsproxy_transfers_total{direction=download,result=failed}"] == 1


def _upload_never_reading(ftp: ftplib.FTP_TLS, ca: ssl.SSLContext, name: str, data: bytes) -> str:
    """STOR as Go's crypto/tls and Java's Commons Net do it: after the TLS handshake the data
    connection is never read again; the upload ends with close_notify and close()."""
    ftp.voidcmd("TYPE I")
    raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {name}")  # the socket, not yet TLS
    raw.settimeout(30)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ca.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(20):  # the handshake: the only reads on this connection
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    assert tls.version() == "TLSv1.3"
    raw.sendall(outgoing.read())
    for offset in range(0, len(data), 256 * 1024):
        tls.write(data[offset : offset + 256 * 1024])
        raw.sendall(outgoing.read())
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.unwrap()  # close_notify, without waiting for the answer
    raw.sendall(outgoing.read())
    raw.close()
    return ftp.voidresp()


def test_tls13_upload_from_a_client_that_never_reads_its_data_connection(
    proxied: Proxied, tmp_path: Path
) -> None:
    """The proxy must send nothing on an upload's data connection (no TLS 1.3 session
    tickets): unread input makes the client's close a RST, which loses the upload's tail."""
    data = make_random_file(tmp_path / "up.bin", 16 * 1024 * 1024)
    payload = (tmp_path / "up.bin").read_bytes()
    context = client_context(proxied.pki.ca_cert)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    for index in range(3):
        ftp = proxied.ftp_tls()
        assert _upload_never_reading(ftp, context, f"u{index}.bin", payload).startswith("226")
        ftp.quit()
        on_disk = proxied.backend.path(f"u{index}.bin").read_bytes()
        assert len(on_disk) == len(payload), index
        assert hashlib.sha256(on_disk).hexdigest() == data, index
