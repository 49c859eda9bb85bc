"""``--workers N``: one master, N worker processes sharing the listeners, one metrics page.

Pure parts first (the passive-range split, the restart delay, merging expositions,
the worker's configuration), then the proxy as real processes: sessions spread over
both workers, each data connection on its worker's slice, SIGHUP and SIGTERM passed
on, a killed worker replaced, and no worker left behind by a master that dies.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import itertools
import json
import os
import re
import signal
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ftpsproxy.observe.exposition import merge_expositions
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.ops.worker_process import (
    RESPAWN_DELAY,
    RESPAWN_DELAY_MAX,
    WorkerJSONLineObserver,
    respawn_delay,
)
from ftpsproxy.ops.workerspec import WorkerSpec, worker_cli
from ftpsproxy.settings.config import PortRange, build_config
from ftpsproxy.settings.errors import ConfigError
from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import (
    PausedDownload,
    client_context,
    make_random_file,
    sha256_file,
)
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import ProxyProcess, process_alive, socket_inodes
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

# -- the passive range split ----------------------------------------------------------------


@given(
    low=st.integers(1024, 60000),
    size=st.integers(1, 600),
    data=st.data(),
)
def test_port_slices_are_disjoint_non_empty_and_cover_the_range(
    low: int, size: int, data: st.DataObject
) -> None:
    high = min(low + size - 1, 65535)
    ports = PortRange(low, high)
    count = data.draw(st.integers(1, ports.size))
    slices = ports.split(count)
    assert len(slices) == count
    assert all(s.size >= 1 for s in slices)
    assert [p for s in slices for p in range(s.low, s.high + 1)] == list(range(low, high + 1))
    assert max(s.size for s in slices) - min(s.size for s in slices) <= 1


def test_more_workers_than_passive_ports_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot split 2 ports 3 ways"):
        PortRange(30000, 30001).split(3)
    with pytest.raises(ConfigError, match="workers: 3 workers need at least as many passive"):
        build_config(
            {},
            {
                "backend": "ftp://h",
                "listen": ["tcp:21"],
                "workers": 3,
                "passive-ports": "30000-30001",
            },
        )


def test_restart_delay_doubles_while_a_worker_keeps_dying_and_is_capped() -> None:
    delays = [respawn_delay(n) for n in range(12)]
    assert delays[0] == delays[1] == RESPAWN_DELAY
    assert delays[2] == 2 * RESPAWN_DELAY and delays[3] == 4 * RESPAWN_DELAY
    assert delays == sorted(delays) and delays[-1] == RESPAWN_DELAY_MAX
    assert respawn_delay(10_000) == RESPAWN_DELAY_MAX


# -- merging expositions --------------------------------------------------------------------


def _worker_exposition(sessions: int, capacity: int) -> str:
    metrics = Metrics(CollectorRegistry())
    metrics.sessions_total.labels(listener="tcp:21", mode="explicit").inc(sessions)
    metrics.transfer_duration.labels(direction="download").observe(0.2)
    metrics.passive_ports_capacity.set(capacity)
    return generate_latest(metrics.registry).decode()


def _samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_merge_labels_each_worker_and_gives_help_and_type_once() -> None:
    master = CollectorRegistry()
    Gauge("ftpsproxy_workers", "Worker processes running.", registry=master).set(2)
    parts: list[tuple[str | None, str]] = [
        (None, generate_latest(master).decode()),
        ("0", _worker_exposition(3, 5)),
        ("1", _worker_exposition(4, 6)),
    ]
    text, unparsable = merge_expositions(parts)
    assert unparsable == []
    samples = _samples(text)
    assert samples["ftpsproxy_workers{}"] == 2
    key = "ftpsproxy_sessions_total{listener=tcp:21,mode=explicit,worker=%s}"
    assert samples[key % 0] == 3 and samples[key % 1] == 4
    assert samples["ftpsproxy_passive_ports_capacity{worker=0}"] == 5
    assert samples["ftpsproxy_passive_ports_capacity{worker=1}"] == 6
    assert samples["ftpsproxy_transfer_duration_seconds_count{direction=download,worker=1}"] == 1
    for line in ("# TYPE ftpsproxy_sessions_total counter", "# HELP ftpsproxy_sessions_total "):
        assert sum(x.startswith(line) for x in text.splitlines()) == 1
    # Every worker sample is labelled; the result parses as one valid exposition.
    families = list(text_string_to_metric_families(text))
    for family in families:
        for sample in family.samples:
            if family.name != "ftpsproxy_workers":
                assert sample.labels["worker"] in ("0", "1"), sample
    assert len({f.name for f in families}) == len(families)


def test_merge_leaves_out_an_unparsable_worker_and_a_conflicting_type() -> None:
    other = CollectorRegistry()
    Gauge("ftpsproxy_sessions", "Not a counter here.", registry=other).set(9)
    Counter("ftpsproxy_only_here", "Only in worker 2.", registry=other).inc()
    text, unparsable = merge_expositions(
        [
            ("0", _worker_exposition(1, 1)),
            ("1", "this is { not an exposition\n"),
            ("2", generate_latest(other).decode()),
        ]
    )
    assert unparsable == ["1"]
    samples = _samples(text)
    assert samples["ftpsproxy_sessions_total{listener=tcp:21,mode=explicit,worker=0}"] == 1
    assert not any("worker=1" in key for key in samples)
    assert "ftpsproxy_sessions{worker=2}" not in samples  # a gauge where worker 0 had a counter
    assert samples["ftpsproxy_only_here_total{worker=2}"] == 1


_EXPOSITION_LINES = st.sampled_from(
    ["# TYPE a counter", "# HELP a x", "a_total 1", 'a_total{x="1"} 2', "b 3", "# TYPE b gauge",
     'c{y="\\n"} 1', "garbage {", 'a_total{worker="9"} 1', "# TYPE d histogram",
     'd_bucket{le="1"} 1', "d_count 1", "# EOF"]
)  # fmt: skip


@given(
    st.lists(
        st.tuples(st.sampled_from(["0", "1", None]), st.lists(_EXPOSITION_LINES).map("\n".join)),
        max_size=4,
    )
)
def test_merge_never_raises_and_what_it_serves_parses(parts: list[tuple[str | None, str]]) -> None:
    text, unparsable = merge_expositions(parts)
    assert set(unparsable) <= {str(source) for source, _ in parts}
    list(text_string_to_metric_families(text))


# -- a worker's configuration and logs ------------------------------------------------------


def test_a_worker_reads_the_same_file_with_the_masters_choices(tmp_path: Path) -> None:
    config_file = tmp_path / "ftpsproxy.toml"
    config_file.write_text(
        'backend = "ftp://127.0.0.1:2100"\nlisten = ["tcp:2121"]\nworkers = 2\n'
        'passive-ports = "30000-30009"\nmetrics = "tcp:9102"\nmax-sessions = 7\n'
    )
    cli = {"idle-timeout": "30", "workers": None, "metrics": None}
    spec = WorkerSpec(
        index=1,
        config_file=str(config_file),
        cli=worker_cli(cli, PortRange(30005, 30009), None),
        listeners=(("listen", "tcp:2121", 3),),
    )
    config = WorkerSpec.from_json(spec.to_json()).read_config()
    assert (config.workers, config.passive_ports) == (1, PortRange(30005, 30009))
    assert config.metrics is None  # not the master's public endpoint
    assert (config.max_sessions, config.idle_timeout) == (7, 30.0)
    assert WorkerSpec.from_json(spec.to_json()) == spec
    private = worker_cli(cli, PortRange(30000, 30004), "unix:/run/w0.sock")
    assert build_config({}, {**private, "backend": "ftp://h", "listen": ["tcp:21"]}).metrics == (
        "unix:/run/w0.sock"
    )


def test_each_worker_numbers_its_sessions_with_its_own_stride() -> None:
    """Session ids name a session in the master's log and the PROXY v2 unique id."""
    specs = [
        WorkerSpec.from_json(WorkerSpec(index, None, {}, (), count=3).to_json())
        for index in range(3)
    ]
    ids = [list(itertools.islice(spec.session_ids(), 100)) for spec in specs]
    assert [first[:3] for first in ids] == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]
    assert sorted(itertools.chain(*ids)) == list(range(1, 301))
    alone = WorkerSpec(0, None, {}, ())
    assert list(itertools.islice(alone.session_ids(), 3)) == [1, 2, 3]


def test_json_logs_keep_the_worker_of_an_event() -> None:
    out = io.StringIO()
    observer = WorkerJSONLineObserver(out)
    observer(
        {
            "log_format": "session {session} start",
            "session": 3,
            "worker": 1,
            "log_namespace": "ftpsproxy.session",
            "log_time": 0.0,
        }
    )
    observer(
        {"log_format": "master line", "log_namespace": "ftpsproxy.ops.supervisor", "log_time": 0.0}
    )
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["event"], first["session"], first["worker"]) == ("session 3 start", 3, 1)
    assert second["event"] == "master line" and "worker" not in second


# -- end to end -----------------------------------------------------------------------------

_STARTED = re.compile(r"worker (\d+) started: pid (\d+), passive ports (\d+)-(\d+)")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _workers(proxy: ProxyProcess) -> dict[int, tuple[int, range]]:
    """Worker index -> (pid, passive ports) of the latest start of each, from the log."""
    found: dict[int, tuple[int, range]] = {}
    for match in _STARTED.finditer(proxy.log_text()):
        index, pid, low, high = (int(group) for group in match.groups())
        found[index] = (pid, range(low, high + 1))
    return found


def _start(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, *extra: str) -> Proxied:
    """The proxy with 2 workers (unless *extra* sets them in a file), ready."""
    workers = [] if "--config" in extra else ["--workers", "2"]
    # Up to 8 concurrent transfers from 127.0.0.1: the whole of a worker's 10-port slice.
    share = ["--max-passive-ports-per-ip", "10"]
    proxied = start_proxy(
        make_proxy, backend, pki, *workers, "--health-interval", "0.5", *share, *extra,
        passive_count=20,
    )  # fmt: skip
    readyz = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    wait_until(lambda: _get(readyz)[0] == 200, 20, "/readyz 200")
    return proxied


def _proxy(proxied: Proxied) -> ProxyProcess:
    assert isinstance(proxied.proxy, ProxyProcess)
    return proxied.proxy


def _owner(pids: dict[int, int], proxy_port: int, client_port: int) -> int | None:
    """Which worker (index) holds the proxy's end of the control connection from client_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if (local, remote) == (proxy_port, client_port):
                for index, pid in pids.items():
                    if fields[9] in socket_inodes(pid):
                        return index
    return None


def test_sessions_spread_over_both_workers_each_on_its_own_passive_slice(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    digest = make_random_file(backend.path("down.bin"), 256 * 1024)
    proxied = _start(make_proxy, backend, pki)
    proxy = _proxy(proxied)
    workers = _workers(proxy)
    assert sorted(workers) == [0, 1]
    assert set(workers[0][1]).isdisjoint(workers[1][1])
    assert sorted(proxy.child_pids()) == sorted(pid for pid, _ in workers.values())
    pids = {index: pid for index, (pid, _) in workers.items()}

    def session(number: int) -> tuple[int | None, list[int]]:
        ftp = proxied.ftp_tls()
        owner = _owner(pids, proxied.port, ftp.sock.getsockname()[1])
        pasv_ports = []
        for _ in range(2):
            pasv_ports.append(ftplib.parse227(ftp.sendcmd("PASV"))[1])
        received = hashlib.sha256()
        ftp.retrbinary("RETR down.bin", received.update)
        assert received.hexdigest() == digest
        payload = os.urandom(64 * 1024 + number)
        ftp.storbinary(f"STOR up{number}.bin", io.BytesIO(payload))
        assert sha256_file(backend.path(f"up{number}.bin")) == hashlib.sha256(payload).hexdigest()
        ftp.quit()
        return owner, pasv_ports

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(session, range(40)))
    for owner, pasv_ports in results:
        assert owner in (0, 1)
        assert all(port in workers[owner][1] for port in pasv_ports), (owner, pasv_ports)
    by_owner = [sum(owner == index for owner, _ in results) for index in (0, 1)]
    assert min(by_owner) > 0, by_owner

    samples = proxied.metrics()
    key = f"ftpsproxy_sessions_total{{listener=tcp:{proxied.port}:interface=127.0.0.1,"
    per_worker = [samples[f"{key}mode=explicit,worker={index}}}"] for index in (0, 1)]
    assert per_worker == by_owner
    assert samples["ftpsproxy_workers{}"] == 2
    assert samples["ftpsproxy_worker_restarts_total{}"] == 0
    assert samples["ftpsproxy_passive_ports_capacity{worker=0}"] == len(workers[0][1])
    assert samples["ftpsproxy_transfers_total{direction=upload,result=complete,worker=1}"] > 0
    assert samples["ftpsproxy_worker_scrape_errors_total{worker=0}"] == 0
    assert _get(f"http://127.0.0.1:{proxied.metrics_port}/healthz") == (200, "ok\n")
    # The workers' log events reach the master's log, marked with their worker.
    log = proxy.log_text()
    starts = re.findall(r"ftpsproxy\.[a-z_.]+#info worker=(\d)\] session (\d+) start", log)
    assert {worker for worker, _ in starts} == {"0", "1"}
    # Each worker numbers its own sessions (odd, even): no id in the log names two sessions.
    assert all(int(session) % 2 == 1 - int(worker) for worker, session in starts), starts
    assert len({session for _, session in starts}) == len(starts) == 40


def test_sighup_reaches_every_worker_and_a_killed_worker_is_replaced(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    xferlog = tmp_path / "xferlog"
    config_file = tmp_path / "ftpsproxy.toml"
    config_file.write_text(f'xferlog = "{xferlog}"\nmax-sessions-per-ip = 40\nworkers = 2\n')
    proxied = _start(make_proxy, backend, pki, "--config", str(config_file))
    proxy = _proxy(proxied)
    backend.path("f.bin").write_bytes(b"f" * 1000)

    def transfers(count: int) -> None:
        for _ in range(count):
            ftp = proxied.ftp_tls()
            ftp.retrbinary("RETR f.bin", lambda data: None)
            ftp.quit()

    transfers(2)
    wait_until(lambda: xferlog.exists() and len(xferlog.read_text().splitlines()) == 2, 20)
    xferlog.rename(tmp_path / "xferlog.1")  # as logrotate does, then SIGHUP
    config_file.write_text(f'xferlog = "{xferlog}"\nmax-sessions-per-ip = 30\nworkers = 3\n')
    os.kill(proxy.pid, signal.SIGHUP)
    for index in (0, 1):
        proxy.wait_log(rf"worker={index}\] SIGHUP: max-sessions-per-ip changed from 40 to 30")
    proxy.wait_log(r"SIGHUP: workers changed from 2 to 3: takes effect after a restart")
    assert xferlog.exists()  # reopened by both workers
    transfers(4)
    wait_until(lambda: len(xferlog.read_text().splitlines()) == 4, 20)

    victim, _ = _workers(proxy)[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_log(rf"worker 0 \(pid {victim}\) was killed by signal 9")
    wait_until(lambda: _workers(proxy)[0][0] != victim, 20, "a new worker 0")
    wait_until(lambda: _get(f"http://127.0.0.1:{proxied.metrics_port}/readyz")[0] == 200, 20)
    assert not process_alive(victim)
    assert len(proxy.child_pids()) == 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: transfers(2), range(4)))
    samples = proxied.metrics()
    assert samples["ftpsproxy_worker_restarts_total{}"] == 1
    assert samples["ftpsproxy_workers{}"] == 2


def test_sigterm_drains_a_running_transfer_and_leaves_no_worker(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    size = 8 * 1024 * 1024
    digest = make_random_file(backend.path("big.bin"), size)
    proxied = _start(make_proxy, backend, pki, "--drain-timeout", "30")
    proxy = _proxy(proxied)
    workers = [pid for pid, _ in _workers(proxy).values()]
    ftp = proxied.ftp_tls()
    ftp.voidcmd("TYPE I")
    outcome: dict[str, str] = {}

    def final_reply() -> None:
        outcome["final"] = ftp.getresp()

    download = PausedDownload(ftp.transfercmd("RETR big.bin"), 1024 * 1024, final_reply)
    download.start()
    # The signal lands mid-transfer: part of the file has arrived, not all of it.
    received_at_signal = download.wait_paused()
    assert 0 < received_at_signal < size
    active = proxied.metrics()
    assert sum(v for k, v in active.items() if k.startswith("ftpsproxy_transfers_active{")) == 1
    os.kill(proxy.pid, signal.SIGTERM)
    # Both workers have the master's SIGTERM and drain, the transfer still paused.
    wait_until(lambda: proxy.log_text().count("SIGTERM: draining sessions") == 2, 20)
    download.finish(40)
    assert download.received == size
    assert download.digest.hexdigest() == digest
    assert outcome["final"].startswith("226")
    wait_until(lambda: not proxy.is_running(), 40, "the master's exit")
    assert proxy.returncode == 0
    assert not any(process_alive(pid) for pid in workers)
    assert "SIGTERM: stopping the workers" in proxy.log_text()


def test_json_logs_carry_the_worker_and_workers_do_not_outlive_a_killed_master(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    proxied = _start(make_proxy, backend, pki, "--log-format", "json")
    proxy = _proxy(proxied)
    for _ in range(4):
        proxied.ftp_tls().quit()
    proxy.wait_log(r'"event": "session \d+ end .*"worker": \d')
    records = [json.loads(line) for line in proxy.log_text().splitlines() if line.strip()]
    starts = [r for r in records if r["event"].startswith("session ") and " start " in r["event"]]
    assert len(starts) == 4 and all(r["worker"] in (0, 1) for r in starts)
    assert all(r["namespace"] == "ftpsproxy.session" and "session" in r for r in starts)

    workers = [pid for pid, _ in _workers(proxy).values()]
    os.kill(proxy.pid, signal.SIGKILL)
    wait_until(lambda: not any(process_alive(pid) for pid in workers), 20, "the workers' exit")
    with pytest.raises(OSError):
        ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=5)
        ftp.connect("127.0.0.1", proxied.port)


def test_a_port_already_taken_stops_the_master_at_once(
    make_proxy: MakeProxy, backend: PyftpdBackend, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        low, high = free_port_range(4)
        proxy = make_proxy(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--backend",
            backend.url,
            "--passive-ports",
            f"{low}-{high}",
            "--workers",
            "2",
            "--metrics",
            f"tcp:{free_port()}:interface=127.0.0.1",
            wait=False,
        )
        wait_until(lambda: not proxy.is_running(), timeout=15, what="the master's exit")
    assert proxy.returncode not in (0, None)
    assert f"listen tcp:{port}:interface=127.0.0.1: address already in use" in proxy.log_text()
    assert "Traceback" not in proxy.log_text()
    assert "worker 0 started" not in proxy.log_text()
