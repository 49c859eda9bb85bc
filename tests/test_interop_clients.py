"""Go (rclone) and Java (Apache Commons Net) clients through the proxy to vsftpd.

Why these two: neither ever reads from an upload's data connection. Over TLS 1.3 the
proxy, the TLS server of that connection, sends NewSessionTicket messages after the
handshake; a client that never reads them closes a socket with unread input, Linux then
sends RST instead of FIN and the upload's tail is lost (vsftpd answers 426). curl, lftp
and ftplib read their data connections, so tests/test_interop.py cannot see this.
Java's TLS 1.3 close also sends a ``user_canceled`` alert before its close_notify, which
the proxy must not take for an unclean end of the upload.

Each cell: one 16 MiB transfer from the frontend in plain, explicit or implicit FTPS, to
vsftpd over explicit FTPS (``require_ssl_reuse=YES``); uploads are checked by sha256 on
vsftpd's disk, downloads on the local file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MakeProxy, MakeRealServer
from tests.support.certs import Pki
from tests.support.clients import make_random_file, sha256_file
from tests.support.interop_clients import (
    MODES,
    compile_java_client,
    rclone_remote,
    run_java_client,
    run_rclone,
)
from tests.support.servers import RealFtpServer
from tests.test_e2e_core import Proxied, start_proxy

SIZE = 16 * 1024 * 1024
DIRECTIONS = ("upload", "download")

#: (mode, direction, TLS protocol the client is limited to, or None for its default 1.3)
RCLONE_CASES = [(mode, direction, None) for mode in MODES for direction in DIRECTIONS]
#: Java can also cap TLS at 1.2 (the proxy has no maximum for its frontend): uploads pass.
JAVA_CASES = [
    *RCLONE_CASES,
    ("explicit", "upload", "TLSv1.2"),
    ("implicit", "upload", "TLSv1.2"),
]

#: Runs one transfer: (local file, remote name) -> the client's process result.
Transfer = Callable[[Path, str], "subprocess.CompletedProcess[str]"]


def _ids(client: str) -> Callable[[tuple[str, str, str | None]], str]:
    def name(case: tuple[str, str, str | None]) -> str:
        mode, direction, protocol = case
        suffix = "" if protocol is None else "-tls" + protocol.removeprefix("TLSv")
        return f"{client}-{mode}-{direction}{suffix}"

    return name


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FtpsTransfer.java compiled once per session."""
    return compile_java_client(tmp_path_factory.mktemp("java"))


def _vsftpd_through_proxy(
    make_real_server: MakeRealServer, make_proxy: MakeProxy, pki: Pki
) -> tuple[RealFtpServer, Proxied]:
    server = make_real_server("vsftpd")
    proxied = start_proxy(
        make_proxy, server, pki,  # type: ignore[arg-type]
        "--backend", f"ftpes://127.0.0.1:{server.port}", "--backend-ca", str(pki.ca_cert),
    )  # fmt: skip
    return server, proxied


def _frontend_port(proxied: Proxied, mode: str) -> int:
    return proxied.implicit_port if mode == "implicit" else proxied.port


def _check_cell(
    server: RealFtpServer,
    proxied: Proxied,
    tmp_path: Path,
    case: tuple[str, str, str | None],
    upload: Transfer,
    download: Transfer,
) -> None:
    """One transfer in the cell's direction, checked by sha256 at its destination."""
    mode, direction, protocol = case
    local = tmp_path / "local.bin"
    if direction == "upload":
        digest = make_random_file(local, SIZE)
        result = upload(local, "up.bin")
        destination = server.path("up.bin")
    else:
        digest = server.make_file("down.bin", SIZE)
        result = download(local, "down.bin")
        destination = local
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    assert destination.stat().st_size == SIZE
    assert sha256_file(destination) == digest
    if mode != "plain":  # the client's data connection had the TLS version meant
        version = protocol or "TLSv1.3"
        key = f"ftpsproxy_tls_handshakes_total{{channel=data,side=client,version={version}}}"
        assert proxied.metrics().get(key, 0) >= 1, key


@pytest.mark.parametrize("case", RCLONE_CASES, ids=_ids("rclone"))
def test_rclone(
    make_real_server: MakeRealServer,
    make_proxy: MakeProxy,
    pki: Pki,
    tmp_path: Path,
    case: tuple[str, str, str | None],
) -> None:
    """rclone (Go crypto/tls, jlaffaye/ftp): ``copyto`` one way or the other."""
    server, proxied = _vsftpd_through_proxy(make_real_server, make_proxy, pki)
    mode = case[0]
    port = _frontend_port(proxied, mode)
    remote = rclone_remote("127.0.0.1", port, mode, server.user, server.password)
    _check_cell(
        server,
        proxied,
        tmp_path,
        case,
        upload=lambda local, name: run_rclone(["copyto", str(local), remote + name]),
        download=lambda local, name: run_rclone(["copyto", remote + name, str(local)]),
    )


@pytest.mark.parametrize("case", JAVA_CASES, ids=_ids("java"))
def test_java_commons_net(
    make_real_server: MakeRealServer,
    make_proxy: MakeProxy,
    pki: Pki,
    tmp_path: Path,
    java_classes: Path,
    case: tuple[str, str, str | None],
) -> None:
    """Apache Commons Net ``FTPSClient`` (JDK TLS): ``storeFile`` / ``retrieveFile``."""
    server, proxied = _vsftpd_through_proxy(make_real_server, make_proxy, pki)
    mode, _, protocol = case
    port = _frontend_port(proxied, mode)

    def transfer(direction: str) -> Transfer:
        return lambda local, name: run_java_client(
            java_classes, "127.0.0.1", port, mode, server.user, server.password,
            direction, local, name, tls_protocol=protocol,
        )  # fmt: skip

    _check_cell(server, proxied, tmp_path, case, upload=transfer("put"), download=transfer("get"))
