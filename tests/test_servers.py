"""Self-tests of the real FTP server backends (tests/support/servers.py), without the proxy.

Each server is driven directly by the clients the interop tests use (curl, lftp, ftplib),
so a later proxy test that fails is known to fail because of the proxy. Also pins the
behaviour the proxy must cope with: vsftpd and ProFTPD refuse a TLS data connection that
does not resume the control session; Pure-FTPd accepts it.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MakeFtpServer, MakeRealServer, server_kinds
from tests.support.certs import Pki
from tests.support.clients import (
    ImplicitReusingFTP_TLS,
    ReusingFTP_TLS,
    client_context,
    make_random_file,
    run_curl,
    run_lftp,
    sha256_file,
)
from tests.support.servers import REAL_SERVER_KINDS, PureFtpd, RealFtpServer

SIZE = 4 * 1024 * 1024
#: Servers that refuse TLS data connections without session reuse.
REUSE_KINDS = ("vsftpd", "proftpd")
IMPLICIT_KINDS = ("vsftpd", "proftpd")

pytestmark = pytest.mark.timeout(120)


def _explain(server: RealFtpServer, result: subprocess.CompletedProcess[str] | None = None) -> str:
    client = "" if result is None else f"client rc={result.returncode}\n{result.stderr[-3000:]}\n"
    return f"{client}--- {server.kind} log ---\n{server.log_text()[-6000:]}"


def _curl_base(server: RealFtpServer, pki: Pki | None) -> list[str]:
    args = ["--user", f"{server.user}:{server.password}", "--max-time", "30"]
    if pki is not None:
        args += ["--ssl-reqd", "--cacert", str(pki.ca_cert)]
    return args


def _ftplib_login(ftp: ftplib.FTP, server: RealFtpServer) -> None:
    ftp.connect(server.host, server.port)
    ftp.login(server.user, server.password)
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()


# -- explicit FTPS -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_curl_tls_download_and_upload(
    kind: str, make_real_server: MakeRealServer, pki: Pki, tmp_path: Path
) -> None:
    """curl (which resumes TLS sessions) downloads over EPSV and uploads over PASV."""
    server = make_real_server(kind)
    digest = server.make_file("down.bin", SIZE)
    local = tmp_path / "down.bin"
    result = run_curl([*_curl_base(server, pki), "-o", str(local), f"{server.url}/down.bin"])
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(local) == digest

    upload = tmp_path / "up.bin"
    up_digest = make_random_file(upload, SIZE)
    result = run_curl(
        [*_curl_base(server, pki), "--disable-epsv", "-T", str(upload), f"{server.url}/up.bin"]
    )
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(server.path("up.bin")) == up_digest


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_lftp_tls_active_mode_listing(
    kind: str, make_real_server: MakeRealServer, pki: Pki
) -> None:
    """Active mode (PORT/EPRT): the server connects back and is the TLS server there.

    lftp, not curl: Debian 12's curl 7.88 fails active FTPS with ``inet_ntop() failed``.
    """
    server = make_real_server(kind)
    server.make_file("listed.bin", 10)
    result = run_lftp(
        f"""
        set ftp:ssl-force true
        set ftp:ssl-protect-data true
        set ftp:passive-mode off
        set ssl:ca-file {pki.ca_cert}
        open -u {server.user},{server.password} {server.url}
        cls -1
        """,
        timeout=60,
    )
    assert result.returncode == 0, _explain(server, result)
    assert "listed.bin" in result.stdout.split()


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_lftp_tls_get(
    kind: str, make_real_server: MakeRealServer, pki: Pki, tmp_path: Path
) -> None:
    server = make_real_server(kind)
    digest = server.make_file("lftp.bin", SIZE)
    local = tmp_path / "lftp.bin"
    result = run_lftp(
        f"""
        set ftp:ssl-force true
        set ftp:ssl-protect-data true
        set ssl:ca-file {pki.ca_cert}
        open -u {server.user},{server.password} {server.url}
        get lftp.bin -o {local}
        """,
        timeout=60,
    )
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(local) == digest


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_reusing_ftplib_retr_stor(
    kind: str, tls13: bool, make_real_server: MakeRealServer, pki: Pki
) -> None:
    """ftplib that resumes the control session on data connections, under TLS 1.3 and 1.2."""
    server = make_real_server(kind, tls13=tls13)
    digest = server.make_file("down.bin", SIZE)
    ftp = ReusingFTP_TLS(context=client_context(pki.ca_cert), timeout=20)
    try:
        _ftplib_login(ftp, server)
        assert isinstance(ftp.sock, ssl.SSLSocket)
        assert ftp.sock.version() == ("TLSv1.3" if tls13 else "TLSv1.2")
        received = io.BytesIO()
        reply = ftp.retrbinary("RETR down.bin", received.write)
        assert reply.startswith("226"), _explain(server)
        assert len(received.getvalue()) == SIZE
        assert hashlib.sha256(received.getvalue()).hexdigest() == digest
        payload = received.getvalue()[::-1]
        reply = ftp.storbinary("STOR up.bin", io.BytesIO(payload))
        assert reply.startswith("226"), _explain(server)
        ftp.quit()
    finally:
        ftp.close()
    assert server.path("up.bin").read_bytes() == payload


@pytest.mark.parametrize("kind", REUSE_KINDS)
def test_tls_data_without_session_reuse_is_refused(
    kind: str, make_real_server: MakeRealServer, pki: Pki
) -> None:
    """Stock ftplib never resumes the TLS session: vsftpd and ProFTPD refuse its data."""
    server = make_real_server(kind)
    server.make_file("down.bin", 1000)
    ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=10)
    try:
        _ftplib_login(ftp, server)
        with pytest.raises(ftplib.Error) as refused:
            ftp.retrbinary("RETR down.bin", lambda _: None)
    finally:
        ftp.close()
    reply = str(refused.value)
    if kind == "vsftpd":
        # ... and then ends the session.
        assert reply.startswith("522 ") and "session reuse required" in reply
        assert "SSL version" in server.log_text() and "not reused" in server.log_text()
    else:
        assert reply.startswith("425 "), reply
        assert "client did not reuse TLS session" in server.log_text(), _explain(server)


def test_pure_ftpd_accepts_tls_data_without_session_reuse(
    make_real_server: MakeRealServer, pki: Pki
) -> None:
    server = make_real_server("pure-ftpd")
    server.make_file("down.bin", 1000)
    ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=10)
    try:
        _ftplib_login(ftp, server)
        received = io.BytesIO()
        assert ftp.retrbinary("RETR down.bin", received.write).startswith("226")
        ftp.quit()
    finally:
        ftp.close()
    assert len(received.getvalue()) == 1000


#: The reply each server gives a cleartext USER when TLS is required.
CLEARTEXT_REFUSALS = {
    "vsftpd": "530 Non-anonymous sessions must use encryption.",
    "proftpd": "550 SSL/TLS required on the control channel",
    "pure-ftpd": "421-Sorry, cleartext sessions and weak ciphers are not accepted",
}


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_cleartext_login_refused_when_tls_required(
    kind: str, make_real_server: MakeRealServer
) -> None:
    server = make_real_server(kind)
    ftp = ftplib.FTP(timeout=10)
    try:
        ftp.connect(server.host, server.port)
        with pytest.raises(ftplib.Error) as refused:
            ftp.sendcmd(f"USER {server.user}")
    finally:
        ftp.close()
    assert str(refused.value).startswith(CLEARTEXT_REFUSALS[kind])


#: The final reply to an upload whose TLS data connection ends without close_notify.
UNCLEAN_UPLOAD_REPLIES = {
    "vsftpd": "426 ",  # strict_ssl_read_eof=YES: "426 Failure reading network stream."
    "proftpd": "226 ",
    "pure-ftpd": "226",
}


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_upload_without_close_notify(kind: str, make_real_server: MakeRealServer, pki: Pki) -> None:
    """vsftpd fails an upload that is not ended by a TLS close_notify; the others accept it.

    TLS 1.2, so no TLS 1.3 session ticket is left unread on the data socket (closing a
    socket with unread input sends RST, and the server may lose the upload's tail).
    """
    server = make_real_server(kind, tls13=False)
    payload = b"u" * 1_000_000
    ftp = ReusingFTP_TLS(context=client_context(pki.ca_cert), timeout=10)
    try:
        _ftplib_login(ftp, server)
        ftp.voidcmd("TYPE I")
        conn, _ = ftp.ntransfercmd("STOR unclean.bin")
        conn.sendall(payload)
        os.close(conn.detach())  # plain TCP close under TLS: no close_notify
        try:
            reply = ftp.voidresp()
        except ftplib.Error as exc:
            reply = str(exc)
    finally:
        ftp.close()
    assert reply.startswith(UNCLEAN_UPLOAD_REPLIES[kind]), reply + _explain(server)
    if kind != "vsftpd":
        assert server.path("unclean.bin").read_bytes() == payload


# -- implicit FTPS -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", IMPLICIT_KINDS)
def test_implicit_tls(
    kind: str, make_real_server: MakeRealServer, pki: Pki, tmp_path: Path
) -> None:
    server = make_real_server(kind, implicit=True)
    assert server.url.startswith("ftps://")
    digest = server.make_file("down.bin", SIZE)
    local = tmp_path / "down.bin"
    result = run_curl([*_curl_base(server, pki), "-o", str(local), f"{server.url}/down.bin"])
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(local) == digest

    ftp = ImplicitReusingFTP_TLS(context=client_context(pki.ca_cert), timeout=20)
    try:
        _ftplib_login(ftp, server)
        received = io.BytesIO()
        assert ftp.retrbinary("RETR down.bin", received.write).startswith("226")
        assert ftp.storbinary("STOR up.bin", io.BytesIO(received.getvalue())).startswith("226")
        ftp.quit()
    finally:
        ftp.close()
    assert sha256_file(server.path("up.bin")) == digest


def test_pure_ftpd_has_no_implicit_mode(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="implicit"):
        PureFtpd(tmp_path, pki=pki, implicit=True)


# -- plain FTP ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_plain_ftp(kind: str, make_real_server: MakeRealServer, tmp_path: Path) -> None:
    server = make_real_server(kind, tls=False)
    digest = server.make_file("down.bin", SIZE)
    local = tmp_path / "down.bin"
    result = run_curl([*_curl_base(server, None), "-o", str(local), f"{server.url}/down.bin"])
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(local) == digest
    result = run_curl([*_curl_base(server, None), "-T", str(local), f"{server.url}/up.bin"])
    assert result.returncode == 0, _explain(server, result)
    assert sha256_file(server.path("up.bin")) == digest


# -- life cycle --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_stop_ends_server_and_its_sessions(kind: str, make_real_server: MakeRealServer) -> None:
    server = make_real_server(kind, tls=False)
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(server.host, server.port)
    ftp.login(server.user, server.password)
    try:
        assert server.is_running()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 8
        assert not server.is_running()
        with pytest.raises((ftplib.Error, OSError, EOFError)):
            ftp.voidcmd("NOOP")
            ftp.voidcmd("NOOP")
    finally:
        ftp.close()
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((server.host, server.port)) != 0
    assert server.log_text()


@pytest.mark.parametrize("kind", server_kinds)
def test_make_ftp_server_gives_every_kind(
    kind: str, make_ftp_server: MakeFtpServer, pki: Pki
) -> None:
    """``make_ftp_server`` starts each kind with the same login, FTPS required."""
    server = make_ftp_server(kind)
    server.path("hello.txt").write_bytes(b"hello\n")
    ftp = ReusingFTP_TLS(context=client_context(pki.ca_cert), timeout=10)
    try:
        ftp.connect(server.host, server.port)
        ftp.login(server.user, server.password)
        ftp.prot_p()
        assert "hello.txt" in ftp.nlst()
        ftp.quit()
    finally:
        ftp.close()


@pytest.mark.parametrize("kind", REAL_SERVER_KINDS)
def test_restart_keeps_port_and_greets_with_banner(
    kind: str, make_real_server: MakeRealServer
) -> None:
    server = make_real_server(kind, tls=False)
    port, passive = server.port, server.passive_ports
    first_pid = server.pid
    server.restart()
    assert (server.port, server.passive_ports) == (port, passive)
    assert server.pid != first_pid
    ftp = ftplib.FTP(timeout=10)
    try:
        welcome = ftp.connect(server.host, server.port)
        assert server.banner in welcome
        ftp.login(server.user, server.password)
        ftp.quit()
    finally:
        ftp.close()


def test_vsftpd_root_outside_private_pytest_folders(
    make_real_server: MakeRealServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """vsftpd enters the root as the test user: pytest's folders (reset to 0700 whenever
    another pytest session starts) must not lie on the way, or logins die with a cleartext
    ``500 OOPS`` that TLS clients report as garbage."""
    server = make_real_server("vsftpd", tls=False)
    user_base = tmp_path_factory.getbasetemp().parent  # /tmp/pytest-of-USER
    assert user_base not in server.root.parents
    if user_base.name.startswith("pytest-of-"):  # not with --basetemp
        user_base.chmod(0o700)  # what the next pytest session does
    ftp = ftplib.FTP(timeout=10)
    try:
        ftp.connect(server.host, server.port)
        ftp.login(server.user, server.password)
        assert ftp.pwd() == "/"
        ftp.quit()
    finally:
        ftp.close()
