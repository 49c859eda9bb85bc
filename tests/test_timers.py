"""cancel_call: cancel a delayed call whatever state it is in."""

from __future__ import annotations

from twisted.internet.task import Clock

from ftpsproxy.net.timers import cancel_call


def test_cancel_call_cancels_a_pending_call_and_ignores_the_rest() -> None:
    clock = Clock()
    fired: list[str] = []
    pending = clock.callLater(1, fired.append, "pending")
    cancel_call(pending)
    assert not pending.active() and pending.cancelled
    cancel_call(pending)  # already cancelled: nothing
    cancel_call(None)
    ran = clock.callLater(1, fired.append, "ran")
    clock.advance(1)
    cancel_call(ran)  # already run: nothing
    assert fired == ["ran"]
