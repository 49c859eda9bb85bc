"""Command lines: splitting, Telnet stripping, parsing, and what must never reach the backend."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.ftp.errors import FTPSyntaxError, LineTooLong
from ftpsproxy.ftp.lines import Command, LineBuffer, parse_command, strip_telnet


def test_crlf_and_bare_lf_both_end_lines() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"USER a\r\nPASS b\nNO") == [b"USER a", b"PASS b"]
    assert buffer.feed(b"OP\r\n") == [b"NOOP"]


def test_line_split_across_reads_is_reassembled() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"RE") == []
    assert buffer.feed(b"TR x\r") == []
    assert buffer.feed(b"\n") == [b"RETR x"]


def test_unterminated_line_over_limit_raises_before_buffering_more() -> None:
    buffer = LineBuffer(max_line=16)
    with pytest.raises(LineTooLong):
        buffer.feed(b"A" * 17)


def test_terminated_line_over_limit_raises() -> None:
    buffer = LineBuffer(max_line=16)
    with pytest.raises(LineTooLong):
        buffer.feed(b"A" * 20 + b"\r\n")


def test_clear_returns_pending_bytes() -> None:
    buffer = LineBuffer()
    buffer.feed(b"AUTH TLS\r\nUSER injected")
    assert buffer.clear() == b"USER injected"
    assert buffer.pending == 0


def test_parse_keeps_argument_bytes_exactly() -> None:
    command = parse_command(b"retr  two  spaces .txt ")
    assert command == Command("RETR", b" two  spaces .txt ")
    assert command.encode() == b"RETR  two  spaces .txt \r\n"


def test_parse_non_ascii_argument_roundtrips() -> None:
    name = "Übergröße 文件.bin".encode()
    assert parse_command(b"STOR " + name).encode() == b"STOR " + name + b"\r\n"


@pytest.mark.parametrize(
    "line", [b"", b"RE", b"RETRX a", b"R3TR a", b"RETR a\x00b", b"RETR a\rDELE b", b" RETR a"]
)
def test_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(FTPSyntaxError):
        parse_command(line)


def test_telnet_interrupt_before_abor_is_removed() -> None:
    # IAC IP IAC Synch (DM), as ftplib.abort() and RFC 959 §4.1.3 send it.
    assert parse_command(b"\xff\xf4\xff\xf2ABOR").verb == "ABOR"


def test_telnet_synch_without_its_urgent_byte() -> None:
    # ftplib.abort() sends the DM as TCP urgent data: the stream holds IAC IP IAC ABOR.
    assert parse_command(b"\xff\xf4\xffABOR").verb == "ABOR"


def test_telnet_escaped_iac_is_data() -> None:
    assert strip_telnet(b"a\xff\xffb") == b"a\xffb"
    assert strip_telnet(b"a\xff\xfb\x01b") == b"ab"


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_syntax_error(line: bytes) -> None:
    try:
        command = parse_command(line)
    except FTPSyntaxError:
        return
    encoded = command.encode()
    # Whatever passes is exactly one command line: no smuggled second command.
    assert encoded.count(b"\n") == 1 and encoded.endswith(b"\r\n")
    assert b"\r" not in encoded[:-2] and b"\x00" not in encoded


@given(st.lists(st.binary(max_size=50), max_size=20))
def test_line_buffer_never_loses_or_invents_bytes(chunks: list[bytes]) -> None:
    buffer = LineBuffer(max_line=10_000)
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(buffer.feed(chunk))
    data = b"".join(chunks)
    rebuilt = b"".join(line + b"\n" for line in lines)
    pending = buffer.clear()
    assert rebuilt.replace(b"\r\n", b"\n") + pending == data.replace(b"\r\n", b"\n")
