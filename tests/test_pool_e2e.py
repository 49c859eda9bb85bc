"""Backend pools end to end: the real proxy before vsftpd, ProFTPD and pyftpdlib.

Each backend serves its own root with ``marker.txt`` (its pool name) and ``data.bin``
(random bytes of its own, so the sha256 of a download both checks the bytes and names
the backend).  The pool exists only in the TOML file, so every proxy here is started
with ``--config``.  Counts come from the proxy's ``/metrics`` and log, cross-checked by
what the clients downloaded and what the backends' own logs saw.

Speed: one session after another, 30 login+quit sessions take ~4 s here (ProFTPD 1.3.8
in daemon mode pauses after each session, see /work/shared/INTEROP.md), so 300 would
take ~40 s.  The bulk runs on a bounded thread pool of clients (``CLIENTS``) instead:
the balancing decisions are counted per pick, so concurrency does not blur them.
Measured on 2 busy cores: 300 login+quit sessions ~6 s, 1,000 USER-only ~5 s,
1,000 login+RETR+quit ~20 s; the whole file ~70 s.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeProxy, MakeRealServer
from tests.support.certs import Pki
from tests.support.pool_rig import (
    DATA,
    MARKER,
    Member,
    PoolProxy,
    fetch,
    run_all,
    start_pool_proxy,
    stock,
)
from tests.support.servers import TEST_PASSWORD, TEST_USER
from tests.support.waiting import wait_until

#: Concurrent clients for the bulk of sessions.
CLIENTS = 6
NAMES = ("vsftpd", "proftpd", "pyftpdlib")


@pytest.fixture
def trio(make_real_server: MakeRealServer, make_backend: Any) -> list[Member]:
    """Three plain-FTP backends of three kinds, each with its marker and data file."""
    vsftpd = make_real_server("vsftpd", tls=False)
    proftpd = make_real_server("proftpd", tls=False)
    # --verbose: pyftpdlib logs every command, so its log shows which users it saw.
    pyftpd = make_backend(user=TEST_USER, password=TEST_PASSWORD, extra_args=["--verbose"])
    return [stock("vsftpd", vsftpd), stock("proftpd", proftpd), stock("pyftpdlib", pyftpd)]


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0) for name in after}


def _within(counts: dict[str, int], expected: dict[str, int], slack: int = 1) -> bool:
    return all(abs(counts.get(name, 0) - n) <= slack for name, n in expected.items())


# -- 1. round robin --------------------------------------------------------------------------


def test_round_robin_splits_300_sessions_evenly_then_by_weight(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "round-robin")
    # A sample through the marker and data file: one session to each, in configured order.
    assert [rig.served_by() for _ in range(3)] == list(NAMES)

    before = rig.connects()
    started = time.monotonic()
    run_all(rig.login_quit, range(300), CLIENTS)
    equal = _delta(rig.connects(), before)
    print(f"round-robin 1:1:1, 300 sessions in {time.monotonic() - started:.1f} s: {equal}")
    assert _within(equal, dict.fromkeys(NAMES, 100)), equal

    # Weights 3:1:1 by SIGHUP (new sessions see them): 180/60/60.
    rig.reload(vsftpd={"weight": 3})
    before = rig.connects()
    run_all(rig.login_quit, range(300), CLIENTS)
    weighted = _delta(rig.connects(), before)
    print(f"round-robin 3:1:1, 300 sessions: {weighted}")
    assert _within(weighted, {"vsftpd": 180, "proftpd": 60, "pyftpdlib": 60}), weighted
    # The marker agrees with the metric on a sample: 3 of 5 on vsftpd, in smooth order.
    sample = Counter(rig.served_by() for _ in range(5))
    assert sample == {"vsftpd": 3, "proftpd": 1, "pyftpdlib": 1}, sample
    assert rig.connects(result="refused") == dict.fromkeys(NAMES, 0)


# -- 2. least sessions -------------------------------------------------------------------


def test_least_sessions_sends_new_sessions_to_the_emptiest_backend(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "least-sessions")
    held: list[tuple[ftplib.FTP, str]] = []
    try:
        for _ in range(9):
            ftp = rig.login()
            held.append((ftp, fetch(ftp, MARKER).decode()))
        assert rig.sessions() == dict.fromkeys(NAMES, 3)
        assert Counter(name for _, name in held) == dict.fromkeys(NAMES, 3)

        # Close the three on ProFTPD: the next three all go there.
        for ftp, name in [each for each in held if each[1] == "proftpd"]:
            ftp.quit()
            held.remove((ftp, name))
        wait_until(lambda: rig.sessions()["proftpd"] == 0, 10, "proftpd's sessions released")
        assert rig.sessions() == {"vsftpd": 3, "proftpd": 0, "pyftpdlib": 3}
        for _ in range(3):
            ftp = rig.login()
            held.append((ftp, fetch(ftp, MARKER).decode()))
        assert [name for _, name in held[-3:]] == ["proftpd"] * 3
        assert rig.sessions() == dict.fromkeys(NAMES, 3)
    finally:
        for ftp, _ in held:
            ftp.close()


# -- 3. user hash --------------------------------------------------------------------------


def _users_seen_by(member: Member) -> set[str]:
    """The USER names a backend's own log shows (each kind logs commands its own way)."""
    text = member.server.log_text()
    patterns = {
        "vsftpd": r'FTP command: Client "[^"]+", "USER (\S+)"',
        "proftpd": r" USER (\S+) => 331",
        "pyftpdlib": r"<- USER (\S+)",
    }
    return set(re.findall(patterns[member.name], text))


def _route_users(rig: PoolProxy, users: list[str]) -> dict[str, str]:
    """USER then QUIT for each name (concurrently); user -> backend from the proxy's log."""
    mark = len(rig.proxy.log_text())
    replies = run_all(rig.user_only, users, 12)
    assert all(reply.startswith("331") for reply in replies), Counter(replies)
    wait_until(
        lambda: len(rig.routes_by_user(mark)) >= len(set(users)), 20, "every session's end line"
    )
    routes = rig.routes_by_user(mark)
    assert all(len(backends) == 1 for backends in routes.values()), routes
    return {user: next(iter(backends)) for user, backends in routes.items() if user in users}


def test_user_hash_is_sticky_across_restarts_and_workers_and_moves_a_quarter_to_a_new_backend(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member], make_backend: Any
) -> None:
    users = [f"user{n:02d}" for n in range(60)]
    first = start_pool_proxy(make_proxy, tmp_path / "a", trio, "user-hash")
    # Three rounds: each user's sessions all end on one backend (checked in _route_users).
    home = _route_users(first, users * 3)
    assert set(home) == set(users)
    spread = Counter(home.values())
    print(f"user-hash, 60 users: {dict(spread)}")
    assert set(spread) == set(NAMES) and min(spread.values()) >= 8, spread
    # The backends saw exactly the users the proxy says it sent them.
    for member in trio:
        assert _users_seen_by(member) & set(users) == {
            u for u, b in home.items() if b == member.name
        }
    first.proxy.stop()

    again = start_pool_proxy(make_proxy, tmp_path / "b", trio, "user-hash")
    assert _route_users(again, users) == home
    again.proxy.stop()

    workers = start_pool_proxy(make_proxy, tmp_path / "c", trio, "user-hash", workers=2)
    assert _route_users(workers, users * 2) == home
    served = Counter(re.findall(r"worker=(\d+)\] session \d+ end ", workers.proxy.log_text()))
    assert set(served) == {"0", "1"}, f"both workers routed sessions: {served}"

    # 1,000 users, then a fourth backend by SIGHUP (each worker reloads its own pool).
    many = [f"client-{n:04d}" for n in range(1000)]
    started = time.monotonic()
    before = _route_users(workers, many)
    print(f"1,000 USER-only sessions in {time.monotonic() - started:.1f} s")
    extra = make_backend(user=TEST_USER, password=TEST_PASSWORD, extra_args=["--verbose"])
    fourth = stock("pyftpdlib-2", extra)
    workers.reload([*trio, fourth])
    wait_until(
        lambda: workers.proxy.log_text().count("SIGHUP: backends changed") >= 2,
        10,
        "both workers reloaded",
    )
    after = _route_users(workers, many)
    moved = {user for user in many if after[user] != before[user]}
    print(f"a 4th backend moved {len(moved)} of 1,000 users; spread {Counter(after.values())}")
    assert 150 <= len(moved) <= 350, len(moved)
    assert {after[user] for user in moved} == {"pyftpdlib-2"}
    assert _users_seen_by(Member("pyftpdlib", fourth.server, "")) & set(many) == moved


# -- 4. source hash ------------------------------------------------------------------------


def test_source_hash_keeps_each_client_address_on_its_backend(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "source-hash")
    sources = [f"127.0.0.{n}" for n in range(2, 14)]
    served = run_all(rig.served_by, sources * 3, CLIENTS)  # three sessions per address
    by_source: dict[str, set[str]] = {}
    for source, name in zip(sources * 3, served, strict=True):
        by_source.setdefault(source, set()).add(name)
    print(f"source-hash: { ({s: sorted(b) for s, b in by_source.items()}) }")
    assert all(len(names) == 1 for names in by_source.values()), by_source
    assert len({next(iter(names)) for names in by_source.values()}) >= 2, "only one backend used"
    # The proxy saw those addresses (not one shared one) and logged the same routes.
    logged = {(client, backend) for _, client, _, backend in rig.ended()}
    assert {(s, next(iter(b))) for s, b in by_source.items()} <= logged


# -- 5. priority ---------------------------------------------------------------------------


def test_priority_uses_the_first_and_fails_over_to_the_second_without_errors(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    # Probes far apart: the sessions themselves find the dead backend and fail over.
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "priority", health_interval=30)
    assert run_all(lambda _: rig.served_by(), range(12), CLIENTS) == ["vsftpd"] * 12

    vsftpd = trio[0].server
    os.kill(vsftpd.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    served = run_all(lambda _: rig.served_by(), range(30), CLIENTS)
    assert served == ["proftpd"] * 30
    failovers = rig.metric("ftpsproxy_backend_failovers_total", **{"from": "vsftpd"})
    moved = failovers.get("", 0)  # keyed by backend label, which this series has not
    print(f"priority: after SIGKILL of vsftpd, 30/30 on proftpd; {moved:.0f} failovers")
    assert 1 <= moved <= 3 + CLIENTS, failovers
    rig.proxy.wait_log(r"backend vsftpd is down \(3 failures in a row")
    rig.proxy.wait_log(r"session \d+ failover from backend vsftpd to proftpd")


# -- 6. failover under load ----------------------------------------------------------------


def test_sigkill_under_load_loses_no_session_and_the_backend_comes_back(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    interval, rise, fall = 0.5, 2, 3
    rig = start_pool_proxy(
        make_proxy, tmp_path, trio, "round-robin",
        health_interval=interval, health_rise=rise, health_fall=fall,
    )  # fmt: skip
    by_digest = {member.digest: member.name for member in trio}
    # ProFTPD: its session processes outlive a SIGKILLed master, so sessions already
    # logged in there finish (vsftpd's die with their master: PR_SET_PDEATHSIG).
    victim = trio[1]

    total = 1000
    done = Counter[str]()
    lock = threading.Lock()
    killed = threading.Event()

    def one(_: int) -> str:
        ftp = rig.login()
        try:
            digest = hashlib.sha256(fetch(ftp, DATA)).hexdigest()
        finally:
            ftp.quit()
        name = by_digest[digest]  # KeyError: bytes damaged
        with lock:
            done[name] += 1
            if sum(done.values()) == total // 3 and not killed.is_set():
                os.kill(victim.server.pid, signal.SIGKILL)  # type: ignore[attr-defined]
                killed.set()
        return name

    started = time.monotonic()
    served = run_all(one, range(total), CLIENTS)  # any client error fails the test here
    seconds = time.monotonic() - started
    assert killed.is_set() and len(served) == total
    rig.proxy.wait_log(r"backend proftpd is down")
    failed = rig.failed_connects("proftpd")
    failovers = sum(rig.metric("ftpsproxy_backend_failovers_total").values())
    print(
        f"{total} sessions (login, RETR {DATA}, quit) in {seconds:.1f} s, all good: "
        f"{dict(Counter(served))}; proftpd set-up failures {failed}, failovers {failovers:.0f}"
    )
    # `fall` failures in a row (probes' and sessions' alike) take it out; after that only
    # set-ups already under way may still fail there: at most one per client.
    assert 1 <= failed <= fall + CLIENTS
    log = rig.proxy.log_text()
    after_down = log[log.index("backend proftpd is down") :]
    late = len(re.findall(r"session \d+ backend proftpd set-up failed", after_down))
    assert late < CLIENTS, late
    # No new attempt reaches it: more sessions, the failures stay put; probes go on.
    probes = rig.probes("proftpd")
    run_all(rig.login_quit, range(30), CLIENTS)
    wait_until(lambda: rig.probes("proftpd") >= probes + 2, 10, "probes of the dead backend")
    assert rig.failed_connects("proftpd") == failed
    assert rig.up()["proftpd"] == 0

    # Restarted on the same port: back in use after `rise` good probes (+2 intervals).
    victim.server.restart()  # type: ignore[attr-defined]
    back = wait_until(lambda: rig.up()["proftpd"] == 1, 10, "proftpd up again", interval=0.05)
    print(f"proftpd back in use {back:.2f} s after its restart")
    assert back <= (rise + 2) * interval
    before = rig.connects()
    assert Counter(run_all(lambda _: rig.served_by(), range(9), CLIENTS)) == dict.fromkeys(NAMES, 3)
    assert _delta(rig.connects(), before) == dict.fromkeys(NAMES, 3)


def test_every_worker_probes_on_its_own_and_both_see_a_dead_backend_down_then_back(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    """``--workers 2``: no worker is told by another; each one's probes take a dead
    backend out and bring it back, and their views agree within about one interval."""
    interval, fall = 0.5, 3
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "round-robin", workers=2)

    def up_by_worker() -> dict[str, int]:
        return {
            labels["worker"]: int(value)
            for name, labels, value in rig.samples()
            if name == "ftpsproxy_backend_up" and labels.get("backend") == "proftpd"
        }

    for worker in "01":  # a probe's result, not the gauge's start value (1: unknown)
        rig.proxy.wait_log(rf"worker={worker}\] backend proftpd is up")
    victim = trio[1]
    os.kill(victim.server.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    first = wait_until(lambda: 0 in up_by_worker().values(), 10, "a worker sees it down")
    both = first + wait_until(lambda: up_by_worker() == {"0": 0, "1": 0}, 10, "both see it")
    print(f"proftpd down in one worker after {first:.2f} s, in both after {both:.2f} s")
    assert both <= (fall + 2) * interval
    assert both - first <= 2 * interval  # one interval apart, plus the scrapes' own time
    log = rig.proxy.log_text()
    for worker in "01":
        assert re.search(rf"worker={worker}\] backend proftpd is down", log), worker
    served = Counter(run_all(lambda _: rig.served_by(), range(12), CLIENTS))
    assert set(served) == {"vsftpd", "pyftpdlib"} and served.total() == 12, served

    victim.server.restart()  # type: ignore[attr-defined]
    wait_until(lambda: up_by_worker() == {"0": 1, "1": 1}, 10, "both see it back")


# -- 7. drain by SIGHUP --------------------------------------------------------------------


def test_drain_by_sighup_keeps_the_open_session_and_sends_new_ones_elsewhere(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "round-robin")
    open_session = rig.login()
    try:
        assert fetch(open_session, MARKER) == b"vsftpd"  # round robin's first pick
        rig.reload(vsftpd={"state": "drain"})
        rig.proxy.wait_log(r"SIGHUP: backends changed .*vsftpd \(drain")
        before = rig.connects()
        served = Counter(run_all(lambda _: rig.served_by(), range(12), CLIENTS))
        assert served == {"proftpd": 6, "pyftpdlib": 6}, served
        assert _delta(rig.connects(), before) == {"vsftpd": 0, "proftpd": 6, "pyftpdlib": 6}
        # The session that was open goes on, transfers included, and still counts.
        data = fetch(open_session, DATA)
        assert hashlib.sha256(data).hexdigest() == trio[0].digest
        assert rig.sessions()["vsftpd"] == 1
    finally:
        open_session.quit()
    wait_until(lambda: rig.sessions()["vsftpd"] == 0, 10, "the drained session's release")


def test_a_new_balance_by_sighup_applies_to_the_next_sessions(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "round-robin")
    assert [rig.served_by() for _ in range(3)] == list(NAMES)
    rig.top["balance"] = "priority"
    rig.write_config()
    os.kill(rig.proxy.pid, signal.SIGHUP)  # type: ignore[attr-defined]
    rig.proxy.wait_log(r"SIGHUP: balance changed from round-robin to priority")
    assert [rig.served_by() for _ in range(6)] == ["vsftpd"] * 6


# -- 8. readiness --------------------------------------------------------------------------


def test_readyz_names_the_down_backends_and_fails_only_when_all_are_down(
    make_proxy: MakeProxy, tmp_path: Path, trio: list[Member]
) -> None:
    rig = start_pool_proxy(make_proxy, tmp_path, trio, "round-robin")
    wait_until(lambda: rig.readyz() == (200, "ok\n"), 10, "/readyz 200 with all up")

    trio[0].server.stop()
    trio[2].server.stop()
    wait_until(lambda: rig.up() == {"vsftpd": 0, "proftpd": 1, "pyftpdlib": 0}, 10, "two down")
    status, body = rig.readyz()
    print(f"/readyz with two down: {status} {body!r}")
    assert status == 200
    assert "backend vsftpd" in body and "backend pyftpdlib" in body and "proftpd" not in body
    assert rig.served_by() == "proftpd"  # and it still serves

    trio[1].server.stop()
    wait_until(lambda: rig.readyz()[0] == 503, 10, "/readyz 503 with all down")
    status, body = rig.readyz()
    print(f"/readyz with all down: {status} {body!r}")
    assert all(f"backend {name}" in body for name in NAMES)
    # All down: the session is still tried everywhere, and fails with 421 in the end.
    ftp = rig.client()
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.login(TEST_USER, TEST_PASSWORD)
    ftp.close()


# -- per-backend TLS ------------------------------------------------------------------------


def test_each_backend_has_its_own_tls_settings(
    make_proxy: MakeProxy,
    tmp_path: Path,
    make_real_server: MakeRealServer,
    make_backend: Any,
    pki: Pki,
) -> None:
    """An FTPS backend trusted through its table's ``ca`` serves; the same server in a
    table without it (system store) is down for its certificate; plain ones are unaffected."""
    vsftpd = make_real_server("vsftpd")  # explicit FTPS required, session reuse required
    secure = stock("vsftpd-tls", vsftpd)
    secure.table = {"url": vsftpd.url.replace("ftp://", "ftpes://"), "ca": str(pki.ca_cert)}
    untrusted = Member("vsftpd-untrusted", vsftpd, secure.digest)
    untrusted.table = {"url": secure.table["url"]}
    plain = stock("pyftpdlib", make_backend(user=TEST_USER, password=TEST_PASSWORD))
    rig = start_pool_proxy(make_proxy, tmp_path, [secure, untrusted, plain], "round-robin")

    wait_until(lambda: rig.up().get("vsftpd-untrusted") == 0, 10, "the untrusted table down")
    status, body = rig.readyz()
    assert status == 200 and "vsftpd-untrusted" in body and "certificate" in body, body
    served = Counter(run_all(lambda _: rig.served_by(), range(20), CLIENTS))
    assert served == {"vsftpd-tls": 10, "pyftpdlib": 10}, served
    handshakes = [
        value
        for name, labels, value in rig.samples()
        if name == "ftpsproxy_tls_handshakes_total"
        and labels.get("side") == "backend"
        and labels.get("channel") == "control"
    ]
    assert sum(handshakes) >= 10
    assert rig.connects().get("vsftpd-untrusted", 0) == 0
