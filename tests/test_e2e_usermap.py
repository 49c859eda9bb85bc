"""Routing by user through a real proxy: the user map file and the HTTP lookup.

Real pyftpdlib backends, each with its own root, user and marker file; the lookup is a
small real HTTP server in a thread of the test.  A backend's debug log has one
``FTP session opened`` line per connection (the proxy's health probes included), so
"no backend was contacted" is: no new line in any backend's log.
"""

from __future__ import annotations

import ftplib
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import ProxyError, ProxyProcess
from tests.support.waiting import wait_until

PASSWORD = "s3cret-test-pw"
POLL = 2.0  # ftpsproxy.control.usermap_file.POLL_INTERVAL

MAP = """\
[users]
bob = "beta"

[[patterns]]
match = "*@acme"
backend = "acme"
user = "{local}"
"""


@dataclass
class Proxy:
    process: ProxyProcess
    port: int
    metrics_port: int
    config: Path
    backends: dict[str, PyftpdBackend]

    def login(self, user: str) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=20)
        ftp.connect("127.0.0.1", self.port)
        try:
            ftp.login(user, PASSWORD)
        except BaseException:
            ftp.close()
            raise
        return ftp

    def backend_of(self, user: str) -> str:
        """Log in as *user* and say which backend's files the session sees."""
        ftp = self.login(user)
        try:
            listing = ftp.nlst()
            ftp.quit()
        finally:
            ftp.close()
        found = [name for name in self.backends if f"marker-{name}" in listing]
        assert len(found) == 1, listing
        return found[0]

    def refused(self, user: str) -> str:
        """The error *user*'s login gets (a string such as ``530 Login incorrect.``)."""
        with pytest.raises(ftplib.Error) as caught:
            self.login(user).close()
        return str(caught.value)

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise AssertionError(f"no {name}{labels} in /metrics")

    def backend_connections(self) -> int:
        return sum(
            backend.log_text().count("FTP session opened") for backend in self.backends.values()
        )

    def reload_with(self, settings: str) -> None:
        """SIGHUP with *settings* added to the configuration file (before its tables)."""
        self.config.write_text(settings + self.config.read_text())
        os.kill(self.process.pid, signal.SIGHUP)


@pytest.fixture
def backends(make_backend: Callable[..., PyftpdBackend]) -> dict[str, PyftpdBackend]:
    """acme serves alice; beta and gamma both serve bob; each root has its marker file."""
    started = {}
    for name, user in (("acme", "alice"), ("beta", "bob"), ("gamma", "bob")):
        backend = make_backend(user=user, password=PASSWORD, extra_args=["--verbose"])
        backend.path(f"marker-{name}").write_text(name)
        started[name] = backend
    return started


def start(
    make_proxy: MakeProxy,
    tmp_path: Path,
    backends: Mapping[str, PyftpdBackend],
    *args: str,
    settings: str = "",
) -> Proxy:
    """A proxy over *backends* (a pool file); *args* on its command line."""
    for attempt in range(3):
        port, metrics_port = free_port(), free_port()
        low, high = free_port_range(6)
        config = tmp_path / f"proxy-{port}.toml"
        tables = "".join(
            f'[[backends]]\nname = "{name}"\nurl = "{backend.url}"\n\n'
            for name, backend in backends.items()
        )
        config.write_text(
            f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
            f'metrics = "tcp:{metrics_port}:interface=127.0.0.1"\n'
            f'passive-ports = "{low}-{high}"\npublic-address = "127.0.0.1"\n'
            "login-failure-delay = 0\nhealth-interval = 3600\n"
            f"{settings}\n{tables}"
        )
        try:
            process = make_proxy("--config", str(config), *args, ports=[port, metrics_port])
        except ProxyError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
            continue
        return _probed(Proxy(process, port, metrics_port, config, dict(backends)))
    raise AssertionError("unreachable")


def _probed(proxy: Proxy) -> Proxy:
    """Once every backend had its first health probe (before the tests count)."""
    wait_until(lambda: proxy.backend_connections() >= len(proxy.backends), 10, "first probes")
    return proxy


def quiet_for(proxy: Proxy, seconds: float = 0.5) -> int:
    """The backends' connection count, once it has not moved for *seconds*."""
    count = proxy.backend_connections()
    time.sleep(seconds)
    assert proxy.backend_connections() == count, "a backend is being contacted"
    return count


# -- the map -----------------------------------------------------------------------------


def test_the_map_routes_users_and_rewrites_names(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    usermap = tmp_path / "usermap.toml"
    usermap.write_text(MAP)
    proxy = start(make_proxy, tmp_path, backends, "--user-map", str(usermap))
    assert proxy.backend_of("bob") == "beta"
    assert proxy.backend_of("alice@acme") == "acme"
    # acme only knows alice: the login above worked as the rewritten name.
    assert "USER 'alice' logged in" in backends["acme"].log_text()
    assert "alice@acme" not in backends["acme"].log_text()
    proxy.process.wait_log(
        r"session \d+ user alice@acme routed by user map pattern '\*@acme': backends acme, "
        r"sent as 'alice'"
    )
    proxy.process.wait_log(r"session \d+ backend acme \(user map pattern '\*@acme'; round-robin\)")


def test_an_unmapped_user_gets_530_and_no_backend_is_contacted(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    usermap = tmp_path / "usermap.toml"
    usermap.write_text(MAP)
    proxy = start(make_proxy, tmp_path, backends, "--user-map", str(usermap))
    before = quiet_for(proxy)
    assert proxy.refused("mallory").startswith("530")
    assert proxy.refused("alice@other").startswith("530")
    assert quiet_for(proxy) == before
    proxy.process.wait_log(r"user mallory has no backend \(not in the user map\): 530")
    assert proxy.metric("ftpsproxy_logins_total", result="failure") == 2  # failed logins
    for name in backends:
        assert proxy.metric("ftpsproxy_backend_connects_total", backend=name, result="success") == 0


def test_the_map_is_reloaded_on_change_and_on_sighup_and_a_broken_one_is_kept_out(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    usermap = tmp_path / "usermap.toml"
    usermap.write_text(MAP)
    proxy = start(make_proxy, tmp_path, backends, "--user-map", str(usermap))
    log = proxy.process
    assert proxy.backend_of("bob") == "beta"

    usermap.write_text(MAP.replace('bob = "beta"', 'bob = "gamma"'))
    log.wait_log(r"user map \S+ loaded \(file changed\): 2 entries", timeout=3 * POLL)
    assert proxy.backend_of("bob") == "gamma"

    broken = MAP.replace('bob = "beta"', 'bob = "delta"')
    usermap.write_text(broken)
    log.wait_log(r"user map not reloaded \(file changed\), keeping the previous one: .*"
                 r"users\.bob\.backend: unknown backend 'delta'", timeout=3 * POLL)  # fmt: skip
    assert proxy.backend_of("bob") == "gamma"
    time.sleep(1.5 * POLL)  # more polls: the same broken file is not logged again
    assert log.log_text().count("user map not reloaded") == 1
    assert proxy.metric("ftpsproxy_user_map_reloads_total", result="error") == 1

    # A fixed file that the poll cannot tell from the broken one (same inode, size and
    # mtime): only SIGHUP reads it.
    stamp = usermap.stat()
    fixed = MAP.replace('bob = "beta"', 'bob = "beta" ')
    assert len(fixed) == len(broken)
    usermap.write_text(fixed)
    os.utime(usermap, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    time.sleep(1.5 * POLL)
    assert proxy.backend_of("bob") == "gamma"
    os.kill(proxy.process.pid, signal.SIGHUP)
    log.wait_log(r"user map \S+ loaded \(SIGHUP\): 2 entries")
    assert proxy.backend_of("bob") == "beta"


def test_a_map_naming_an_unknown_backend_stops_the_start(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    usermap = tmp_path / "usermap.toml"
    usermap.write_text('[users]\nbob = "delta"\n')
    config = tmp_path / "pool.toml"
    config.write_text(
        f'listen = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
        f'[[backends]]\nname = "beta"\nurl = "{backends["beta"].url}"\n'
    )
    process = make_proxy("--config", str(config), "--user-map", str(usermap), wait=False)
    wait_until(lambda: process.returncode is not None, 15, "the proxy to exit")
    assert process.returncode != 0
    assert "users.bob.backend: unknown backend 'delta' (the pool has beta)" in process.log_text()


def test_clients_pick_an_allowed_backend_and_the_rest_take_the_default(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    usermap = tmp_path / "usermap.toml"
    usermap.write_text(MAP.replace('bob = "beta"\n', ""))
    proxy = start(
        make_proxy, tmp_path, backends,
        "--user-map", str(usermap), "--user-map-default", "beta",
        "--user-selects-backend", "gamma",
    )  # fmt: skip
    assert proxy.backend_of("bob@gamma") == "gamma"  # the suffix is stripped
    assert proxy.backend_of("bob") == "beta"  # not in the map: the default
    assert proxy.backend_of("alice@acme") == "acme"  # the map still applies
    assert "USER 'bob' logged in" in backends["gamma"].log_text()


# -- the HTTP lookup -----------------------------------------------------------------------


def test_sighup_switches_to_another_map_file_or_to_the_lookup(
    make_proxy: MakeProxy,
    tmp_path: Path,
    backends: dict[str, PyftpdBackend],
    lookup_service: LookupService,
) -> None:
    first, second, third = (tmp_path / f"{name}.toml" for name in ("first", "second", "third"))
    first.write_text('[users]\nbob = "beta"\n')
    second.write_text('[users]\nbob = "gamma"\n')
    proxy = start(make_proxy, tmp_path, backends, settings=f'user-map = "{first}"')
    log = proxy.process
    assert proxy.backend_of("bob") == "beta"

    def switch(old: str, new: str) -> None:
        proxy.config.write_text(proxy.config.read_text().replace(old, new, 1))
        os.kill(log.pid, signal.SIGHUP)

    switch(f'user-map = "{first}"', f'user-map = "{second}"')
    log.wait_log(r"SIGHUP: user-map changed from \S+first\.toml to \S+second\.toml")
    assert proxy.backend_of("bob") == "gamma"
    second.write_text('[users]\nbob = "acme"\nalice = "acme"\n')  # the new file is watched
    log.wait_log(r"user map \S+second\.toml loaded \(file changed\): 2 entries", timeout=3 * POLL)
    assert proxy.backend_of("alice") == "acme"

    # A new file that does not read: the routing stays, and the next SIGHUP tries again.
    third.write_text('[users]\nbob = "delta"\n')
    switch(f'user-map = "{second}"', f'user-map = "{third}"')
    log.wait_log(r"SIGHUP: user-map not changed: .*unknown backend 'delta'")
    assert proxy.backend_of("alice") == "acme"
    third.write_text('[users]\nbob = "beta"\n')
    os.kill(log.pid, signal.SIGHUP)
    wait_until(lambda: log.log_text().count("SIGHUP: user-map changed") == 3, 10, "retried")
    assert proxy.backend_of("bob") == "beta"
    assert proxy.refused("alice").startswith("530")

    # No map: the lookup answers instead.
    switch(f'user-map = "{third}"', f'user-lookup = "{lookup_service.url}"')
    log.wait_log(r"SIGHUP: user-lookup changed")
    assert proxy.backend_of("bob") == "gamma"
    assert lookup_service.asked == ["bob"]


@dataclass
class LookupService:
    """``GET /route/<user>``: the answer in ``answers`` (else 404), after ``delay`` seconds."""

    answers: dict[str, dict[str, object]]
    delay: float = 0.0
    asked: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/route/{{user}}"

    def start(self) -> LookupService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                user = unquote(self.path.removeprefix("/route/"))
                service.asked.append(user)
                time.sleep(service.delay)
                answer = service.answers.get(user)
                body = json.dumps(answer).encode() if answer is not None else b"{}"
                try:
                    self.send_response(200 if answer is not None else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # the proxy gave up waiting (a timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def lookup_service() -> Iterator[LookupService]:
    service = LookupService(
        {
            "al ice@acme": {"backend": "acme", "user": "alice"},
            "bob": {"backends": ["gamma"]},
        }
    ).start()
    yield service
    service.stop()


def test_the_lookup_routes_rewrites_and_caches_answers_and_404s(
    make_proxy: MakeProxy,
    tmp_path: Path,
    backends: dict[str, PyftpdBackend],
    lookup_service: LookupService,
) -> None:
    proxy = start(make_proxy, tmp_path, backends, "--user-lookup", lookup_service.url)
    assert proxy.backend_of("al ice@acme") == "acme"  # URL-encoded, and rewritten
    assert proxy.backend_of("al ice@acme") == "acme"
    assert proxy.backend_of("bob") == "gamma"
    assert "USER 'alice' logged in" in backends["acme"].log_text()
    before = quiet_for(proxy)
    assert proxy.refused("mallory").startswith("530")  # 404
    assert proxy.refused("mallory").startswith("530")
    assert quiet_for(proxy) == before
    assert lookup_service.asked == ["al ice@acme", "bob", "mallory"]
    assert proxy.metric("ftpsproxy_user_lookup_cache_total", result="hit") == 2
    assert proxy.metric("ftpsproxy_user_lookup_cache_total", result="miss") == 3
    proxy.process.wait_log(
        r"user al ice@acme routed by user lookup: acme, user 'alice': backends acme"
    )


def test_a_burst_of_one_users_logins_asks_the_lookup_once(
    make_proxy: MakeProxy,
    tmp_path: Path,
    backends: dict[str, PyftpdBackend],
    lookup_service: LookupService,
) -> None:
    lookup_service.delay = 3.0  # every login reaches USER while the first question is out
    proxy = start(
        make_proxy, tmp_path, backends,
        "--user-lookup", lookup_service.url, "--user-lookup-timeout", "10",
    )  # fmt: skip
    with ThreadPoolExecutor(max_workers=6) as pool:
        sessions = list(pool.map(lambda _: proxy.login("bob"), range(6)))
    for ftp in sessions:  # one at a time: the proxy's passive range here has 6 ports
        assert "marker-gamma" in ftp.nlst()
        ftp.quit()
    assert lookup_service.asked == ["bob"]
    assert proxy.metric("ftpsproxy_user_lookup_cache_total", result="miss") == 1
    assert proxy.metric("ftpsproxy_user_lookup_cache_total", result="joined") == 5


def test_a_lookup_that_times_out_fails_closed_or_falls_back_to_the_policy(
    make_proxy: MakeProxy,
    tmp_path: Path,
    backends: dict[str, PyftpdBackend],
    lookup_service: LookupService,
) -> None:
    lookup_service.delay = 3.0
    pool = {name: backends[name] for name in ("beta", "gamma")}  # both serve bob
    proxy = start(
        make_proxy, tmp_path, pool,
        "--user-lookup", lookup_service.url, "--user-lookup-timeout", "0.5",
    )  # fmt: skip
    before = quiet_for(proxy)
    started = time.monotonic()
    assert proxy.refused("bob").startswith("421")
    assert time.monotonic() - started < 2.5
    assert quiet_for(proxy) == before
    assert proxy.metric("ftpsproxy_user_lookup_errors_total", reason="timeout") == 1
    proxy.process.wait_log(r"user lookup failed \(no answer within 0.5s\): 421")

    proxy.reload_with('user-lookup-failure = "policy"\n')
    proxy.process.wait_log("SIGHUP: user-lookup-failure changed from closed to policy")
    assert proxy.backend_of("bob") in ("beta", "gamma")
    assert proxy.metric("ftpsproxy_user_lookup_errors_total", reason="timeout") == 2
    assert proxy.metric("ftpsproxy_user_lookup_cache_total", result="hit") == 0  # not cached


def test_a_lookup_service_that_is_down_fails_closed_or_falls_back_to_the_policy(
    make_proxy: MakeProxy, tmp_path: Path, backends: dict[str, PyftpdBackend]
) -> None:
    pool = {name: backends[name] for name in ("beta", "gamma")}
    down = f"http://127.0.0.1:{free_port()}/route?site=ftp"  # nothing listens there
    proxy = start(make_proxy, tmp_path, pool, "--user-lookup", down)
    before = quiet_for(proxy)
    assert proxy.refused("bob").startswith("421")
    assert quiet_for(proxy) == before
    assert proxy.metric("ftpsproxy_user_lookup_errors_total", reason="unreachable") == 1

    proxy.reload_with('user-lookup-failure = "policy"\n')
    proxy.process.wait_log("SIGHUP: user-lookup-failure changed from closed to policy")
    assert proxy.backend_of("bob") in ("beta", "gamma")
    proxy.process.wait_log(r"session \d+ backend \w+ \(user lookup failed \(unreachable\): any")
