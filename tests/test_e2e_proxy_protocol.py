"""PROXY protocol in, end to end: a real twistd proxy behind a stand-in balancer.

The balancer is a socket bound to 127.0.0.2 that sends a v1 or v2 header naming another
loopback address as the client (tests/support/balancer.py); ftplib then speaks FTP or
FTPS over the same socket.  The proxy trusts 127.0.0.2/32 only.
"""

from __future__ import annotations

import ftplib
import io
import re
import time
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.balancer import (
    BALANCER,
    BalancedFTP,
    BalancedFTPS,
    closed_without_reply,
    connect,
    v1_header,
    v2_header,
    v2_local,
)
from tests.support.certs import Pki
from tests.support.clients import ReplyReader, client_context
from tests.support.ports import free_port
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

PAYLOAD = bytes(range(256)) * 512  # 128 KiB

REFUSED = "ftpsproxy_proxy_header_refusals_total{{channel={channel},reason={reason}}}"
FOREIGN = "ftpsproxy_data_connections_refused_total{reason=foreign_address}"


def start(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, *extra: str) -> Proxied:
    return start_proxy(
        make_proxy, backend, pki,
        "--proxy-protocol", "--proxy-protocol-from", f"{BALANCER}/32",
        "--tls-handshake-timeout", "1",  # also the header's deadline
        *extra,
    )  # fmt: skip


def samples_of(proxied: Proxied, name: str, labels: str) -> float:
    """The sum of *name*'s samples whose labels start with *labels*."""
    return sum(
        value
        for key, value in proxied.metrics().items()
        if key.startswith(f"{name}{{") and labels in key
    )


def login(ftp: ftplib.FTP, backend: PyftpdBackend) -> None:
    ftp.login(backend.user, backend.password)


def test_the_header_address_is_the_client_in_logs_xferlog_and_the_data_check(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    xferlog = tmp_path / "xferlog"
    proxied = start(make_proxy, backend, pki, "--xferlog", str(xferlog), "--passive-timeout", "2")
    # The balancer forwards only the control port: the client reaches the passive
    # port from its own address, the one the header named.
    ftp = BalancedFTP(connect(proxied.port, v1_header("127.0.0.7")), data_source="127.0.0.7")
    assert ftp.welcome.startswith("220")
    login(ftp, backend)
    ftp.storbinary("STOR up.bin", io.BytesIO(PAYLOAD))
    assert backend.path("up.bin").read_bytes() == PAYLOAD

    # A data connection from the balancer's address is not the session's client.
    ftp.data_source = BALANCER
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        ftp.storbinary("STOR stolen.bin", io.BytesIO(b"x"))
    assert proxied.metrics()[FOREIGN] == 1

    # This proxy reads no header on data connections: one sent there is data.
    ftp.data_source = "127.0.0.7"
    ftp.data_header = v2_header("127.0.0.7")
    ftp.storbinary("STOR kept.bin", io.BytesIO(PAYLOAD))
    assert backend.path("kept.bin").read_bytes() == v2_header("127.0.0.7") + PAYLOAD

    # PORT goes only to the client's own address: the header's, not the balancer's.
    with pytest.raises(ftplib.error_perm, match=r"^504"):
        ftp.sendcmd("PORT 127,0,0,2,200,10")
    assert ftp.sendcmd("PORT 127,0,0,7,200,10").startswith("200")
    ftp.quit()

    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    assert re.search(r"session \d+ start client=127\.0\.0\.7 mode=explicit", log), log
    assert "client=127.0.0.2" not in log
    wait_until(lambda: xferlog.exists() and len(xferlog.read_text().splitlines()) == 3, 10)
    for line in xferlog.read_text().splitlines():
        assert " 127.0.0.7 " in line and "127.0.0.2" not in line, line


def test_session_limits_and_the_lockout_count_the_header_address(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start(
        make_proxy, backend, pki,
        "--max-sessions-per-ip", "1", "--max-login-failures", "2",
        "--login-failure-delay", "0",
    )  # fmt: skip
    first = BalancedFTP(connect(proxied.port, v1_header("127.0.0.8")), data_source="127.0.0.8")
    # Same balancer, another client: not limited together with the first.
    other = BalancedFTP(connect(proxied.port, v2_header("127.0.0.9")), data_source="127.0.0.9")
    assert first.welcome.startswith("220") and other.welcome.startswith("220")
    with connect(proxied.port, v1_header("127.0.0.8")) as third:
        assert ReplyReader(third).reply() == "421 Too many sessions from your address."

    guesser = connect(proxied.port, v2_header("127.0.0.10"))
    guessing = BalancedFTP(guesser, data_source="127.0.0.10")
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            guessing.login(backend.user, "wrong")
    guessing.close()
    wait_until(lambda: "127.0.0.10" not in _open_session_clients(proxied), 10)
    with connect(proxied.port, v1_header("127.0.0.10")) as locked:
        assert ReplyReader(locked).reply().startswith("421 Too many failed logins")
    with connect(proxied.port, v1_header("127.0.0.11")) as unlocked:
        assert ReplyReader(unlocked).reply().startswith("220")
    first.close()
    other.close()


def _open_session_clients(proxied: Proxied) -> str:
    """The clients of sessions started and not yet ended, from the log (as one string)."""
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    started = dict(re.findall(r"session (\d+) start client=(\S+)", log))
    ended = set(re.findall(r"session (\d+) end", log))
    return " ".join(client for session, client in started.items() if session not in ended)


def test_untrusted_late_invalid_and_health_check_connections_get_no_session(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start(make_proxy, backend, pki)
    for _ in range(5):  # a valid header, but not from the balancer
        with connect(proxied.port, v1_header("127.0.0.7"), source="127.0.0.3") as untrusted:
            assert closed_without_reply(untrusted)
    with connect(proxied.port, b"") as silent:
        began = time.monotonic()
        assert closed_without_reply(silent)
        assert 0.5 < time.monotonic() - began < 5  # the 1 s deadline
    with connect(proxied.port, b"USER demo\r\n") as plain_ftp:
        assert closed_without_reply(plain_ftp)
    with connect(proxied.port, v2_local()) as health_check:
        assert closed_without_reply(health_check)

    def counted() -> bool:
        samples = proxied.metrics()
        return (
            samples[REFUSED.format(channel="control", reason="untrusted")] == 5
            and samples[REFUSED.format(channel="control", reason="timeout")] == 1
            and samples[REFUSED.format(channel="control", reason="invalid")] == 1
            and samples["ftpsproxy_proxy_health_checks_total{channel=control}"] == 1
        )

    wait_until(counted, 10)
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    assert " start client=" not in log
    # Five untrusted within seconds: one line, not five; the health check: none.
    assert log.count("closed a control connection from 127.0.0.3") == 1, log
    assert len(re.findall(r"\[ftpsproxy\.observe\.proxy_headers#info\]", log)) == 3, log


def test_implicit_and_explicit_ftps_behind_a_header(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start(make_proxy, backend, pki)
    backend.path("down.bin").write_bytes(PAYLOAD)
    # Implicit: the header, then the TLS handshake.  Explicit: the header, then AUTH TLS.
    for port, header, client, implicit in (
        (proxied.implicit_port, v2_header("127.0.0.12", dport=990), "127.0.0.12", True),
        (proxied.port, v1_header("127.0.0.15"), "127.0.0.15", False),
    ):
        ftp = BalancedFTPS(
            connect(port, header),
            client_context(pki.ca_cert),
            implicit=implicit,
            data_source=client,
        )
        assert ftp.welcome.startswith("220")
        login(ftp, backend)
        ftp.prot_p()
        received = io.BytesIO()
        ftp.retrbinary("RETR down.bin", received.write)
        assert received.getvalue() == PAYLOAD
        ftp.quit()
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    assert re.search(r"session \d+ start client=127\.0\.0\.12 mode=implicit", log), log
    assert re.search(r"session \d+ start client=127\.0\.0\.15 mode=explicit", log), log
    # Both control handshakes reached the session (through the header wrapper, for AUTH TLS).
    handshakes = samples_of(
        proxied, "ftpsproxy_tls_handshakes_total", "channel=control,side=client"
    )
    assert handshakes == 2


def test_passive_data_connections_with_a_header_are_checked_against_the_real_client(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start(
        make_proxy, backend, pki,
        "--proxy-protocol-data", "--public-address-from-proxy-header",
        "--passive-timeout", "2",
    )  # fmt: skip
    client, public = "127.0.0.13", "198.51.100.20"
    ftp = BalancedFTP(
        connect(proxied.port, v2_header(client, public)),
        data_source=BALANCER,  # the balancer forwards the passive ports too
        data_header=v1_header(client, public),
    )
    login(ftp, backend)
    assert "(198,51,100,20," in ftp.sendcmd("PASV")  # where the client connected to

    ftp.storbinary("STOR up.bin", io.BytesIO(PAYLOAD))
    assert backend.path("up.bin").read_bytes() == PAYLOAD  # the header is not in the file

    ftp.data_header = v2_header("127.0.0.14", public)  # someone else's data connection
    ftp.voidcmd("TYPE I")
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        # The proxy reads the header, then resets: before or after the 150 gets here.
        with ftp.transfercmd("STOR stolen.bin") as conn:
            assert closed_without_reply(conn)
        ftp.voidresp()
    stolen = backend.path("stolen.bin")  # the backend may have opened it for the STOR
    assert not stolen.exists() or stolen.read_bytes() == b""
    samples = proxied.metrics()
    assert samples[FOREIGN] == 1
    assert samples[REFUSED.format(channel="data", reason="untrusted")] == 0
    ftp.quit()


def test_one_listener_behind_the_balancer_and_one_for_clients_straight_in(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    """``haproxy:`` on one --listen: that listener alone expects the header, and with
    --proxy-protocol-data only its sessions' data connections do."""
    balanced_port = free_port()
    proxied = start_proxy(
        make_proxy, backend, pki,
        "--listen", f"haproxy:tcp:{balanced_port}:interface=127.0.0.1",
        "--proxy-protocol-from", f"{BALANCER}/32", "--proxy-protocol-data",
        "--tls-handshake-timeout", "1", "--passive-timeout", "2",
    )  # fmt: skip
    proxied.proxy.wait_listening([balanced_port])  # type: ignore[attr-defined]

    client, public = "127.0.0.21", "198.51.100.21"
    balanced = BalancedFTP(
        connect(balanced_port, v2_header(client, public)),
        data_source=BALANCER,
        data_header=v1_header(client, public),
    )
    login(balanced, backend)
    balanced.storbinary("STOR balanced.bin", io.BytesIO(PAYLOAD))
    assert backend.path("balanced.bin").read_bytes() == PAYLOAD  # the header read, not stored
    balanced.quit()

    # Straight in on the plain listener: no header is read, on control or data connections.
    straight = ftplib.FTP(timeout=10)
    straight.connect("127.0.0.1", proxied.port)
    login(straight, backend)
    straight.storbinary("STOR straight.bin", io.BytesIO(PAYLOAD))
    assert backend.path("straight.bin").read_bytes() == PAYLOAD
    straight.quit()
    with connect(proxied.port, v1_header("127.0.0.22")) as forged:
        reader = ReplyReader(forged)
        assert reader.reply().startswith("220")
        assert reader.reply().startswith("5")  # "PROXY TCP4 …" is an unknown command here

    # The haproxy: listener takes nothing but a header, and only from the balancer.
    untrusted = REFUSED.format(channel="control", reason="untrusted")
    before = proxied.metrics()[untrusted]
    with connect(balanced_port, b"USER anonymous\r\n", source="127.0.0.1") as direct:
        assert closed_without_reply(direct)
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    assert re.search(rf"session \d+ start client={client} mode=explicit", log), log
    assert re.search(r"session \d+ start client=127\.0\.0\.1 mode=explicit", log), log
    assert "client=127.0.0.22" not in log
    samples = proxied.metrics()
    assert samples[untrusted] == before + 1
    assert samples[REFUSED.format(channel="data", reason="untrusted")] == 0
    listeners = {key for key in samples if key.startswith("ftpsproxy_sessions_total{")}
    assert any(f"listener=haproxy:tcp:{balanced_port}:" in key for key in listeners), listeners
