"""Splitting a control stream into lines, and client command lines into verb and argument.

RFC 959 ends lines with CRLF; bare LF is tolerated because real clients send it.
Telnet IAC sequences (RFC 854) that clients send around ABOR are removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FTPSyntaxError, LineTooLong

MAX_LINE = 4096

_IAC = 0xFF
_VERB = re.compile(rb"[A-Za-z]{3,4}")


class LineBuffer:
    """Accumulates bytes and hands out complete lines, never holding more than a line's worth."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by *data*, without their line ends.

        Raises :class:`LineTooLong` once an unfinished line exceeds the limit, so
        a peer can never make us buffer unbounded input.
        """
        self.append(data)
        lines: list[bytes] = []
        while (line := self.next_line()) is not None:
            lines.append(line)
        return lines

    def append(self, data: bytes) -> None:
        """Buffer *data* without splitting it yet: a reader that must stop between lines
        (its replies are not being read) keeps the rest as bytes, not as line objects.

        Raises :class:`LineTooLong` when the unfinished last line exceeds the limit.
        """
        self._buffer += data
        last_end = self._buffer.rfind(b"\n")
        if len(self._buffer) - last_end - 1 > self._max_line:
            raise LineTooLong(f"unterminated line exceeds {self._max_line} bytes")

    def next_line(self) -> bytes | None:
        """The next complete line without its line end, or None; :class:`LineTooLong`
        for a line over the limit."""
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max_line:
            raise LineTooLong(f"line of {len(line)} bytes exceeds {self._max_line}")
        return line

    @property
    def complete_lines(self) -> int:
        """How many complete lines wait to be taken."""
        return self._buffer.count(b"\n")

    def clear(self) -> bytes:
        """Drop and return whatever is buffered (used after ``AUTH TLS``, see CVE-2011-0411)."""
        pending = bytes(self._buffer)
        self._buffer.clear()
        return pending

    @property
    def pending(self) -> int:
        return len(self._buffer)


def strip_telnet(line: bytes) -> bytes:
    """Remove Telnet IAC commands (IP, DM, AYT …) from a line; ``IAC IAC`` stands for 0xFF."""
    if _IAC not in line:
        return line
    out = bytearray()
    index = 0
    while index < len(line):
        byte = line[index]
        if byte != _IAC:
            out.append(byte)
            index += 1
            continue
        following = line[index + 1] if index + 1 < len(line) else None
        if following == _IAC:
            out.append(_IAC)
            index += 2
        elif following is not None and 251 <= following <= 254:
            index += 3  # WILL/WONT/DO/DONT carry an option byte
        elif following is not None and following >= 240:
            index += 2  # IP, DM, AYT, …: a two-byte command
        else:
            # A lone IAC: the byte after it was sent as TCP urgent data (the Synch's DM)
            # and never reached the stream.
            index += 1
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Command:
    """One client command: an upper-case verb and the raw argument bytes (may be empty)."""

    verb: str
    argument: bytes = b""

    @property
    def has_argument(self) -> bool:
        return bool(self.argument)

    def encode(self) -> bytes:
        """The command as a wire line, CRLF included."""
        if self.argument:
            return self.verb.encode("ascii") + b" " + self.argument + b"\r\n"
        return self.verb.encode("ascii") + b"\r\n"

    def text(self) -> str:
        """The argument decoded for the proxy's own use (UTF-8 with escapes, never raises)."""
        return self.argument.decode("utf-8", "surrogateescape")


def parse_command(line: bytes) -> Command:
    """Parse a line (no line end) into a :class:`Command`.

    Refuses what could smuggle a second command to the backend: NUL, CR, LF
    inside the line, and verbs that are not 3–4 ASCII letters.
    """
    line = strip_telnet(line)
    if b"\x00" in line or b"\r" in line or b"\n" in line:
        raise FTPSyntaxError("control characters in command line")
    verb, _, argument = line.partition(b" ")
    if not _VERB.fullmatch(verb):
        raise FTPSyntaxError("command verb must be 3 or 4 letters")
    return Command(verb.decode("ascii").upper(), argument)
