"""The states of a session and the transitions between them: one table.

An event the table does not allow raises :class:`InvalidTransition` instead of being
absorbed by a flag.  Within ``READY`` and ``LOGGING_IN`` a command may be waiting for
the backend's reply (the command queue holds what the client pipelined meanwhile).
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AWAITING_USER = "awaiting-user"  # greeted; no backend yet
    CONNECTING = "connecting"  # USER received; connecting to the backend
    LOGGING_IN = "logging-in"  # USER/PASS relayed, not yet accepted
    READY = "ready"  # logged in: commands relayed
    TRANSFERRING = "transferring"  # a transfer command is out; only ABOR and STAT pass
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAITING_USER: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.LOGGING_IN, State.CLOSED}),
    State.LOGGING_IN: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.TRANSFERRING, State.CLOSED}),
    State.TRANSFERRING: frozenset({State.READY, State.CLOSED}),
    State.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(current: State, new: State) -> State:
    """*new*, if the table allows it from *current*; otherwise :class:`InvalidTransition`."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"{current.value} -> {new.value}")
    return new
