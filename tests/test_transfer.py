"""Which final reply the client hears for a transfer, and how it counts: tables."""

from __future__ import annotations

import pytest

from ftpsproxy.control.transfer import Result, final_reply, transfer_result
from ftpsproxy.data.relay import Outcome
from ftpsproxy.ftp.replies import make_reply

OK = make_reply(226, "Transfer complete.")
BACKEND_ERROR = make_reply(451, "Local error.")

FINAL = [
    # backend reply, outcome, refusal, client connected -> code the client hears
    (OK, Outcome.COMPLETE, None, True, 226),
    (OK, Outcome.CLIENT_FAILED, None, True, 426),  # the client's side broke: not all arrived
    (OK, Outcome.CLIENT_FAILED, None, False, 425),  # the client never connected
    (OK, Outcome.BACKEND_FAILED, None, True, 426),
    (OK, Outcome.ABORTED, None, True, 426),
    (OK, Outcome.STALLED, None, True, 426),
    (BACKEND_ERROR, Outcome.COMPLETE, None, True, 451),  # the backend's error stands
    (BACKEND_ERROR, Outcome.CLIENT_FAILED, None, False, 451),
    (OK, Outcome.CLIENT_FAILED, (522, "TLS session reuse required."), True, 522),
    (BACKEND_ERROR, Outcome.ABORTED, (522, "TLS session reuse required."), True, 522),
]


@pytest.mark.parametrize(("backend", "outcome", "refusal", "connected", "code"), FINAL)
def test_final_reply(
    backend: object, outcome: Outcome, refusal: object, connected: bool, code: int
) -> None:
    reply = final_reply(backend, outcome, refusal=refusal, client_connected=connected)  # type: ignore[arg-type]
    assert reply.code == code
    if code == 226:
        assert reply is backend  # passed on as the backend said it


RESULTS = [
    (OK, Outcome.COMPLETE, False, Result.COMPLETE),
    (OK, Outcome.COMPLETE, True, Result.COMPLETE),  # ABOR after the end: it completed
    (OK, Outcome.ABORTED, True, Result.ABORTED),
    (OK, Outcome.ABORTED, False, Result.FAILED),  # closed by an error or the session's end
    (BACKEND_ERROR, Outcome.COMPLETE, False, Result.FAILED),
    (OK, Outcome.CLIENT_FAILED, False, Result.FAILED),
    (make_reply(426, "aborted"), Outcome.ABORTED, True, Result.ABORTED),
]


@pytest.mark.parametrize(("backend", "outcome", "aborting", "result"), RESULTS)
def test_transfer_result(backend: object, outcome: Outcome, aborting: bool, result: Result) -> None:
    assert transfer_result(backend, outcome, aborting=aborting) is result  # type: ignore[arg-type]
