"""PASV/EPSV replies and PORT/EPRT arguments (RFC 959 §4.1.2, RFC 2428)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.ftp.addresses import (
    HostPort,
    UnsupportedFamily,
    format_eprt_argument,
    format_epsv_reply,
    format_pasv_reply,
    format_port_argument,
    parse_eprt_argument,
    parse_epsv_reply,
    parse_pasv_reply,
    parse_port_argument,
)
from ftpsproxy.ftp.errors import FTPSyntaxError


def test_pasv_reply_encodes_host_and_port() -> None:
    assert format_pasv_reply("192.0.2.7", 41000) == b"Entering Passive Mode (192,0,2,7,160,40)."


def test_pasv_reply_without_parentheses_is_understood() -> None:
    assert parse_pasv_reply(b"227 Entering Passive Mode 127,0,0,1,4,1") == HostPort(
        "127.0.0.1", 1025
    )


@pytest.mark.parametrize(
    "text",
    [b"227 Entering Passive Mode", b"227 (256,0,0,1,4,1)", b"227 (1,2,3,4,0,0)", b"227 (1,2,3)"],
)
def test_bad_pasv_replies_are_refused(text: bytes) -> None:
    with pytest.raises(FTPSyntaxError):
        parse_pasv_reply(text)


def test_epsv_reply_round_trip() -> None:
    assert parse_epsv_reply(b"229 " + format_epsv_reply(41001)) == 41001


@pytest.mark.parametrize(
    "text", [b"229 Entering (|||70000|)", b"229 (|||0|)", b"229 (||1|)", b"229 (!!!12|)", b"229"]
)
def test_bad_epsv_replies_are_refused(text: bytes) -> None:
    with pytest.raises(FTPSyntaxError):
        parse_epsv_reply(text)


def test_epsv_reply_with_other_delimiter() -> None:
    assert parse_epsv_reply(b"229 Entering Extended Passive Mode (!!!2121!)") == 2121


def test_port_and_eprt() -> None:
    assert parse_port_argument(b"127,0,0,1,4,1") == HostPort("127.0.0.1", 1025)
    assert parse_eprt_argument(b"|2|::1|2121|") == HostPort("::1", 2121)
    assert parse_eprt_argument(b"|1|10.0.0.1|21|") == HostPort("10.0.0.1", 21)
    with pytest.raises(UnsupportedFamily):
        parse_eprt_argument(b"|3|x|21|")
    for bad in (b"|1|::1|21|", b"|2|1.2.3.4|21|", b"|1|1.2.3.4|0|", b"|1|1.2.3.4|", b"1|a|b|c|"):
        with pytest.raises(FTPSyntaxError):
            parse_eprt_argument(bad)


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_pasv_round_trip(address: object, port: int) -> None:
    text = format_pasv_reply(str(address), port)
    assert parse_pasv_reply(b"227 " + text) == HostPort(str(address), port)
    assert parse_port_argument(format_port_argument(str(address), port)) == HostPort(
        str(address), port
    )


@given(st.ip_addresses(), st.integers(1, 65535))
def test_eprt_round_trip(address: object, port: int) -> None:
    assert parse_eprt_argument(format_eprt_argument(str(address), port)) == HostPort(
        str(address), port
    )


@given(st.binary(max_size=80))
def test_parsers_raise_only_syntax_errors(data: bytes) -> None:
    for parse in (parse_pasv_reply, parse_epsv_reply, parse_port_argument, parse_eprt_argument):
        try:
            result = parse(data)
        except FTPSyntaxError:
            continue
        port = result if isinstance(result, int) else result.port
        assert 1 <= port <= 65535
