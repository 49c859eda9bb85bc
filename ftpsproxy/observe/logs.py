"""JSON logs: one object per line with stable keys, for log shippers; and the JSON
records a worker sends its master.

``JSONLineObserver`` is twistd's log observer when ``--log-format json`` is given;
every session's lines carry its ``session`` id.  Passwords never reach a log event:
the session never logs a PASS argument.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, formatEvent
from zope.interface import implementer


def printable(text: str, limit: int = 128) -> str:
    """Text from a peer (a user name, a backend's words) fit for a log line or an HTTP body:
    no control characters, bounded length."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:limit]


# Event fields copied to the JSON object when present, under these names.
_FIELDS = ("session", "client", "user", "backend", "mode", "why", "error", "peer")


@implementer(ILogObserver)
class JSONLineObserver:
    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if not text and failure is None:
            return  # no line, as in the text format (a Twisted line made silent, say)
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "event": text,
        }
        for key in _FIELDS:
            if key in event:
                value = event[key]
                record[key] = value if isinstance(value, int | float | bool) else str(value)
        if failure is not None:
            record["failure"] = failure.getTraceback()
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()


def with_text_fixed(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of *event* whose format is its text, formatted here.

    Twisted's JSON form of an event keeps each field as ``str(value)`` and drops the
    format spec: ``duration={duration:.3f}s`` would read ``duration=0.044170371000063824s``
    once the master formats it again.  The fields themselves stay (for JSON logs).
    """
    if event.get("log_format") is None:
        return event
    fixed = dict(event)
    fixed.pop("log_flattened", None)  # left by an earlier JSON observer: lossy, as above
    fixed["log_format"] = formatEvent(fixed).replace("{", "{{").replace("}", "}}")
    return fixed


def forwarding_observer(out: TextIO) -> ILogObserver:
    """A worker's observer: one JSON record per event, its text formatted as it would be here.

    Events with no text and no failure are not sent: the master would write no line.
    """

    def record(event: dict[str, Any]) -> str | None:
        if not formatEvent(event) and event.get("log_failure") is None:
            return None
        return "\x1e" + eventAsJSON(with_text_fixed(event)) + "\n"

    return FileLogObserver(out, record)
