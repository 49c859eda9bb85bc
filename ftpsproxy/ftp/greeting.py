"""What a server's greeting means: wait for more, go on, or give up.

RFC 959 §5.4: on connection the server answers ``220`` (ready), ``120`` (ready in
nnn minutes, a ``220`` follows) or ``421`` (not available).  Sessions and the
health probe judge the greeting the same way, so readiness means what a login needs.
"""

from __future__ import annotations

import enum

from .replies import Reply


class Greeting(enum.Enum):
    PENDING = "pending"  # 1xx: the real greeting follows
    READY = "ready"  # 220
    REFUSED = "refused"  # anything else (421, a 5xx, a reply that greets nobody)


def judge_greeting(reply: Reply) -> Greeting:
    if reply.is_preliminary:
        return Greeting.PENDING
    if reply.code == 220:
        return Greeting.READY
    return Greeting.REFUSED


def refusal(reply: Reply) -> str:
    """Why a greeting other than 220 stops the session, in the words logs and /readyz use."""
    return f"greeting {reply.code}: {reply.text}"
