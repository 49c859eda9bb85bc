"""Process life: SIGTERM (or SIGINT, in any order) drains sessions gracefully and exits 0, a
drain that runs out of time says what it cut; SIGHUP reloads the config."""

from __future__ import annotations

import ftplib
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import PausedDownload, make_random_file
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import ProxyProcess, process_alive
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

MIB = 1024 * 1024


def test_sigterm_lets_a_running_transfer_finish_and_closes_idle_sessions(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    size = 8 * MIB
    digest = make_random_file(backend.path("big.bin"), size)
    proxied = start_proxy(make_proxy, backend, pki, "--drain-timeout", "60")
    proxy = proxied.proxy
    assert isinstance(proxy, ProxyProcess)
    idle = proxied.ftp_tls()
    busy = proxied.ftp_tls()
    busy.voidcmd("TYPE I")
    outcome: dict[str, str] = {}

    def final_replies() -> None:
        outcome["final"] = busy.getresp()
        try:
            busy.getresp()
        except ftplib.error_temp as error:
            outcome["after"] = str(error)

    download = PausedDownload(busy.transfercmd("RETR big.bin"), MIB, final_replies)
    download.start()
    # The signal lands mid-transfer: part of the file has arrived, not all of it.
    received_at_signal = download.wait_paused()
    assert 0 < received_at_signal < size
    assert proxied.metrics()["ftpsproxy_transfers_active{}"] == 1
    os.kill(proxy.pid, signal.SIGTERM)
    proxy.wait_log(r"SIGTERM: draining sessions")
    with pytest.raises(ftplib.error_temp, match=r"^421 Service shutting down"):
        idle.getresp()
    # While the transfer drains, /readyz says so (a balancer stops sending sessions) and
    # /metrics still serves the last counters.
    ready = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(ready, timeout=10)
    assert not_ready.value.code == 503
    assert b"draining" in not_ready.value.read()
    assert proxied.metrics()["ftpsproxy_transfers_active{}"] == 1
    download.finish()
    assert download.received == size
    assert download.digest.hexdigest() == digest
    assert outcome["final"].startswith("226")
    assert outcome["after"].startswith("421")
    wait_until(lambda: not proxy.is_running(), 30, "the proxy's exit")
    assert proxy.returncode == 0
    assert "Traceback" not in proxy.log_text()


def test_sighup_applies_safe_config_changes_and_logs_what_changed(
    make_proxy: MakeProxy, backend: PyftpdBackend, tmp_path: Path
) -> None:
    port, (low, high) = free_port(), free_port_range(4)
    config = tmp_path / "ftpsproxy.toml"
    base = (
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        f'backend = "{backend.url}"\npassive-ports = "{low}-{high}"\n'
    )
    config.write_text(base + "max-sessions-per-ip = 5\n")
    proxy = make_proxy("--config", str(config), ports=[port])
    first = ftplib.FTP()
    first.connect("127.0.0.1", port, timeout=10)

    # A limit lowered takes effect for new sessions; a listener change waits for a restart.
    other = free_port()
    config.write_text(base.replace(f"tcp:{port}:", f"tcp:{other}:") + "max-sessions-per-ip = 1\n")
    os.kill(proxy.pid, signal.SIGHUP)
    proxy.wait_log(r"SIGHUP: max-sessions-per-ip changed from 5 to 1")
    proxy.wait_log(r"SIGHUP: listen changed .* takes effect after a restart")
    second = ftplib.FTP()
    with pytest.raises(ftplib.error_temp, match=r"^421 Too many sessions from your address"):
        second.connect("127.0.0.1", port, timeout=10)
    second.close()
    first.login(backend.user, backend.password)  # the session that was open goes on

    # A file that no longer parses changes nothing.
    config.write_text("max-sessions-per-ip = [\n")
    os.kill(proxy.pid, signal.SIGHUP)
    proxy.wait_log(r"SIGHUP: configuration not reloaded")
    assert first.nlst() == []
    first.quit()
    assert proxy.is_running()


# -- SIGINT and SIGTERM in any order; a drain that runs out of time -----------------------------


def _ready_proxy(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, *extra: str) -> Proxied:
    """The proxy (its master with ``--workers``) up, its signal handlers installed."""
    proxied = start_proxy(make_proxy, backend, pki, *extra, passive_count=20)
    readyz = f"http://127.0.0.1:{proxied.metrics_port}/readyz"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(readyz, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    wait_until(ready, 20, "/readyz 200")
    return proxied


def _clean(log: str) -> bool:
    return not re.search(r"Traceback|Unhandled|#critical\]|ReactorNotRunning", log)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    "signals",
    [("SIGINT",), ("SIGINT", "SIGTERM"), ("SIGTERM", "SIGINT"), ("SIGINT", "SIGINT", "SIGTERM")],
    ids="-".join,
)
def test_sigint_and_sigterm_in_any_order_stop_cleanly_with_exit_0(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, workers: str, signals: tuple[str, ...]
) -> None:
    proxied = _ready_proxy(make_proxy, backend, pki, "--workers", workers)
    proxy = proxied.proxy
    assert isinstance(proxy, ProxyProcess)
    children = proxy.child_pids()
    assert len(children) == (2 if workers == "2" else 0)
    idle = proxied.ftp_tls()  # the drain has a session to end
    for name in signals:  # each one lands while the proxy is still stopping
        os.kill(proxy.pid, signal.Signals[name])
        time.sleep(0.05)
    with pytest.raises(ftplib.error_temp, match=r"^421 Service shutting down"):
        idle.getresp()
    wait_until(lambda: not proxy.is_running(), 30, "the proxy's exit")
    log = proxy.log_text()
    assert proxy.returncode == 0, log
    assert _clean(log), log
    assert re.search(rf"\] {signals[0]}: (draining sessions|stopping the workers)", log)
    assert not any(process_alive(pid) for pid in children)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_drain_that_times_out_says_how_many_sessions_and_transfers_it_cut(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, workers: str
) -> None:
    size = 8 * MIB
    make_random_file(backend.path("big.bin"), size)
    proxied = _ready_proxy(make_proxy, backend, pki, "--workers", workers, "--drain-timeout", "1")
    proxy = proxied.proxy
    assert isinstance(proxy, ProxyProcess)
    busy = proxied.ftp_tls()
    busy.voidcmd("TYPE I")
    download = PausedDownload(busy.transfercmd("RETR big.bin"), MIB)
    download.start()
    assert 0 < download.wait_paused() < size
    os.kill(proxy.pid, signal.SIGTERM)
    warning = proxy.wait_log(r"#warn[^\]]*\] drain timeout .*", timeout=20).group(0)
    assert warning.endswith(
        "drain timeout (1.0s) passed: cutting 1 session(s) still busy, 1 of them mid-transfer"
    )
    download.resume()
    download.join(30)
    wait_until(lambda: not proxy.is_running(), 30, "the proxy's exit")
    log = proxy.log_text()
    assert log.count("drain timeout") == 1, log
    assert download.received < size
    assert proxy.returncode == 0 and _clean(log), log
