"""The backend control connection's set-up and reply matching, in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from ftpsproxy.control.backend import BackendControl, BackendSetupError
from ftpsproxy.ftp.replies import Reply
from ftpsproxy.tls.backend import BackendSessionTLS, BackendTLSSettings

BACKEND = IPv4Address("TCP", "127.0.0.1", 21)


class NegotiatedTLS13:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"


class TLSRecordingTransport(StringTransport):
    """Records ``startTLS``; ``getHandle`` then stands for the negotiated connection."""

    started_with: Any = None
    handle: Any = None

    def startTLS(self, creator: Any) -> None:
        self.started_with = creator

    def getHandle(self) -> Any:
        return self.handle


def _connect(control: BackendControl) -> TLSRecordingTransport:
    transport = TLSRecordingTransport(peerAddress=BACKEND)
    control.makeConnection(transport)
    return transport


def _outcome(control: BackendControl) -> list[Any]:
    results: list[Any] = []
    control.ready.addBoth(results.append)
    return results


def test_plain_backend_is_ready_after_220_even_behind_120() -> None:
    control = BackendControl()
    _connect(control)
    results = _outcome(control)
    control.dataReceived(b"120 wait a minute\r\n")
    assert results == []
    control.dataReceived(b"220-Welcome\r\n220 ready\r\n")
    assert results == [control]


def test_greeting_other_than_220_fails_with_the_reply() -> None:
    control = BackendControl()
    transport = _connect(control)
    results = _outcome(control)
    control.dataReceived(b"421 Too many users\r\n")
    [failure] = results
    assert failure.check(BackendSetupError) and "421" in str(failure.value)
    assert transport.disconnected


def test_explicit_ftps_set_up_sequence() -> None:
    tls = BackendSessionTLS(BackendTLSSettings(server_name="localhost", insecure=True))
    control = BackendControl(tls, explicit=True)
    transport = _connect(control)
    results = _outcome(control)
    control.dataReceived(b"220 hi\r\n")
    assert transport.value() == b"AUTH TLS\r\n"
    control.dataReceived(b"234 go ahead\r\n")
    assert transport.started_with is tls
    transport.clear()
    transport.handle = NegotiatedTLS13()
    control.handshakeCompleted()
    assert transport.value() == b"PBSZ 0\r\n"
    transport.clear()
    control.dataReceived(b"200 PBSZ=0\r\n")
    assert transport.value() == b"PROT P\r\n"
    control.dataReceived(b"200 PROT now Private\r\n")
    assert results == [control]


@pytest.mark.parametrize("reply", [b"500 AUTH not understood\r\n", b"534 no TLS here\r\n"])
def test_backend_refusing_auth_tls_fails_set_up(reply: bytes) -> None:
    tls = BackendSessionTLS(BackendTLSSettings(server_name="localhost", insecure=True))
    control = BackendControl(tls, explicit=True)
    transport = _connect(control)
    results = _outcome(control)
    control.dataReceived(b"220 hi\r\n" + reply)
    [failure] = results
    assert failure.check(BackendSetupError) and "AUTH TLS refused" in str(failure.value)
    assert transport.started_with is None and transport.disconnected


def test_replies_are_matched_to_commands_in_order() -> None:
    control = BackendControl()
    transport = _connect(control)
    control.dataReceived(b"220 hi\r\n")
    seen: list[tuple[str, int]] = []
    control.request(b"RETR a\r\n", lambda reply: seen.append(("retr", reply.code)))
    control.request(b"NOOP\r\n", lambda reply: seen.append(("noop", reply.code)))
    control.dataReceived(b"150 opening\r\n226 done\r\n200 ok\r\n")
    assert seen == [("retr", 150), ("retr", 226), ("noop", 200)]
    assert transport.value() == b"RETR a\r\nNOOP\r\n"


def test_unsolicited_reply_goes_to_its_handler() -> None:
    control = BackendControl()
    _connect(control)
    control.dataReceived(b"220 hi\r\n")
    unsolicited: list[Reply] = []
    control.on_unsolicited = unsolicited.append
    control.dataReceived(b"421 Timeout\r\n")
    assert [reply.code for reply in unsolicited] == [421]


def test_malformed_reply_aborts_and_reports() -> None:
    control = BackendControl()
    transport = _connect(control)
    control.dataReceived(b"220 hi\r\n")
    lost: list[str] = []
    control.on_lost = lambda kind, why: lost.append(why)
    control.dataReceived(b"garbage\r\n")
    assert lost and "malformed" in lost[0]
    assert transport.disconnected
