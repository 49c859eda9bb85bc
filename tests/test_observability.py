"""Logs, health endpoints and metrics as an operator sees them."""

from __future__ import annotations

import ftplib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.waiting import wait_until
from tests.test_e2e_core import start_proxy


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_json_logs_carry_session_ids_and_never_the_password(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = start_proxy(make_proxy, backend, pki, "--log-format", "json")
    ftp = proxied.ftp_tls()
    ftp.storbinary("STOR f.bin", io.BytesIO(b"x" * 100))
    ftp.quit()
    bad = ftplib.FTP(timeout=10)
    bad.connect("127.0.0.1", proxied.port)
    with pytest.raises(ftplib.error_perm):
        bad.login(backend.user, "wrong-" + backend.password)
    bad.close()
    proxy = proxied.proxy
    proxy.wait_log(r'"event": "session 2 end ')  # type: ignore[attr-defined]
    text = proxy.log_text()  # type: ignore[attr-defined]
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "namespace", "event"} <= set(r) for r in records)
    ends = [r for r in records if r["event"].startswith("session ") and " end " in r["event"]]
    assert [r["session"] for r in ends] == [1, 2]
    assert ends[0]["user"] == "demo" and ends[0]["client"] == "127.0.0.1"
    assert backend.password not in text
    samples = proxied.metrics()
    assert samples["ftpsproxy_logins_total{result=success}"] == 1
    assert samples["ftpsproxy_logins_total{result=failure}"] == 1
    assert samples["ftpsproxy_transfer_duration_seconds_count{direction=upload}"] == 1
    assert samples["ftpsproxy_replies_total{class=5xx}"] >= 1
    assert backend.password not in json.dumps(samples)


def test_readyz_follows_the_backend(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki, tmp_path: Path
) -> None:
    backend = make_backend()
    proxied = start_proxy(make_proxy, backend, pki, "--health-interval", "0.2")
    readyz = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    wait_until(lambda: _get(readyz)[0] == 200)
    assert _get(f"http://127.0.0.1:{proxied.metrics_port}/healthz") == (200, "ok\n")
    assert proxied.metrics()["ftpsproxy_backend_up{backend=default}"] == 1
    port = backend.port
    backend.stop()
    wait_until(lambda: _get(readyz)[0] == 503)
    assert "unreachable" in _get(readyz)[1]
    assert proxied.metrics()["ftpsproxy_backend_up{backend=default}"] == 0
    make_backend(port=port, root=tmp_path / "again")
    wait_until(lambda: _get(readyz)[0] == 200)
