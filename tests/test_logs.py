"""The log as an operator reads it: the sessions' lines, formatted the same with or without
``--workers``, and none of Twisted's lines about every passive listener, HTTP client
connection or scrape."""

from __future__ import annotations

import io
import os
import re
import urllib.error
import urllib.request

import pytest
from twisted.logger import Logger, eventAsJSON, eventFromJSON, formatEvent

from ftpsproxy.observe.logs import forwarding_observer, with_text_fixed
from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.proxy import ProxyProcess
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

# -- a worker's events, as the master formats them ---------------------------------------------


def _event(log_format: str, **fields: object) -> dict[str, object]:
    events: list[dict[str, object]] = []
    Logger(observer=events.append).info(log_format, **fields)
    return events[0]


def test_an_event_sent_as_json_keeps_its_format_specs() -> None:
    event = _event("end duration={duration:.3f}s {what!r} {{braces}}", duration=0.04417, what="x")
    assert formatEvent(event) == "end duration=0.044s 'x' {braces}"
    # Twisted's JSON form alone loses the format spec (the bug a worker's lines had).
    assert formatEvent(eventFromJSON(eventAsJSON(event))) == "end duration=0.04417s 'x' {braces}"
    received = eventFromJSON(eventAsJSON(with_text_fixed(event)))
    assert formatEvent(received) == "end duration=0.044s 'x' {braces}"
    assert received["duration"] == 0.04417  # the fields still travel, for JSON logs


def test_a_worker_sends_no_record_for_an_event_without_text() -> None:
    out = io.StringIO()
    observe = forwarding_observer(out)
    observe(_event(""))
    assert out.getvalue() == ""
    observe(_event("session {session} start", session=3))
    [record] = out.getvalue().split("\x1e")[1:]
    assert formatEvent(eventFromJSON(record)) == "session 3 start"


# -- a real proxy ------------------------------------------------------------------------------

_SESSION_END = re.compile(r"session \d+ end .* duration=(\S+) reason=")


def _proxy(proxied: Proxied) -> ProxyProcess:
    assert isinstance(proxied.proxy, ProxyProcess)
    return proxied.proxy


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _noise(log: str, passive: tuple[int, int]) -> list[str]:
    """Lines Twisted writes per passive listener, HTTP client connection or request."""
    low, high = passive
    found = []
    for line in log.splitlines():
        listener = re.search(r"starting on (\d+)$|\(TCP Port (\d+) Closed\)", line)
        if listener and low <= int(listener.group(1) or listener.group(2)) <= high:
            found.append(line)
        elif re.search(r"Starting factory|Stopping factory|\"GET /", line):
            found.append(line)
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_transfers_and_scrapes_leave_the_session_lines_and_no_twisted_noise(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, workers: int
) -> None:
    backend.path("f.bin").write_bytes(os.urandom(100_000))
    proxied = start_proxy(make_proxy, backend, pki, "--workers", str(workers), passive_count=20)
    proxy = _proxy(proxied)
    readyz = f"http://127.0.0.1:{proxied.metrics_port}/readyz"
    wait_until(lambda: _status(readyz) == 200, 20, "/readyz 200")
    sessions = 3
    for _ in range(sessions):
        ftp = proxied.ftp_tls()
        ftp.retrbinary("RETR f.bin", lambda data: None)  # PASV, as ftplib does over IPv4
        ftp.nlst()
        ftp.quit()
    for _ in range(3):
        assert proxied.metrics()
    wait_until(lambda: len(_SESSION_END.findall(proxy.log_text())) == sessions, 20, "session ends")
    log = proxy.log_text()
    assert _noise(log, proxied.passive) == []
    assert len(re.findall(r"session \d+ start client=127\.0\.0\.1", log)) == sessions
    # Worker or not, a duration reads with milliseconds, as the format says.
    durations = _SESSION_END.findall(log)
    assert all(re.fullmatch(r"\d+\.\d{3}s", duration) for duration in durations), durations
