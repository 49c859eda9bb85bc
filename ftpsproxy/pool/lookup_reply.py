"""The HTTP user lookup's protocol, without I/O: the URL to ask, and what the answer means.

``GET`` the URL with the user name in it (``{user}`` in the template, else
``?user=`` appended), URL-encoded.  ``200`` with a JSON object
``{"backend": "acme"}`` or ``{"backends": ["a", "b"]}``, and optionally
``"user": "alice"`` (the name the backend gets), routes the user; ``404`` means the
service knows no backend for this user.  Anything else is the service failing, and
``--user-lookup-failure`` decides.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import quote

from ftpsproxy.pool.user_route import UserRoute

#: Bodies beyond this are not routing answers.
MAX_BODY = 64 * 1024


class LookupReplyError(ValueError):
    """The service answered, but not with a usable answer; the message says why."""


@dataclass(frozen=True, slots=True)
class Found:
    """The service's answer for a user; ``user`` is the rewritten name, if it gave one."""

    backends: tuple[str, ...]
    user: str | None = None

    def route(self, user: str) -> UserRoute:
        names = ", ".join(self.backends)
        renamed = f", user {self.user!r}" if self.user is not None else ""
        return UserRoute(self.backends, self.user or user, f"user lookup: {names}{renamed}")


@dataclass(frozen=True, slots=True)
class NotFound:
    """``404``: no backend for this user."""


Answer = Found | NotFound


def lookup_url(template: str, user: str) -> str:
    """The URL to ask about *user*: every byte but unreserved ones percent-encoded."""
    encoded = quote(user.encode("utf-8", "surrogateescape"), safe="")
    if "{user}" in template:
        return template.replace("{user}", encoded)
    return f"{template}{'&' if '?' in template else '?'}user={encoded}"


def parse_answer(status: int, body: bytes, known: Collection[str]) -> Answer:
    """What an HTTP response means; :class:`LookupReplyError` when it is not an answer."""
    if status == 404:
        return NotFound()
    if status != 200:
        raise LookupReplyError(f"HTTP status {status}")
    if len(body) > MAX_BODY:
        raise LookupReplyError(f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise LookupReplyError("body is not JSON") from None
    if not isinstance(data, dict):
        raise LookupReplyError("body is not a JSON object")
    if ("backend" in data) == ("backends" in data):
        raise LookupReplyError('expected "backend" or "backends"')
    names = [data["backend"]] if "backend" in data else data["backends"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise LookupReplyError('"backends" must be a non-empty list of names')
    unknown = [name for name in names if name not in known]
    if unknown:
        raise LookupReplyError(f"unknown backend {unknown[0][:64]!r}")
    user = data.get("user")
    if user is not None and (
        not isinstance(user, str) or not user or any(ord(ch) < 32 or ord(ch) == 127 for ch in user)
    ):
        raise LookupReplyError('"user" must be a non-empty name without control characters')
    return Found(tuple(dict.fromkeys(names)), user)
