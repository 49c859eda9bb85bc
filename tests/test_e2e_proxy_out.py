"""PROXY protocol out, end to end: the real twistd proxy tells its backends who the client is.

The client connects from 127.0.0.9-11, the proxy connects to the backend from 127.0.0.1:
a backend that reads the header sees the client's address, not the proxy's.  Two
receivers: ``HeaderRecorder`` (parses with Twisted's parsers, records the TLVs) and a
real one, HAProxy with ``accept-proxy`` in front of pyftpdlib, whose log shows the
addresses and the v2 TLVs it read.  Probes send LOCAL (v2) or UNKNOWN (v1): the backend
takes them, so ``/readyz`` is 200.
"""

from __future__ import annotations

import ftplib
import io
import re
import ssl
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import client_context
from tests.support.proxy_receiver import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_UNIQUE_ID,
    HAProxyReceiver,
    HeaderRecorder,
    ReceivedHeader,
    server_context,
)
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def readyz(proxied: Proxied) -> int:
    url = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def probed_up(proxied: Proxied) -> bool:
    """A probe succeeded and none failed (a backend still unknown is in use too: /readyz
    alone would not show the probes got through), and /readyz says ready."""
    probes = {
        key: value
        for key, value in proxied.metrics().items()
        if key.startswith("ftpsproxy_backend_probes_total{")
    }
    good = sum(value for key, value in probes.items() if "result=success" in key)
    return good >= 1 and good == sum(probes.values()) and readyz(proxied) == 200


def session_id(proxied: Proxied, client: str) -> str:
    """The id the proxy's log gives the session of *client* (one session per client here)."""
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    found = re.findall(rf"session (\d+) start client={re.escape(client)} ", log)
    assert len(found) == 1, log
    return str(found[0])


def plain_client(port: int, source: str) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=15)
    ftp.connect("127.0.0.1", port, source_address=(source, 0))
    return ftp


def tls_client(port: int, source: str, pki: Pki) -> ftplib.FTP_TLS:
    """Explicit FTPS from *source*, asking for SNI ``localhost`` (ftplib sends self.host)."""
    ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=15)
    ftp.connect("127.0.0.1", port, source_address=(source, 0))
    ftp.host = "localhost"
    ftp.auth()
    return ftp


def only_session(recorder: HeaderRecorder) -> ReceivedHeader:
    wait_until(lambda: recorder.sessions(), 15, "a session's header at the backend")
    [header] = recorder.sessions()
    return header


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_backend_reads_the_clients_address_not_the_proxys(
    make_proxy: MakeProxy, pki: Pki, version: str
) -> None:
    with HeaderRecorder() as recorder:
        proxied = start_proxy(make_proxy, recorder, pki, "--backend-proxy-protocol", version)  # type: ignore[arg-type]
        ftp = plain_client(proxied.port, "127.0.0.9")
        client = ftp.sock.getsockname()[:2]
        assert ftp.login("someone", "secret").startswith("230")
        ftp.quit()
        header = only_session(recorder)
        assert header.version == int(version[1])
        assert header.source == ("127.0.0.9", client[1])  # the client, its own port
        assert header.destination == ("127.0.0.1", proxied.port)  # where it connected
        assert header.peer[0] == "127.0.0.1"  # while the connection is the proxy's
        wait_until(lambda: header.commands, 10)
        assert header.commands[:2] == [b"USER someone", b"PASS secret"]
        if version == "v2":
            assert header.tlvs == {PP2_TYPE_UNIQUE_ID: session_id(proxied, "127.0.0.9").encode()}
        # The probes said "no client here" in the same version, and the backend is up.
        probe = b"PROXY UNKNOWN\r\n" if version == "v1" else V2_LOCAL
        assert recorder.probes() and all(p.raw == probe for p in recorder.probes())
        assert probed_up(proxied)
        assert recorder.errors == []


def test_v2_tlvs_carry_the_clients_tls_version_cipher_sni_and_the_session_id(
    make_proxy: MakeProxy, pki: Pki
) -> None:
    with HeaderRecorder() as recorder:
        proxied = start_proxy(make_proxy, recorder, pki, "--backend-proxy-protocol", "v2")  # type: ignore[arg-type]
        ftp = tls_client(proxied.port, "127.0.0.10", pki)
        assert isinstance(ftp.sock, ssl.SSLSocket)
        version, cipher = ftp.sock.version(), ftp.sock.cipher()[0]  # type: ignore[index]
        assert ftp.login("someone", "secret").startswith("230")
        ftp.quit()
        header = only_session(recorder)
        assert header.source is not None and header.source[0] == "127.0.0.10"
        assert header.tlvs[PP2_TYPE_AUTHORITY] == b"localhost"
        assert header.tlvs[PP2_TYPE_UNIQUE_ID] == session_id(proxied, "127.0.0.10").encode()
        assert header.ssl is not None
        bits, verify, sub = header.ssl
        assert bits == 0x01 and verify != 0  # TLS, no client certificate
        assert sub[PP2_SUBTYPE_SSL_VERSION] == str(version).encode()
        assert sub[PP2_SUBTYPE_SSL_CIPHER] == cipher.encode()


def test_an_implicit_ftps_backend_reads_v2_before_its_tls_handshake(
    make_proxy: MakeProxy, pki: Pki
) -> None:
    tls = server_context(pki.server_cert, pki.server_key)
    with HeaderRecorder(tls=tls) as recorder:
        proxied = start_proxy(
            make_proxy, recorder, pki,  # type: ignore[arg-type]
            "--backend-proxy-protocol", "v2", "--backend-ca", str(pki.ca_cert),
        )  # fmt: skip
        ftp = plain_client(proxied.port, "127.0.0.9")
        assert ftp.login("someone", "secret").startswith("230")
        ftp.quit()
        header = only_session(recorder)
        assert header.source is not None and header.source[0] == "127.0.0.9"
        wait_until(lambda: header.commands, 10)
        assert header.commands[:4] == [b"PBSZ 0", b"PROT P", b"USER someone", b"PASS secret"]
        assert probed_up(proxied)  # the probes: LOCAL, then TLS, 220, PBSZ/PROT, QUIT
        assert recorder.errors == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_with_accept_proxy_logs_the_client_and_the_tlvs(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path, version: str
) -> None:
    with HAProxyReceiver(tmp_path, backend.address) as haproxy:
        target: Any = SimpleNamespace(url=f"ftp://127.0.0.1:{haproxy.port}")
        proxied = start_proxy(make_proxy, target, pki, "--backend-proxy-protocol", version)
        ftp = tls_client(proxied.port, "127.0.0.11", pki)
        client_port = ftp.sock.getsockname()[1]
        ftp.login(backend.user, backend.password)
        ftp.prot_p()
        payload = bytes(range(256)) * 1024
        ftp.storbinary("STOR through-haproxy.bin", io.BytesIO(payload))
        ftp.quit()
        assert backend.path("through-haproxy.bin").read_bytes() == payload
        wanted = f"conn client=127.0.0.11:{client_port} frontend=127.0.0.1:{proxied.port} "
        wait_until(
            lambda: any(line.startswith(wanted) for line in haproxy.lines()),
            15,
            f"haproxy's log line {wanted!r}",
            error=lambda: AssertionError(haproxy.log_text()),
        )
        [line] = [line for line in haproxy.lines() if line.startswith(wanted)]
        if version == "v2":
            unique = session_id(proxied, "127.0.0.11")
            assert line == f"{wanted}authority=localhost unique_id={unique}", line
        else:
            assert line == f"{wanted}authority=- unique_id=-", line
        # Probes: haproxy takes their LOCAL / UNKNOWN header and passes them on.
        assert probed_up(proxied)
