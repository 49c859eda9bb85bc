"""Data-connection set-up decisions, without sockets: what the client asks, what the backend
is sent, and what its replies mean."""

from __future__ import annotations

import pytest

from ftpsproxy.data.setup import (
    Accepted,
    BackendDataPlan,
    Connect,
    EpsvAll,
    Failed,
    Listen,
    Refuse,
    Send,
    UsePort,
    client_request,
)
from ftpsproxy.ftp.lines import Command
from ftpsproxy.ftp.replies import make_reply


def _ask(line: bytes, *, epsv_all: bool = False, local: str = "192.0.2.1") -> object:
    verb, _, argument = line.partition(b" ")
    return client_request(
        Command(verb.decode(), argument), epsv_all=epsv_all, client_host="198.51.100.7",
        local_host=local,
    )  # fmt: skip


V6_PASV = "PASV is not available on an IPv6 connection; use EPSV."
PORT_AFTER_ALL = "PORT is not allowed after EPSV ALL."

CLIENT = [
    (b"PASV", {}, Listen(extended=False)),
    (b"EPSV", {}, Listen(extended=True)),
    (b"EPSV 1", {}, Listen(extended=True)),
    (b"EPSV 2", {}, Refuse(522, "Network protocol not supported on this connection.")),
    (b"EPSV 3", {}, Refuse(522, "Network protocol not supported, use (1,2).")),
    (b"EPSV ALL", {}, EpsvAll()),
    (b"PASV", {"epsv_all": True}, Refuse(503, "PASV is not allowed after EPSV ALL.")),
    (b"PASV", {"local": "2001:db8::1"}, Refuse(425, V6_PASV)),
    (b"EPSV 2", {"local": "2001:db8::1"}, Listen(extended=True)),
    (b"PORT 198,51,100,7,200,10", {}, Connect("198.51.100.7", 51210)),
    (b"EPRT |1|198.51.100.7|51210|", {}, Connect("198.51.100.7", 51210)),
    (b"PORT 198,51,100,7,200,10", {"epsv_all": True}, Refuse(503, PORT_AFTER_ALL)),
    (b"PORT 1,2,3", {}, Refuse(501, "Syntax error in PORT argument.")),
    (b"EPRT |9|x|1|", {}, Refuse(522, "Network protocol not supported, use (1,2).")),
]  # fmt: skip


@pytest.mark.parametrize(("line", "facts", "decision"), CLIENT, ids=lambda v: repr(v)[:40])
def test_client_requests(line: bytes, facts: dict[str, object], decision: object) -> None:
    assert _ask(line, **facts) == decision  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line", [b"PORT 203,0,113,9,200,10", b"PORT 198,51,100,7,0,21", b"EPRT |1|203.0.113.9|5000|"]
)
def test_active_mode_goes_only_to_the_client_and_never_below_1024(line: bytes) -> None:
    decision = _ask(line)
    assert isinstance(decision, Refuse) and decision.code == 504 and decision.bounce


def test_backend_passive_falls_back_to_pasv_once_and_remembers() -> None:
    plan = BackendDataPlan()
    assert plan.passive() == Send(b"EPSV\r\n")
    assert plan.on_reply(make_reply(500, "EPSV not understood")) == Send(b"PASV\r\n")
    assert plan.on_reply(make_reply(227, "Entering Passive Mode (10,0,0,5,195,80).")) == UsePort(
        50000
    )
    assert plan.passive() == Send(b"PASV\r\n")  # the next transfer asks PASV directly


def test_backend_epsv_port_and_refusals() -> None:
    plan = BackendDataPlan()
    plan.passive()
    assert plan.on_reply(make_reply(229, "Entering Extended Passive Mode (|||50001|)")) == UsePort(
        50001
    )
    plan.passive()
    assert plan.on_reply(make_reply(425, "no")) == Failed("backend answered 425")
    plan.passive()
    assert plan.on_reply(make_reply(229, "garbage")).__class__ is Failed


@pytest.mark.parametrize("port", [21, 1, 1023])
def test_backend_privileged_data_ports_are_refused(port: int) -> None:
    plan = BackendDataPlan()
    plan.passive()
    step = plan.on_reply(make_reply(229, f"Entering Extended Passive Mode (|||{port}|)"))
    assert isinstance(step, Failed) and step.privileged_port


def test_backend_active_falls_back_from_eprt_to_port_for_ipv4_only() -> None:
    plan = BackendDataPlan()
    assert plan.active("10.0.0.1", 50000) == Send(b"EPRT |1|10.0.0.1|50000|\r\n")
    assert plan.on_reply(make_reply(502, "no EPRT")) == Send(b"PORT 10,0,0,1,195,80\r\n")
    assert plan.on_reply(make_reply(200, "ok")) == Accepted()
    assert plan.active("10.0.0.1", 50001) == Send(b"PORT 10,0,0,1,195,81\r\n")
    v6 = BackendDataPlan()
    assert v6.active("2001:db8::1", 50000) == Send(b"EPRT |2|2001:db8::1|50000|\r\n")
    assert v6.on_reply(make_reply(502, "no EPRT")) == Failed("backend answered 502")
