"""Delayed calls: the one way to cancel one that may already have run."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall

__all__ = ["cancel_call"]


def cancel_call(call: IDelayedCall | None) -> None:
    """Cancel *call* unless it is None, has run or was cancelled already.

    ``IDelayedCall.cancel()`` raises once the call has run or been cancelled; callers
    that keep the call in an attribute set that attribute to None themselves.
    """
    if call is not None and call.active():
        call.cancel()
