"""End to end: FTPS backends (explicit and implicit), verified, with independent protection levels.

The backend here is pyftpdlib (TLS required); the Debian servers with their stricter
session-reuse rules are in ``test_interop.py``.
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki, make_client_cert, make_expired_server_cert, make_pki
from tests.support.clients import (
    ReusingFTP_TLS,
    client_context,
    make_random_file,
    sha256_file,
)
from tests.support.ports import free_port, free_port_range
from tests.test_e2e_core import Proxied, _retr, _sha, start_proxy

SIZE = 32 * 1024 * 1024


def _tls_backend(
    make_backend: Callable[..., PyftpdBackend], pki: Pki, **kwargs: object
) -> PyftpdBackend:
    return make_backend(
        tls_cert=kwargs.pop("cert", pki.server_cert),
        tls_key=kwargs.pop("key", pki.server_key),
        tls_required=True,
        **kwargs,
    )


def _url(backend: PyftpdBackend, implicit: bool = False) -> str:
    return f"{'ftps' if implicit else 'ftpes'}://127.0.0.1:{backend.port}"


def _proxy_to(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, url: str, *extra: str
) -> Proxied:
    proxied = start_proxy(make_proxy, backend, pki, "--backend", url, *extra)
    return proxied


@pytest.mark.parametrize("implicit", [False, True])
def test_plain_client_through_ftps_backend(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, implicit: bool
) -> None:
    """Protection levels are per side: the client speaks plain FTP, the backend PROT P."""
    backend = _tls_backend(make_backend, pki, implicit=implicit)
    digest = make_random_file(backend.path("big.bin"), SIZE)
    proxied = _proxy_to(
        make_proxy, backend, pki, _url(backend, implicit), "--backend-ca", str(pki.ca_cert)
    )
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(backend.user, backend.password)
    assert _sha(_retr(ftp, "big.bin")) == digest
    for index in range(10):  # ten transfers each way on one session
        payload = b"%d" % index * 100_000
        ftp.storbinary(f"STOR up{index}.bin", io.BytesIO(payload))
        assert _retr(ftp, f"up{index}.bin") == payload
    assert sorted(ftp.nlst()) == sorted(["big.bin", *(f"up{i}.bin" for i in range(10))])
    ftp.quit()
    for index in range(10):
        assert backend.path(f"up{index}.bin").read_bytes() == b"%d" % index * 100_000
    samples = proxied.metrics()
    backend_data = sum(
        value
        for key, value in samples.items()
        if key.startswith("ftpsproxy_tls_data_sessions_total{") and "side=backend" in key
    )
    assert backend_data == 1 + 20 + 1  # every backend data connection was TLS


def test_tls_client_through_ftps_backend_big_files(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tmp_path: Path
) -> None:
    backend = _tls_backend(make_backend, pki)
    digest = make_random_file(backend.path("big.bin"), SIZE)
    proxied = _proxy_to(make_proxy, backend, pki, _url(backend), "--backend-ca", str(pki.ca_cert))
    ftp = proxied.ftp_tls()
    data = _retr(ftp, "big.bin")
    assert _sha(data) == digest
    ftp.storbinary("STOR copy.bin", io.BytesIO(data), blocksize=256 * 1024)
    ftp.quit()
    assert sha256_file(backend.path("copy.bin")) == digest


def test_tls13_backend_uploads_are_never_truncated(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tmp_path: Path
) -> None:
    """The reference proxy's trap: closing the backend data connection with TLS 1.3 tickets
    unread makes Linux send RST and the backend drop unread upload bytes."""
    backend = _tls_backend(make_backend, pki)
    source = tmp_path / "sixteen.bin"
    digest = make_random_file(source, 16 * 1024 * 1024)
    proxied = _proxy_to(make_proxy, backend, pki, _url(backend), "--backend-ca", str(pki.ca_cert))
    ftp = proxied.ftp_tls()
    for index in range(20):
        with source.open("rb") as handle:
            ftp.storbinary(f"STOR u{index}.bin", handle, blocksize=256 * 1024)
    ftp.quit()
    for index in range(20):
        path = backend.path(f"u{index}.bin")
        assert path.stat().st_size == 16 * 1024 * 1024
        assert sha256_file(path) == digest


def _expect_421(proxied: Proxied, user: str, password: str) -> str:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    with pytest.raises(ftplib.error_temp, match=r"^421") as caught:
        ftp.login(user, password)
    ftp.close()
    return str(caught.value)


def test_backend_with_unknown_ca_is_refused(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other-ca", ca_name="someone else")
    backend = _tls_backend(make_backend, pki)
    proxied = _proxy_to(make_proxy, backend, pki, _url(backend), "--backend-ca", str(other.ca_cert))
    assert "TLS" in _expect_421(proxied, backend.user, backend.password)
    proxy = proxied.proxy
    proxy.wait_log(r"backend TLS failed: certificate verification failed")  # type: ignore[attr-defined]
    samples = proxied.metrics()
    key = "ftpsproxy_tls_handshake_failures_total{channel=control,reason=verification,side=backend}"
    assert samples[key] == 1


def test_backend_certificate_for_another_name_is_refused(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    backend = _tls_backend(make_backend, pki)
    proxied = _proxy_to(
        make_proxy, backend, pki, _url(backend),
        "--backend-ca", str(pki.ca_cert), "--backend-server-name", "ftp.example.org",
    )  # fmt: skip
    _expect_421(proxied, backend.user, backend.password)
    proxied.proxy.wait_log(r"certificate does not match ftp\.example\.org")  # type: ignore[attr-defined]


def test_backend_server_name_override_accepts_the_right_name(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    backend = _tls_backend(make_backend, pki)
    proxied = _proxy_to(
        make_proxy, backend, pki, _url(backend),
        "--backend-ca", str(pki.ca_cert), "--backend-server-name", "localhost",
    )  # fmt: skip
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(backend.user, backend.password)
    assert ftp.nlst() == []
    ftp.quit()


def test_expired_backend_certificate_is_refused_unless_insecure(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tmp_path: Path
) -> None:
    cert, key = make_expired_server_cert(pki, tmp_path / "expired")
    backend = _tls_backend(make_backend, pki, cert=cert, key=key)
    proxied = _proxy_to(make_proxy, backend, pki, _url(backend), "--backend-ca", str(pki.ca_cert))
    _expect_421(proxied, backend.user, backend.password)
    proxied.proxy.wait_log(r"certificate has expired")  # type: ignore[attr-defined]
    insecure = _proxy_to(make_proxy, backend, pki, _url(backend), "--backend-insecure")
    insecure.proxy.wait_log(r"verification is OFF")  # type: ignore[attr-defined]
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", insecure.port)
    ftp.login(backend.user, backend.password)
    ftp.quit()


def test_require_session_reuse_refuses_plain_ftplib_and_accepts_resuming_clients(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start_proxy(make_proxy, backend, pki, "--require-session-reuse")
    backend.path("f.txt").write_bytes(b"hello")
    stock = proxied.ftp_tls()  # ftplib.FTP_TLS never resumes
    with pytest.raises((OSError, ftplib.error_perm)):
        # ftplib sends RETR, reads 150, then handshakes: the refused handshake breaks it.
        _retr(stock, "f.txt")
    with pytest.raises(ftplib.error_perm, match=r"^522"):
        stock.getresp()  # ... and the refusal is an FTP reply, not a hang
    stock.voidcmd("NOOP")  # the session survives the refusal
    stock.quit()
    resuming = ReusingFTP_TLS(context=client_context(pki.ca_cert), timeout=30)
    resuming.connect("127.0.0.1", proxied.port)
    resuming.login(backend.user, backend.password)
    resuming.prot_p()
    assert _retr(resuming, "f.txt") == b"hello"
    resuming.quit()


def _client_cert_proxy(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, mode: str, *extra: str
) -> Proxied:
    return start_proxy(
        make_proxy, backend, pki,
        "--client-ca", str(pki.ca_cert), "--client-certificate", mode, *extra,
    )  # fmt: skip


def _ftp_with_cert(proxied: Proxied, cert: Path | None, key: Path | None) -> ftplib.FTP_TLS:
    context = client_context(proxied.pki.ca_cert)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    ftp = ftplib.FTP_TLS(context=context, timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.auth()
    return ftp


def test_required_client_certificate(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    proxied = _client_cert_proxy(make_proxy, backend, pki, "required")
    cert, key = make_client_cert(pki, tmp_path / "client", "demo")
    ftp = _ftp_with_cert(proxied, cert, key)
    ftp.login(backend.user, backend.password)
    ftp.prot_p()
    assert ftp.nlst() == []
    ftp.quit()
    proxied.proxy.wait_log(r"presented certificate CN=demo")  # type: ignore[attr-defined]
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, ftplib.Error)):
        nocert = _ftp_with_cert(proxied, None, None)
        nocert.login(backend.user, backend.password)
    stranger = make_pki(tmp_path / "stranger", ca_name="stranger CA")
    foreign_cert, foreign_key = make_client_cert(stranger, tmp_path / "foreign", "demo")
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, ftplib.Error)):
        foreign = _ftp_with_cert(proxied, foreign_cert, foreign_key)
        foreign.login(backend.user, backend.password)


def test_client_certificate_must_match_user(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    proxied = _client_cert_proxy(
        make_proxy, backend, pki, "optional", "--client-certificate-user-match"
    )
    cert, key = make_client_cert(pki, tmp_path / "client", "someone-else")
    ftp = _ftp_with_cert(proxied, cert, key)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(backend.user, backend.password)
    ftp.close()
    no_cert = _ftp_with_cert(proxied, None, None)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        no_cert.login(backend.user, backend.password)
    no_cert.close()
    cert, key = make_client_cert(pki, tmp_path / "client2", backend.user)
    good = _ftp_with_cert(proxied, cert, key)
    good.login(backend.user, backend.password)
    good.quit()


def test_sighup_reloads_certificate_and_survives_a_broken_one(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    port, low_high = free_port(), free_port_range(4)
    proxy = make_proxy(
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--certificate", str(cert), "--private-key", str(key),
        "--backend", backend.url, "--passive-ports", f"{low_high[0]}-{low_high[1]}",
        ports=[port],
    )  # fmt: skip
    before = _ftp_with_cert_at(port, pki.ca_cert)  # a session that spans the reloads
    before.login(backend.user, backend.password)
    before.prot_p()
    second = make_pki(tmp_path / "second", ca_name="second CA")
    shutil.copy(second.server_cert, cert)
    shutil.copy(second.server_key, key)
    os.kill(proxy.pid, signal.SIGHUP)
    proxy.wait_log(r"TLS certificate reloaded")
    fresh = _ftp_with_cert_at(port, second.ca_cert)  # new sessions get the new certificate
    fresh.login(backend.user, backend.password)
    fresh.quit()
    cert.write_text("not a certificate\n")
    os.kill(proxy.pid, signal.SIGHUP)
    proxy.wait_log(r"TLS reload failed, keeping the current certificate")
    still = _ftp_with_cert_at(port, second.ca_cert)
    still.login(backend.user, backend.password)
    still.quit()
    assert before.nlst() == []  # the old session and its data connections never dropped
    before.quit()


def _ftp_with_cert_at(port: int, ca: Path) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=client_context(ca), timeout=30)
    ftp.connect("127.0.0.1", port)
    return ftp


@pytest.mark.parametrize("tls", [False, True])
def test_backend_active_mode(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tls: bool
) -> None:
    """For backends that only allow active mode: the proxy sends EPRT/PORT to the backend."""
    backend = _tls_backend(make_backend, pki) if tls else make_backend()
    digest = make_random_file(backend.path("big.bin"), SIZE)
    url = _url(backend) if tls else backend.url
    extra = ["--backend-ca", str(pki.ca_cert)] if tls else []
    proxied = _proxy_to(make_proxy, backend, pki, url, "--backend-data-mode", "active", *extra)
    ftp = proxied.ftp_tls()
    assert _sha(_retr(ftp, "big.bin")) == digest
    ftp.storbinary("STOR back.bin", io.BytesIO(b"b" * 300_000))
    assert sorted(ftp.nlst()) == ["back.bin", "big.bin"]
    ftp.quit()
    assert backend.path("back.bin").read_bytes() == b"b" * 300_000
