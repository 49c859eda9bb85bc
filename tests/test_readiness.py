"""/readyz and ftpsproxy_backend_up against real backends: ready means a login can work.

The probe sets a backend session up as a login would (greeting, TLS with the session's
verification), says QUIT and closes; it is no client session.  Issue 13: with a wrong
``--backend-ca`` every login got 421 while /readyz said 200.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import cast

import pytest

from tests.conftest import MakeProxy, MakeRealServer
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki, make_pki
from tests.support.faults import FakeBackend, FakeConnection, sends, silent
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

FAST = ("--health-interval", "0.2")


def _readyz(proxied: Proxied) -> tuple[int, str]:
    url = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _wait_ready(proxied: Proxied, status: int) -> str:
    """The /readyz body once it answers *status* after a probe."""
    answers: list[tuple[int, str]] = []

    def probed() -> bool:
        answers.append(_readyz(proxied))
        return answers[-1][0] == status and "not probed yet" not in answers[-1][1]

    wait_until(probed, 15, f"/readyz {status}")
    return answers[-1][1]


def _assert_no_client_session(proxied: Proxied) -> None:
    """Probes are not sessions: no session series moved, no session line in the log."""
    samples = proxied.metrics()
    counted = {
        key: value
        for key, value in samples.items()
        if key.startswith(
            (
                "ftpsproxy_sessions_total",
                "ftpsproxy_sessions_active",
                "ftpsproxy_backend_connects_total",
                "ftpsproxy_logins_total",
            )
        )
        and value
    }
    assert counted == {}
    assert samples["ftpsproxy_session_duration_seconds_count{}"] == 0
    assert samples["ftpsproxy_backend_connect_seconds_count{backend=default}"] == 0
    assert " session " not in proxied.proxy.log_text()


def _probe_connections(proxied: Proxied, backend_port: int) -> int:
    """The proxy's open connections to the backend (closed ones have no socket left)."""
    return sum(1 for _, remote, _ in proxied.proxy.tcp_connections() if remote == backend_port)


# -- (a) a plain pyftpdlib backend -------------------------------------------------------------


def test_plain_backend_is_ready_and_probes_are_no_sessions(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start_proxy(make_proxy, backend, pki, *FAST)
    assert _wait_ready(proxied, 200) == "ok\n"
    assert proxied.metrics()["ftpsproxy_backend_up{backend=default}"] == 1
    # Several probes later: still one connection at most, none a session.
    for _ in range(10):
        assert _probe_connections(proxied, backend.port) <= 1
        time.sleep(0.1)
    _assert_no_client_session(proxied)


def _polite_server(connection: FakeConnection) -> None:
    """Greets, answers QUIT with 221, then waits for the peer (the probe) to close."""
    connection.send(b"220-fake FTP server\r\n220 ready.\r\n")
    if connection.readline(timeout=10) == b"QUIT":
        connection.send(b"221 Goodbye.\r\n")
    connection.hold(timeout=10)


def test_probe_says_quit_and_closes_its_connection(make_proxy: MakeProxy, pki: Pki) -> None:
    with FakeBackend(_polite_server) as fake:
        proxied = start_proxy(make_proxy, cast(PyftpdBackend, fake), pki, *FAST)
        assert _wait_ready(proxied, 200) == "ok\n"
        wait_until(lambda: fake.accepted() >= 3, 10, "three probes")
        first = fake.connections[:2]
        wait_until(lambda: all(c.closed for c in first), 10, "the probes' connections closed")
        # closed by the proxy (the fake holds until its peer closes), after a polite QUIT
        assert [(c.received, c.peer_closed) for c in first] == [([b"QUIT"], True)] * 2
        _assert_no_client_session(proxied)


# -- (b) vsftpd with TLS: the right CA, and a wrong one -----------------------------------------


@pytest.mark.parametrize("scheme", ["ftpes", "ftps"])
def test_vsftpd_backend_ready_only_with_the_right_ca(
    make_real_server: MakeRealServer,
    make_proxy: MakeProxy,
    pki: Pki,
    tmp_path: Path,
    scheme: str,
) -> None:
    server = make_real_server("vsftpd", implicit=scheme == "ftps")
    url = f"{scheme}://127.0.0.1:{server.port}"
    backend = cast(PyftpdBackend, server)  # start_proxy reads only .url; --backend overrides it

    right = start_proxy(make_proxy, backend, pki, *FAST, "--backend", url,
                        "--backend-ca", str(pki.ca_cert))  # fmt: skip
    assert _wait_ready(right, 200) == "ok\n"
    samples = right.metrics()
    assert samples["ftpsproxy_backend_up{backend=default}"] == 1
    assert not any(
        value for key, value in samples.items() if key.startswith("ftpsproxy_tls_handshake_fail")
    )
    handshakes = "ftpsproxy_tls_handshakes_total{channel=probe,side=backend,version=TLSv1.3}"
    assert samples[handshakes] >= 1
    _assert_no_client_session(right)

    other_ca = make_pki(tmp_path / "other-ca", ca_name="not the backend's CA").ca_cert
    wrong = start_proxy(make_proxy, backend, pki, *FAST, "--backend", url,
                        "--backend-ca", str(other_ca))  # fmt: skip
    body = _wait_ready(wrong, 503)
    assert body.startswith(
        f"no backend ready: backend default ({url}) down: "
        "TLS handshake failed: certificate verification failed: "
    ), body
    wait_until(
        lambda: wrong.metrics()["ftpsproxy_backend_up{backend=default}"] == 0, 5, "backend_up 0"
    )
    failures = (
        "ftpsproxy_tls_handshake_failures_total{channel=probe,reason=verification,side=backend}"
    )
    wait_until(lambda: wrong.metrics()[failures] >= 3, 10, "three failed probes")
    # Probes go on every 0.2 s; the log says it once.
    log = wrong.proxy.log_text()
    assert log.count("backend default is down") == 1, log
    for _ in range(10):  # no connection left behind by a failed handshake
        assert _probe_connections(wrong, server.port) <= 1
        time.sleep(0.1)
    _assert_no_client_session(wrong)


# -- (c) backends that accept and never greet, or greet with 421 ---------------------------------


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (silent, "no greeting within 0.5s"),
        (sends(b"421 Too many users.\r\n"), "greeting 421: Too many users."),
    ],
    ids=["silent", "421"],
)
def test_backend_that_does_not_greet_220_is_not_ready(
    make_proxy: MakeProxy, pki: Pki, behaviour: object, reason: str
) -> None:
    with FakeBackend(behaviour) as fake:  # type: ignore[arg-type]
        proxied = start_proxy(
            make_proxy, cast(PyftpdBackend, fake), pki, *FAST, "--backend-connect-timeout", "0.5"
        )
        expected = f"no backend ready: backend default ({fake.url}) down: {reason}\n"
        assert _wait_ready(proxied, 503) == expected
        assert proxied.metrics()["ftpsproxy_backend_up{backend=default}"] == 0
        wait_until(lambda: fake.accepted() >= 3, 10, "three probes")
        first = fake.connections[:2]
        # The fake holds each connection until its peer closes: the proxy closed them.
        wait_until(lambda: all(c.peer_closed for c in first), 10, "the probes closed")
        _assert_no_client_session(proxied)
