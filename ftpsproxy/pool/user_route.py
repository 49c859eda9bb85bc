"""Where a user's session may go, as decided at ``USER`` before any backend is contacted.

A decision names the backends the pool may choose from (its policy balances among
them), the user name the backend gets, and why, for the session's log line.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserRoute:
    """``among``: the allowed backend names (``None``: every backend); ``user``: what the
    backend's ``USER`` says; ``why``: the map entry or lookup result that decided."""

    among: tuple[str, ...] | None
    user: str
    why: str


def split_user(user: str) -> tuple[str, str]:
    """``(local, domain)`` around the *last* ``@``: ``a@b@acme`` is ``a@b`` at ``acme``.

    The last one, because a client's own name may hold an ``@`` (an e-mail address as
    a login) while a routing suffix is always at the end.
    """
    local, at, domain = user.rpartition("@")
    return (local, domain) if at else (user, "")


def selected_by_user(user: str, allowed: Collection[str]) -> UserRoute | None:
    """``name@backend`` for a client that picks its server, if *backend* is allowed.

    The suffix is stripped: the backend gets ``name``.  Anything else (no suffix, a
    backend not in *allowed*, nothing before the ``@``) is not a choice: ``None``.
    """
    local, backend = split_user(user)
    if not local or backend not in allowed:
        return None
    return UserRoute((backend,), local, f"user chose backend {backend} (user@backend)")
