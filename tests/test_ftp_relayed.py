"""Relayed replies: control bytes replaced, inside addresses rewritten to the client's view."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.ftp.relayed import AddressMask, strip_controls
from ftpsproxy.ftp.replies import Reply, ReplyParser, make_reply


def _reply(data: bytes) -> Reply:
    (reply,) = ReplyParser().feed(data)
    return reply


def test_bare_cr_and_escapes_become_question_marks() -> None:
    reply = strip_controls(_reply(b"230 ok\rINJECT 200 fake \x1b[31mred\x1b[0m\x07\r\n"))
    assert reply.encode() == b"230 ok?INJECT 200 fake ?[31mred?[0m?\r\n"


def test_tab_and_utf8_stay() -> None:
    text = "211 a\tb Übergröße 文件".encode()
    reply = _reply(text + b"\r\n")
    assert strip_controls(reply) is reply


@given(st.binary(max_size=200))
def test_no_control_byte_but_tab_survives(text: bytes) -> None:
    line = b"200 " + text.replace(b"\n", b" ")
    cleaned = strip_controls(Reply(200, (line,)))
    assert all(byte == 9 or (byte >= 32 and byte != 127) for byte in cleaned.lines[0])
    assert len(cleaned.lines[0]) == len(line)


MASK = AddressMask({"10.0.0.5": "203.0.113.7", "10.0.0.1": "198.51.100.20", "files.lan": "x"})


def test_backend_and_proxy_inside_addresses_get_the_client_view() -> None:
    stat = make_reply(
        211,
        [
            "FTP server status:",
            "Connected to: 10.0.0.5:21",
            "Connected from 10.0.0.1, ::ffff:10.0.0.1",
            "Host FILES.LAN here",
            "End of status",
        ],
    )
    assert MASK.apply(stat).lines[1:4] == (
        b" Connected to: 203.0.113.7:21",
        b" Connected from 198.51.100.20, ::ffff:198.51.100.20",
        b" Host x here",
    )


def test_only_whole_addresses_are_rewritten() -> None:
    reply = make_reply(200, "10.0.0.50 110.0.0.5 10.0.0.5.7 v10.0.0.5 sub.files.lan files.lanx")
    assert MASK.apply(reply) is reply


def test_ipv6_addresses() -> None:
    mask = AddressMask({"fd00::5": "2001:db8::7"})
    assert mask.apply(make_reply(211, "at fd00::5 port 21")).lines == (
        b"211 at 2001:db8::7 port 21",
    )
    unchanged = make_reply(211, "at fd00::50")
    assert mask.apply(unchanged) is unchanged
