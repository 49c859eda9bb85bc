"""The one reporter of sessions: events in, counters, log lines and transfer-log lines out."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.exposition import generate_latest
from twisted.logger import LogEvent, globalLogPublisher

from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.session_events import SessionEvents, SessionFacts, TransferDone
from ftpsproxy.observe.xferlog import TransferRecord, XferLog

FACTS = SessionFacts(id=7, client="198.51.100.7", listener="tcp:21", mode="explicit")


def _record(**changes: object) -> TransferRecord:
    fields: dict[str, object] = dict(
        finished=0.0, seconds=2.0, client="198.51.100.7", size=1234, filename="/a b.bin",
        binary=True, upload=True, user="alice", complete=True,
    )  # fmt: skip
    fields.update(changes)
    return TransferRecord(**fields)  # type: ignore[arg-type]


def test_transfers_count_by_direction_and_result_and_reach_the_transfer_log(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    xferlog = XferLog(tmp_path / "xferlog")
    events = SessionEvents(metrics, lambda: xferlog)
    events.transfer_done(TransferDone("upload", "complete", _record()))
    events.transfer_done(TransferDone("download", "failed", _record(upload=False, complete=False)))
    events.transfer_done(TransferDone("listing", "complete", _record(upload=False)))
    value = metrics.registry.get_sample_value
    assert value("ftpsproxy_transfers_total", {"direction": "upload", "result": "complete"}) == 1
    assert value("ftpsproxy_transfers_total", {"direction": "download", "result": "failed"}) == 1
    assert value("ftpsproxy_transfer_duration_seconds_count", {"direction": "listing"}) == 1
    lines = (tmp_path / "xferlog").read_text().splitlines()
    assert len(lines) == 2  # listings are not file transfers
    assert " /a_b.bin b _ i r alice ftp 0 * c" in lines[0]
    assert lines[1].endswith(" i")  # incomplete


def test_session_start_and_end_move_the_gauge_and_log_one_line_each() -> None:
    metrics = Metrics()
    events = SessionEvents(metrics, lambda: None)
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        events.session_started(FACTS)
        gauge = {"listener": "tcp:21", "mode": "explicit"}
        assert metrics.registry.get_sample_value("ftpsproxy_sessions_active", gauge) == 1
        events.session_ended(
            FACTS, user="alice", backend="ftp://10.0.0.5:21", bytes_up=1, bytes_down=2,
            seconds=1.5, why="client quit",
        )  # fmt: skip
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert metrics.registry.get_sample_value("ftpsproxy_sessions_active", gauge) == 0
    formats = [event["log_format"] for event in seen if event.get("session") == 7]
    assert formats[0].startswith("session {session} start")
    assert formats[1].startswith("session {session} end")
    assert all(event["log_namespace"] == "ftpsproxy.session" for event in seen)


def test_logins_lockouts_and_refusals_count() -> None:
    metrics = Metrics()
    events = SessionEvents(metrics, lambda: None)
    events.login(ok=True)
    events.login(ok=False)
    events.locked_out(7, "198.51.100.7", 300, 5)
    events.bounce_refused(7, "PORT to 203.0.113.9:2000", "198.51.100.7")
    events.backend_data_failed(7, "backend named privileged data port 21", privileged_port=True)
    events.backend_reply_dropped(7, 200)
    value = metrics.registry.get_sample_value
    assert value("ftpsproxy_logins_total", {"result": "success"}) == 1
    assert value("ftpsproxy_logins_total", {"result": "failure"}) == 1
    assert value("ftpsproxy_login_lockouts_total") == 1
    assert value("ftpsproxy_data_connections_refused_total", {"reason": "bounce"}) == 1
    assert value("ftpsproxy_data_connections_refused_total", {"reason": "backend_port"}) == 1
    assert value("ftpsproxy_backend_replies_dropped_total") == 1


def test_the_exposition_has_no_created_series() -> None:
    """``*_created`` samples were a third of the page and nothing reads them."""
    metrics = Metrics()
    SessionEvents(metrics, lambda: None).login(ok=True)
    page = generate_latest(metrics.registry).decode()
    assert "ftpsproxy_logins_total" in page
    assert "_created" not in page
