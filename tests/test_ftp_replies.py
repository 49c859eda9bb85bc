"""Replies: the multi-line grammar of RFC 959 §4.2 and the bounds on what a backend may send."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.ftp.errors import FTPSyntaxError, ReplyTooLong
from ftpsproxy.ftp.replies import Reply, ReplyParser, make_reply


def test_single_line_reply() -> None:
    assert ReplyParser().feed(b"220 ready\r\n") == [Reply(220, (b"220 ready",))]


def test_multi_line_reply_ends_only_on_same_code_and_space() -> None:
    data = b"211-Features:\r\n 220 not the end\r\n211-still not\r\n230 other code\r\n211 End\r\n"
    [reply] = ReplyParser().feed(data)
    assert reply.code == 211
    assert len(reply.lines) == 5
    assert reply.encode() == data


def test_replies_split_across_reads() -> None:
    parser = ReplyParser()
    assert parser.feed(b"150 Opening\r\n226 Tr") == [Reply(150, (b"150 Opening",))]
    assert parser.feed(b"ansfer complete\r\n") == [Reply(226, (b"226 Transfer complete",))]


def test_line_that_is_not_a_reply_is_an_error() -> None:
    with pytest.raises(FTPSyntaxError):
        ReplyParser().feed(b"hello\r\n")


def test_reply_code_out_of_range_is_an_error() -> None:
    with pytest.raises(FTPSyntaxError):
        ReplyParser().feed(b"999 what\r\n")


def test_endless_multi_line_reply_is_bounded() -> None:
    parser = ReplyParser(max_lines=100)
    parser.feed(b"211-start\r\n")
    with pytest.raises(ReplyTooLong):
        parser.feed(b" feature\r\n" * 101)


def test_megabyte_without_line_end_is_bounded() -> None:
    with pytest.raises(ReplyTooLong):
        ReplyParser().feed(b"2" * (1 << 20))


def test_make_reply_multi_line_is_well_formed() -> None:
    reply = make_reply(211, ["Features:", "EPSV", "End"])
    assert reply.encode() == b"211-Features:\r\n EPSV\r\n211 End\r\n"
    assert ReplyParser().feed(reply.encode()) == [reply]


def test_make_reply_refuses_line_ends_in_text() -> None:
    with pytest.raises(ValueError):
        make_reply(200, "ok\r\n230 smuggled")


@given(st.binary(max_size=500))
def test_parser_never_raises_anything_but_syntax_error(data: bytes) -> None:
    try:
        replies = ReplyParser().feed(data)
    except FTPSyntaxError:
        return
    for reply in replies:
        assert 100 <= reply.code <= 599
        assert reply.lines[-1][:3] == str(reply.code).encode()


@given(
    st.integers(100, 599),
    st.lists(st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=30), min_size=1),
)
def test_our_replies_parse_back_identically(code: int, texts: list[str]) -> None:
    reply = make_reply(code, texts)
    assert ReplyParser().feed(reply.encode()) == [reply]
