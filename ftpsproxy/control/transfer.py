"""One transfer command: its data channel, and the backend's final reply held until the
channel has ended, then rewritten if the data did not all arrive.

The backend says ``226`` when *its* data connection is done; the client must hear it
only once the client's data connection is closed too, and never when the client's side
failed: then it hears ``426`` (or ``425`` if it never connected).  Those decisions are
the pure functions :func:`final_reply` and :func:`transfer_result`, tested as tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ftpsproxy.data.relay import DataChannel, Outcome
from ftpsproxy.ftp.policy import Direction
from ftpsproxy.ftp.replies import Reply, make_reply


def final_reply(
    backend: Reply, outcome: Outcome, *, refusal: tuple[int, str] | None, client_connected: bool
) -> Reply:
    """What the client hears for a finished transfer, given the backend's final reply."""
    if refusal is not None:
        return make_reply(*refusal)
    if backend.is_success and outcome is not Outcome.COMPLETE:
        if outcome is Outcome.CLIENT_FAILED and not client_connected:
            return make_reply(425, "Can't open data connection.")
        return make_reply(426, "Connection closed; transfer aborted.")
    return backend


class Result(enum.Enum):
    COMPLETE = "complete"
    FAILED = "failed"
    ABORTED = "aborted"  # ended by the client's ABOR


def transfer_result(backend: Reply, outcome: Outcome, *, aborting: bool) -> Result:
    """How the transfer counts in the metrics and the transfer log."""
    if outcome is Outcome.ABORTED and aborting:
        return Result.ABORTED
    if backend.is_success and outcome is Outcome.COMPLETE:
        return Result.COMPLETE
    return Result.FAILED


class Step(enum.Enum):
    """What to do with a backend reply to the transfer command."""

    PASS_ON = "pass-on"  # send it to the client as it is (1xx; or a late reply)
    HOLD = "hold"  # keep it until the channel has ended
    FINISH = "finish"  # the transfer is over: send the final reply now


@dataclass
class Transfer:
    """The running transfer of a session (FTP allows one at a time)."""

    channel: DataChannel
    held: Reply | None = None
    aborting: bool = False  # the client sent ABOR while it ran

    @property
    def direction(self) -> Direction:
        assert self.channel.direction is not None
        return self.channel.direction

    def backend_reply(self, reply: Reply) -> Step:
        """The backend answered the transfer command; an error ends the channel at once."""
        if reply.is_preliminary:
            return Step.PASS_ON
        self.held = reply
        if reply.is_error:
            self.channel.abort()  # may end the transfer at once (nothing was connected)
        return Step.FINISH if reply.is_error or self.channel.reported else Step.HOLD

    def channel_ended(self) -> Step:
        """The channel has reported its end: finish if the final reply is here."""
        return Step.FINISH if self.held is not None else Step.HOLD

    def client_reply(self) -> Reply:
        assert self.held is not None
        return final_reply(
            self.held,
            self._outcome(),
            refusal=self.channel.refusal,
            client_connected=self.channel.client.connected_,
        )

    def result(self, backend: Reply | None = None) -> Result:
        """How it counts; *backend* stands in for the held reply (a session cut short)."""
        reply = backend if backend is not None else self.held
        assert reply is not None
        return transfer_result(reply, self._outcome(), aborting=self.aborting)

    def _outcome(self) -> Outcome:
        assert self.channel.outcome is not None
        return self.channel.outcome

    def status(self) -> Reply:
        """STAT during a transfer (RFC 959 §4.1.3), answered from what the proxy relays."""
        return make_reply(
            213,
            f"Status: {self.direction.value} in progress, {self.channel.bytes} bytes relayed.",
        )
