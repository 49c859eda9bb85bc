"""FTP replies: the value type, a streaming parser for backend replies, and our own replies.

RFC 959 §4.2: a multi-line reply starts with ``NNN-`` and ends with a line that
starts with the *same* code followed by a space.  Lines in between may start
with anything, including other codes followed by a hyphen or space.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import FTPSyntaxError, ReplyTooLong
from .lines import LineBuffer

MAX_REPLY_LINES = 10_000
MAX_REPLY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete reply.  ``lines`` hold the wire lines without line ends, first to last."""

    code: int
    lines: tuple[bytes, ...]

    @property
    def is_preliminary(self) -> bool:
        """1xx: more replies follow for the same command."""
        return 100 <= self.code < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    @property
    def text(self) -> str:
        """The text of a single-line reply, or of the first line of a multi-line one."""
        return self.lines[0][4:].decode("utf-8", "replace")

    @property
    def body(self) -> tuple[bytes, ...]:
        """The lines between the first and the last line of a multi-line reply."""
        return self.lines[1:-1]

    def encode(self) -> bytes:
        return b"".join(line + b"\r\n" for line in self.lines)


def make_reply(code: int, text: str | Iterable[str]) -> Reply:
    """Build a reply of our own; several texts make a well-formed multi-line reply."""
    if not 100 <= code <= 599:
        raise ValueError(f"reply code out of range: {code}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        texts = [""]
    for item in texts:
        if "\r" in item or "\n" in item:
            raise ValueError("reply text must not contain line ends")
    if len(texts) == 1:
        return Reply(code, (f"{code} {texts[0]}".encode(),))
    first = f"{code}-{texts[0]}".encode()
    middle = tuple(f" {item}".encode() for item in texts[1:-1])
    last = f"{code} {texts[-1]}".encode()
    return Reply(code, (first, *middle, last))


def _code_of(line: bytes) -> int | None:
    if len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] in (b" ", b"-")):
        code = int(line[:3])
        if 100 <= code <= 599:
            return code
    return None


class ReplyParser:
    """Turns a backend's byte stream into :class:`Reply` values.

    Bounds every reply in lines and bytes; raises :class:`FTPSyntaxError` on a
    line that cannot start a reply, so a confused backend ends the session
    instead of desynchronising commands and replies.
    """

    def __init__(self, max_lines: int = MAX_REPLY_LINES, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self._lines = LineBuffer(max_line=8192)
        self._pending: list[bytes] = []
        self._pending_code: int | None = None
        self._pending_bytes = 0
        self._max_lines = max_lines
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> list[Reply]:
        replies: list[Reply] = []
        try:
            lines = self._lines.feed(data)
        except FTPSyntaxError as error:
            raise ReplyTooLong(str(error)) from error
        for line in lines:
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        return replies

    def _line(self, line: bytes) -> Reply | None:
        if self._pending_code is None:
            code = _code_of(line)
            if code is None:
                raise FTPSyntaxError(f"not a reply line: {line[:40]!r}")
            if line[3:4] == b"-":
                self._pending_code = code
                self._pending = [line]
                self._pending_bytes = len(line)
                return None
            return Reply(code, (line,))
        self._pending.append(line)
        self._pending_bytes += len(line) + 2
        if len(self._pending) > self._max_lines or self._pending_bytes > self._max_bytes:
            raise ReplyTooLong("multi-line reply too long")
        if _code_of(line) == self._pending_code and line[3:4] in (b" ", b""):
            reply = Reply(self._pending_code, tuple(self._pending))
            self._pending_code = None
            self._pending = []
            self._pending_bytes = 0
            return reply
        return None
