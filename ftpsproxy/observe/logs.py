"""JSON logs: one object per line with stable keys, for log shippers.

Used as twistd's log observer when ``--log-format json`` is given; every
session's lines carry its ``session`` id.  Passwords never reach a log event:
the session never logs a PASS argument.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

# Event fields copied to the JSON object when present, under these names.
_FIELDS = ("session", "client", "user", "backend", "mode", "why", "error", "peer")


@implementer(ILogObserver)
class JSONLineObserver:
    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "event": formatEvent(event),
        }
        for key in _FIELDS:
            if key in event:
                value = event[key]
                record[key] = value if isinstance(value, int | float | bool) else str(value)
        failure = event.get("log_failure")
        if failure is not None:
            record["failure"] = failure.getTraceback()
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()
