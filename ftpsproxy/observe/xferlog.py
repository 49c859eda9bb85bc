"""The transfer log in the xferlog format of wu-ftpd and ProFTPD, one line per file transfer.

Existing log tools (xferstats, log shippers' FTP parsers) read it unchanged.
Fields, space-separated: current-time transfer-time remote-host file-size filename
transfer-type special-action-flag direction access-mode username service-name
authentication-method authenticated-user-id completion-status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True, slots=True)
class TransferRecord:
    finished: float  # epoch seconds
    seconds: float
    client: str
    size: int
    filename: str
    binary: bool
    upload: bool
    user: str
    complete: bool


def _field(text: str) -> str:
    """A field without spaces or control characters (ProFTPD writes ``_`` for a space)."""
    cleaned = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in text)
    return cleaned or "-"


def format_line(record: TransferRecord) -> str:
    return " ".join(
        [
            time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(record.finished)),
            str(max(1, round(record.seconds))),
            _field(record.client),
            str(record.size),
            _field(record.filename),
            "b" if record.binary else "a",
            "_",
            "i" if record.upload else "o",
            "r",
            _field(record.user),
            "ftp",
            "0",
            "*",
            "c" if record.complete else "i",
        ]
    )


class XferLog:
    """Appends records to a file; ``reopen`` follows log rotation (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8", buffering=1)

    def record(self, record: TransferRecord) -> None:
        self._file.write(format_line(record) + "\n")

    def reopen(self) -> None:
        self._file.close()
        self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        self._file.close()
