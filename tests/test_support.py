"""Self-tests of the test infrastructure, without the proxy.

If these fail, a proxy test failure means nothing: the backend, the PKI or a client
is broken, not the proxy.
"""

from __future__ import annotations

import ftplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import interop_clients
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki, make_client_cert, make_expired_server_cert, make_pki
from tests.support.ci import require
from tests.support.clients import (
    ImplicitFTP_TLS,
    ImplicitReusingFTP_TLS,
    ReusingFTP_TLS,
    client_context,
    make_random_file,
    require_tool,
    run_curl,
    run_lftp,
    sha256_file,
)
from tests.support.ports import free_port, free_port_range, has_ipv6_loopback
from tests.support.proxy import CLEAN_EXIT_CODES, ProxyError, ProxyProcess
from tests.support.waiting import wait_until

SIZE = 4 * 1024 * 1024


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "payload.bin"
    return path, make_random_file(path, SIZE)


def _userinfo(backend: PyftpdBackend) -> str:
    return f"{backend.user}:{backend.password}"


def _url(backend: PyftpdBackend, name: str) -> str:
    scheme, rest = backend.url.split("://", 1)
    return f"{scheme}://{_userinfo(backend)}@{rest}/{name}"


# -- ports and PKI -------------------------------------------------------------------


def test_free_port_ranges_are_never_handed_out_twice_in_one_process() -> None:
    """A backend binds its passive ports lazily: a range that looks free may be taken."""
    ranges = [free_port_range(50) for _ in range(40)]
    ports = [port for first, last in ranges for port in range(first, last + 1)]
    assert len(ports) == len(set(ports)) == 2000


def test_free_port_range_is_contiguous_and_bindable() -> None:
    first, last = free_port_range(8)
    assert last - first == 7
    # Below the kernel's ephemeral ports, which outgoing connections could take meanwhile.
    ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert 10000 <= first and last < max(ephemeral_low, 15000)
    socks = []
    try:
        for port in range(first, last + 1):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", port))
    finally:
        for sock in socks:
            sock.close()
    assert 0 < free_port() < 65536


def _openssl_verify(ca: Path, cert: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    openssl = require_tool("openssl")
    return subprocess.run(
        [openssl, "verify", "-CAfile", str(ca), *extra, str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_pki_verifies_with_openssl(pki: Pki, tmp_path: Path) -> None:
    ok = _openssl_verify(pki.ca_cert, pki.server_cert, "-purpose", "sslserver")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in ("localhost", "127.0.0.1", "::1"):
        flag = "-verify_hostname" if name == "localhost" else "-verify_ip"
        res = _openssl_verify(pki.ca_cert, pki.server_cert, flag, name)
        assert res.returncode == 0, (name, res.stdout + res.stderr)

    client_cert, client_key = make_client_cert(pki, tmp_path, "alice")
    assert client_key.exists()
    res = _openssl_verify(pki.ca_cert, client_cert, "-purpose", "sslclient")
    assert res.returncode == 0, res.stdout + res.stderr

    expired_cert, _ = make_expired_server_cert(pki, tmp_path)
    res = _openssl_verify(pki.ca_cert, expired_cert)
    assert res.returncode != 0 and "expired" in (res.stdout + res.stderr)

    other = make_pki(tmp_path / "other", ca_name="unrelated CA")
    res = _openssl_verify(other.ca_cert, pki.server_cert)
    assert res.returncode != 0


def test_ec_pki_works_with_python_ssl(tmp_path: Path) -> None:
    ec_pki = make_pki(tmp_path, key_type="ec")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(ec_pki.server_combined)
    client_ctx = client_context(ec_pki.ca_cert)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = client_ctx.wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    with server, client:
        thread = threading.Thread(target=server.do_handshake)
        thread.start()
        client.do_handshake()
        thread.join(10)
        assert client.version() is not None


# -- backend with curl ---------------------------------------------------------------


def test_plain_backend_curl(
    backend: PyftpdBackend, payload: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = payload
    up = run_curl(["-T", str(src), _url(backend, "up.bin")])
    assert up.returncode == 0, up.stderr
    assert sha256_file(backend.path("up.bin")) == digest

    out = tmp_path / "down.bin"
    down = run_curl(["-o", str(out), _url(backend, "up.bin")])
    assert down.returncode == 0, down.stderr
    assert sha256_file(out) == digest

    # PASV instead of EPSV, and active mode, both reach the backend.
    for extra in (["--disable-epsv"], ["-P", "127.0.0.1"]):
        res = run_curl([*extra, "-o", str(out), _url(backend, "up.bin")])
        assert res.returncode == 0, (extra, res.stderr)
        assert sha256_file(out) == digest

    listing = run_curl(["-l", _url(backend, "")])
    assert listing.returncode == 0 and "up.bin" in listing.stdout.split()


def test_bad_password_is_refused(backend: PyftpdBackend) -> None:
    url = f"ftp://{backend.user}:wrong@127.0.0.1:{backend.port}/"
    res = run_curl(["-l", url])
    assert res.returncode == 67, res  # CURLE_LOGIN_DENIED


def test_tls_backend_curl(
    tls_backend: PyftpdBackend, pki: Pki, payload: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = payload
    tls = ["--ssl-reqd", "--cacert", str(pki.ca_cert)]
    up = run_curl([*tls, "-T", str(src), _url(tls_backend, "up.bin")])
    assert up.returncode == 0, up.stderr
    assert sha256_file(tls_backend.path("up.bin")) == digest

    out = tmp_path / "down.bin"
    down = run_curl([*tls, "-o", str(out), _url(tls_backend, "up.bin")])
    assert down.returncode == 0, down.stderr
    assert sha256_file(out) == digest

    # The backend requires TLS: a plain login is refused.
    plain = run_curl(["-l", _url(tls_backend, "")])
    assert plain.returncode != 0

    # And the client really verifies: a CA that did not sign the server is rejected.
    other = make_pki(tmp_path / "other")
    res = run_curl(["--ssl-reqd", "--cacert", str(other.ca_cert), "-l", _url(tls_backend, "")])
    assert res.returncode == 60, res  # CURLE_PEER_FAILED_VERIFICATION


def test_implicit_backend_curl(
    make_backend: Callable[..., PyftpdBackend], pki: Pki, payload: tuple[Path, str], tmp_path: Path
) -> None:
    backend = make_backend(tls_cert=pki.server_cert, tls_key=pki.server_key, implicit=True)
    assert backend.url.startswith("ftps://")
    # Implicit means nothing in clear: the greeting waits for the TLS handshake.
    with socket.create_connection(backend.address, timeout=0.5) as raw:
        with pytest.raises(TimeoutError):
            raw.recv(100)
    src, digest = payload
    ca = ["--cacert", str(pki.ca_cert)]
    up = run_curl([*ca, "-T", str(src), _url(backend, "up.bin")])
    assert up.returncode == 0, up.stderr
    out = tmp_path / "down.bin"
    down = run_curl([*ca, "-o", str(out), _url(backend, "up.bin")])
    assert down.returncode == 0, down.stderr
    assert sha256_file(out) == digest == sha256_file(backend.path("up.bin"))


# -- backend with lftp ---------------------------------------------------------------


def _lftp_open(backend: PyftpdBackend) -> str:
    return f"open -u {backend.user},{backend.password} {backend.url}\n"


def test_plain_backend_lftp(
    backend: PyftpdBackend, payload: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = payload
    out = tmp_path / "down.bin"
    res = run_lftp(
        "set ftp:ssl-allow no\n"
        + _lftp_open(backend)
        + f"put {src} -o up.bin\nget up.bin -o {out}\n"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert sha256_file(backend.path("up.bin")) == digest == sha256_file(out)


def test_tls_backend_lftp(
    tls_backend: PyftpdBackend, pki: Pki, payload: tuple[Path, str], tmp_path: Path
) -> None:
    src, digest = payload
    out = tmp_path / "down.bin"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("alpha\n")
    (tree / "b.txt").write_text("beta\n")
    mirrored = tmp_path / "mirrored"
    res = run_lftp(
        "set ftp:ssl-force true\n"
        "set ftp:ssl-protect-data true\n"
        f"set ssl:ca-file {pki.ca_cert}\n"
        "set ftp:prefer-epsv no\n" + _lftp_open(tls_backend) + f"put {src} -o up.bin\n"
        f"get up.bin -o {out}\n"
        f"mirror -R {tree} tree\n"
        f"mirror tree {mirrored}\n"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert sha256_file(tls_backend.path("up.bin")) == digest == sha256_file(out)
    assert (tls_backend.path("tree") / "sub" / "a.txt").read_text() == "alpha\n"
    assert (mirrored / "sub" / "a.txt").read_text() == "alpha\n"
    assert (mirrored / "b.txt").read_text() == "beta\n"


def test_lftp_failure_exits_nonzero_quickly(backend: PyftpdBackend) -> None:
    started = time.monotonic()
    res = run_lftp(
        f"set ftp:ssl-allow no\nopen -u {backend.user},wrong {backend.url}\nls\n",
        timeout=60,
    )
    assert res.returncode != 0
    assert time.monotonic() - started < 30


# -- backend with ftplib -------------------------------------------------------------


def _ftplib_roundtrip(ftp: ftplib.FTP, src: Path, digest: str, tmp_path: Path) -> None:
    with open(src, "rb") as f:
        ftp.storbinary("STOR up.bin", f)
    out = tmp_path / "ftplib-down.bin"
    with open(out, "wb") as f:
        ftp.retrbinary("RETR up.bin", f.write)
    assert sha256_file(out) == digest
    assert "up.bin" in ftp.nlst()


@pytest.mark.parametrize("cls", [ftplib.FTP_TLS, ReusingFTP_TLS], ids=["FTP_TLS", "Reusing"])
def test_tls_backend_ftplib(
    cls: type[ftplib.FTP_TLS],
    tls_backend: PyftpdBackend,
    pki: Pki,
    payload: tuple[Path, str],
    tmp_path: Path,
) -> None:
    src, digest = payload
    with cls(context=client_context(pki.ca_cert), timeout=30) as ftp:
        ftp.connect(tls_backend.host, tls_backend.port)
        ftp.login(tls_backend.user, tls_backend.password)
        ftp.prot_p()
        _ftplib_roundtrip(ftp, src, digest, tmp_path)
        ftp.set_pasv(False)  # active mode too
        _ftplib_roundtrip(ftp, src, digest, tmp_path)
    assert sha256_file(tls_backend.path("up.bin")) == digest


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reused"])
def test_data_connection_session_reuse(tls_backend: PyftpdBackend, pki: Pki, reuse: bool) -> None:
    """Only the Reusing client resumes the control session on the data connection."""
    cls = ReusingFTP_TLS if reuse else ftplib.FTP_TLS
    with cls(context=client_context(pki.ca_cert), timeout=30) as ftp:
        ftp.connect(tls_backend.host, tls_backend.port)
        ftp.login(tls_backend.user, tls_backend.password)
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        conn, _ = ftp.ntransfercmd("LIST")
        assert isinstance(conn, ssl.SSLSocket)
        reused = conn.session_reused
        conn.recv(65536)
        conn.unwrap()
        conn.close()
        ftp.voidresp()
    assert reused is reuse


@pytest.mark.parametrize("cls", [ImplicitFTP_TLS, ImplicitReusingFTP_TLS])
def test_implicit_backend_ftplib(
    cls: type[ImplicitFTP_TLS],
    make_backend: Callable[..., PyftpdBackend],
    pki: Pki,
    payload: tuple[Path, str],
    tmp_path: Path,
) -> None:
    backend = make_backend(
        tls_cert=pki.server_cert, tls_key=pki.server_key, implicit=True, tls_required=True
    )
    src, digest = payload
    with cls(context=client_context(pki.ca_cert), timeout=30) as ftp:
        welcome = ftp.connect(backend.host, backend.port)
        assert welcome.startswith("220")
        assert isinstance(ftp.sock, ssl.SSLSocket)
        ftp.login(backend.user, backend.password)
        ftp.prot_p()
        _ftplib_roundtrip(ftp, src, digest, tmp_path)


def test_backend_options_and_ipv6(
    make_backend: Callable[..., PyftpdBackend], tmp_path: Path
) -> None:
    low, high = free_port_range(4)
    backend = make_backend(banner="backend-A says hi", passive_ports=(low, high))
    with ftplib.FTP() as ftp:
        assert "backend-A says hi" in ftp.connect(backend.host, backend.port, timeout=30)
        ftp.login(backend.user, backend.password)
        ftp.voidcmd("TYPE I")
        _, port = ftplib.parse227(ftp.sendcmd("PASV"))
        assert low <= port <= high

    require(has_ipv6_loopback(), "no IPv6 loopback (::1) on this machine")
    v6 = make_backend(ipv6=True, root=tmp_path / "v6-root")
    assert v6.url == f"ftp://[::1]:{v6.port}"
    with ftplib.FTP() as ftp:
        ftp.connect("::1", v6.port, timeout=30)
        ftp.login(v6.user, v6.password)
        assert ftp.nlst() == []


def test_backend_stops_on_sigterm(tmp_path: Path) -> None:
    backend = PyftpdBackend(tmp_path / "root").start()
    assert backend.is_running()
    started = time.monotonic()
    assert backend.stop() == 0
    assert time.monotonic() - started < 5
    assert not backend.is_running()


# -- proxy process wrapper (exercised with twistd's own web plugin) ------------------


def test_proxy_process_wrapper(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    proc = ProxyProcess(
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--path", str(tmp_path / "www")],
        tmp_path / "web",
        plugin="web",
    )
    with proc:
        proc.wait_listening([port])
        assert proc.is_listening(port) and not proc.is_listening(free_port())
        assert proc.rss_bytes() > 1024 * 1024
        assert proc.fd_count() > 3
        proc.wait_log(r"Site starting on")
        assert proc.handles_sigterm()
        assert proc.stop() in CLEAN_EXIT_CODES
    assert "Main loop terminated" in proc.log_text()
    assert not proc.is_running()


def test_proxy_process_reports_early_death(tmp_path: Path) -> None:
    proc = ProxyProcess([], tmp_path / "dead", plugin="no-such-plugin")
    with proc, pytest.raises(ProxyError, match="no-such-plugin"):
        proc.wait_listening([free_port()], timeout=15)


def test_require_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("no-such-tool-ftpsproxy")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-tool-ftpsproxy")
    assert require_tool("sh")


def test_ci_rule_for_anything_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing kernel feature, IPv6, tool or server skips with its reason, or fails
    under CI=true: there everything is installed, and a skip would hide a broken setup."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no IPv6 loopback .*CI=true"):
        require(False, "no IPv6 loopback")
    require(True, "never shown")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"^splice\(2\) not available$"):
        require(False, "splice(2) not available")


def test_wait_until_returns_the_time_or_says_what_it_waited_for() -> None:
    values = iter([False, False, True])
    assert 0 <= wait_until(lambda: next(values), 5, interval=0.01) < 5
    with pytest.raises(AssertionError, match=r"the moon not reached within 0\.05 s"):
        wait_until(lambda: False, 0.05, "the moon", interval=0.01)
    with pytest.raises(TimeoutError, match="late"):
        wait_until(lambda: False, 0.05, interval=0.01, error=lambda: TimeoutError("late"))


def test_java_client_needs_commons_net(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing jar is a skip, or a failure under CI=true, like a missing tool."""
    monkeypatch.setattr(interop_clients, "COMMONS_NET_JAR", tmp_path / "missing.jar")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="libcommons-net-java"):
        interop_clients.compile_java_client(tmp_path)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="libcommons-net-java"):
        interop_clients.compile_java_client(tmp_path)
