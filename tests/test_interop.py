"""Interop matrix: real clients through the proxy to real servers, plain and FTPS backends.

Servers: pyftpdlib, and Debian's vsftpd (``require_ssl_reuse=YES``), ProFTPD (mod_tls,
reuse required) and Pure-FTPd, installed by ``tests/run.sh``. Clients: curl, lftp and
Python's ftplib, whose stock ``FTP_TLS`` cannot resume TLS sessions — through the proxy
it can talk to servers that require reuse, because the proxy resumes on its side.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeFtpServer, MakeProxy
from tests.support.certs import Pki
from tests.support.clients import (
    ImplicitFTP_TLS,
    client_context,
    make_random_file,
    require_tool,
    run_curl,
    run_lftp,
    sha256_file,
)
from tests.test_e2e_core import Proxied, _retr, _sha, start_proxy

SIZE = 32 * 1024 * 1024
IMPLICIT_CAPABLE = {"pyftpdlib", "vsftpd", "proftpd"}

# (server kind, backend mode): every server plain and explicit FTPS, and implicit FTPS
# where the server has it.
MATRIX = [
    (kind, mode)
    for kind in ("pyftpdlib", "vsftpd", "proftpd", "pure-ftpd")
    for mode in ("ftp", "ftpes", "ftps")
    if mode != "ftps" or kind in IMPLICIT_CAPABLE
]


def _ids(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1]}"


def _names(names: Any) -> list[str]:
    """Listed names without ``.`` and ``..`` (Pure-FTPd lists them)."""
    return sorted(name for name in names if name not in (".", ".."))


def _file(server: Any, name: str, size: int) -> str:
    if hasattr(server, "make_file"):
        return str(server.make_file(name, size))
    return make_random_file(server.path(name), size)


def _through_proxy(
    make_ftp_server: MakeFtpServer,
    make_proxy: MakeProxy,
    pki: Pki,
    kind: str,
    mode: str,
    **server_options: Any,
) -> tuple[Any, Proxied]:
    server = make_ftp_server(kind, tls=mode != "ftp", implicit=mode == "ftps", **server_options)
    url = f"{mode}://127.0.0.1:{server.port}"
    extra = ["--backend", url]
    if mode != "ftp":
        extra += ["--backend-ca", str(pki.ca_cert)]
    proxied = start_proxy(make_proxy, server, pki, *extra)  # type: ignore[arg-type]
    return server, proxied


@pytest.mark.parametrize("case", MATRIX, ids=_ids)
def test_curl(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, tmp_path: Path, case: Any
) -> None:
    require_tool("curl")
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, *case)
    digest = _file(server, "big.bin", SIZE)
    url = f"ftp://{server.user}:{server.password}@127.0.0.1:{proxied.port}/"
    tls = ["--ssl-reqd", "--cacert", str(pki.ca_cert)]
    out = tmp_path / "out.bin"
    for extra in ([], ["--disable-epsv"]):
        result = run_curl([*tls, *extra, "-o", str(out), url + "big.bin"])
        assert result.returncode == 0, result.stderr
        assert sha256_file(out) == digest
    result = run_curl([*tls, "-T", str(out), url + "up.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_file(server.path("up.bin")) == digest
    implicit = f"ftps://{server.user}:{server.password}@127.0.0.1:{proxied.implicit_port}/"
    result = run_curl(["--cacert", str(pki.ca_cert), "-l", implicit])
    assert result.returncode == 0, result.stderr
    assert _names(result.stdout.split()) == ["big.bin", "up.bin"]


@pytest.mark.parametrize("case", MATRIX, ids=_ids)
def test_lftp(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, tmp_path: Path, case: Any
) -> None:
    require_tool("lftp")
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, *case)
    digest = _file(server, "big.bin", SIZE)
    local = tmp_path / "got.bin"
    result = run_lftp(
        "set ftp:ssl-force true\nset ftp:ssl-protect-data true\n"
        f"set ssl:ca-file {pki.ca_cert}\n"
        f"open -u {server.user},{server.password} ftp://127.0.0.1:{proxied.port}\n"
        f"get big.bin -o {local}\n"
        f"put {local} -o back.bin\n"
        "cls -1\n"
        "set ftp:prefer-epsv no\n"
        f"get big.bin -o {local}.2\n"
        "bye\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_file(local) == digest == sha256_file(Path(f"{local}.2"))
    assert sha256_file(server.path("back.bin")) == digest
    assert _names(result.stdout.split()) == ["back.bin", "big.bin"]


@pytest.mark.parametrize("case", MATRIX, ids=_ids)
def test_ftplib_ten_transfers_in_a_row(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, case: Any
) -> None:
    """Stock ftplib.FTP_TLS (no session reuse) on the implicit frontend: reuse towards the
    backend is the proxy's, and it must hold past the first data connection."""
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, *case)
    digest = _file(server, "big.bin", SIZE)
    ftp = ImplicitFTP_TLS(context=client_context(pki.ca_cert), timeout=60)
    ftp.connect("127.0.0.1", proxied.implicit_port)
    ftp.login(server.user, server.password)
    ftp.prot_p()
    data = _retr(ftp, "big.bin")
    assert _sha(data) == digest
    ftp.storbinary("STOR copy.bin", io.BytesIO(data), blocksize=256 * 1024)
    for index in range(10):
        payload = bytes([index]) * (100_000 + index)
        ftp.storbinary(f"STOR f{index}", io.BytesIO(payload))
        assert _retr(ftp, f"f{index}") == payload
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert _names(line.split()[-1] for line in lines) == sorted(
        ["big.bin", "copy.bin", *(f"f{index}" for index in range(10))]
    )
    if kind_supports_mlsd(case[0]):
        entries = dict(ftp.mlsd())
        assert entries["copy.bin"]["size"] == str(SIZE)
    ftp.quit()
    assert sha256_file(server.path("copy.bin")) == digest
    samples = proxied.metrics()
    if case[1] != "ftp" and case[0] in ("vsftpd", "proftpd"):  # they require reuse
        resumed = samples.get("ftpsproxy_tls_data_sessions_total{resumed=true,side=backend}", 0)
        fresh = samples.get("ftpsproxy_tls_data_sessions_total{resumed=false,side=backend}", 0)
        assert fresh == 0 and resumed >= 22, samples


def kind_supports_mlsd(kind: str) -> bool:
    return kind != "vsftpd"  # vsftpd 3.0.3 has no MLSD


@pytest.mark.parametrize("kind", ["vsftpd", "pyftpdlib"])
def test_tls13_backend_uploads_are_complete_on_disk(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, tmp_path: Path, kind: str
) -> None:
    """20 uploads of 16 MiB over a TLS 1.3 backend leg, each checked on disk: the proxy
    reads the backend's session tickets and closes with close_notify, never with RST."""
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, kind, "ftpes")
    source = tmp_path / "sixteen.bin"
    digest = make_random_file(source, 16 * 1024 * 1024)
    ftp = proxied.ftp_tls()
    for index in range(20):
        with source.open("rb") as handle:
            ftp.storbinary(f"STOR u{index}.bin", handle, blocksize=256 * 1024)
    ftp.quit()
    for index in range(20):
        path = server.path(f"u{index}.bin")
        assert path.stat().st_size == 16 * 1024 * 1024, index
        assert sha256_file(path) == digest, index
    samples = proxied.metrics()
    assert samples["ftpsproxy_tls_handshakes_total{channel=control,side=backend,version=TLSv1.3}"]


def test_client_that_cannot_resume_is_refused_directly_but_served_through_proxy(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki
) -> None:
    """The selling point: vsftpd refuses stock ftplib (522); through the proxy it works."""
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, "vsftpd", "ftpes")
    _file(server, "small.bin", 1000)
    direct = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=30)
    direct.connect("127.0.0.1", server.port)
    direct.login(server.user, server.password)
    direct.prot_p()
    with pytest.raises((ftplib.Error, ssl.SSLError, OSError)):
        _retr(direct, "small.bin")
    direct.close()
    ftp = proxied.ftp_tls()
    assert len(_retr(ftp, "small.bin")) == 1000
    ftp.quit()


@pytest.mark.parametrize("kind", ["vsftpd", "proftpd"])
def test_tls12_capped_backend_leg(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, kind: str
) -> None:
    server = make_ftp_server(kind, tls=True)
    proxied = start_proxy(
        make_proxy, server, pki,  # type: ignore[arg-type]
        "--backend", f"ftpes://127.0.0.1:{server.port}", "--backend-ca", str(pki.ca_cert),
        "--backend-tls-max-version", "1.2",
    )  # fmt: skip
    digest = _file(server, "big.bin", 4 * 1024 * 1024)
    ftp = proxied.ftp_tls()
    for _ in range(3):
        assert _sha(_retr(ftp, "big.bin")) == digest
    ftp.quit()
    samples = proxied.metrics()
    assert samples["ftpsproxy_tls_handshakes_total{channel=control,side=backend,version=TLSv1.2}"]


@pytest.mark.parametrize("kind", ["vsftpd", "proftpd"])
@pytest.mark.parametrize("mode", ["ftp", "ftpes"])
def test_protocol_details_with_debian_servers(
    make_ftp_server: MakeFtpServer, make_proxy: MakeProxy, pki: Pki, kind: str, mode: str
) -> None:
    """Active mode, REST, APPE, STAT and ABOR during RETR and STOR, TYPE A, UTF-8 names."""
    server, proxied = _through_proxy(make_ftp_server, make_proxy, pki, kind, mode)
    _file(server, "big.bin", SIZE)
    whole = server.path("big.bin").read_bytes()
    ftp = proxied.ftp_tls()
    ftp.set_pasv(False)  # active towards the proxy; the proxy stays passive to the backend
    ftp.voidcmd("TYPE I")
    for offset in (1, 65_537, SIZE - 3):
        assert _retr_rest(ftp, offset) == whole[offset:]
    ftp.set_pasv(True)
    ftp.storbinary("STOR part.bin", io.BytesIO(whole[:1000]))
    ftp.storbinary("APPE part.bin", io.BytesIO(whole[1000:70_000]))
    assert server.path("part.bin").read_bytes() == whole[:70_000]
    name = "Übergröße  文件 .txt"
    ftp.sendcmd("OPTS UTF8 ON")
    ftp.storbinary(f"STOR {name}", io.BytesIO(b"utf8"))
    assert name in ftp.nlst()
    assert _retr(ftp, name) == b"utf8"
    ftp.voidcmd("TYPE A")
    ftp.storlines("STOR text.txt", io.BytesIO(b"one\ntwo\n"))
    lines: list[str] = []
    ftp.retrlines("RETR text.txt", lines.append)
    assert lines == ["one", "two"]
    ftp.voidcmd("TYPE I")
    # ABOR during a download, with STAT first: the session stays usable.
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(65536)
    assert ftp.sendcmd("STAT").startswith("213")
    ftp.putcmd("ABOR")
    _drain_and_close(conn)
    _expect_abort_replies(ftp)
    # ABOR during an upload.
    conn = ftp.transfercmd("STOR aborted.bin")
    conn.sendall(b"a" * (1024 * 1024))
    ftp.putcmd("ABOR")
    _drain_and_close(conn)
    _expect_abort_replies(ftp)
    assert "big.bin" in ftp.nlst()
    ftp.quit()
    samples = proxied.metrics()
    assert samples["ftpsproxy_passive_ports_in_use{}"] == 0
    assert samples["ftpsproxy_transfers_active{}"] == 0


def _retr_rest(ftp: ftplib.FTP, offset: int) -> bytes:
    buffer = io.BytesIO()
    ftp.retrbinary("RETR big.bin", buffer.write, rest=offset)
    return buffer.getvalue()


def _drain_and_close(conn: Any) -> None:
    conn.settimeout(10)
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass
    conn.close()


def _expect_abort_replies(ftp: ftplib.FTP) -> None:
    """RFC 959 §4.1.3: 426 for the transfer then 226 for ABOR, or only 225/226 when the
    transfer had ended; ProFTPD over TLS answers ABOR itself with 426. A NOOP marks the
    end of the replies, which are then checked."""
    ftp.putcmd("NOOP")
    codes: list[str] = []
    for _ in range(8):
        line = ftp.getline()
        if line[3:4] == "-":
            continue
        if line.startswith("200"):
            break
        codes.append(line[:3])
    assert codes and codes[0] in ("426", "451", "225", "226"), codes
    assert 1 <= len(codes) <= 2 and codes[-1] in ("225", "226", "426"), codes
