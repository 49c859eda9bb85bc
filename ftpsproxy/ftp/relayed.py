"""What a backend's reply may carry to the client: no terminal controls, no inside addresses.

A backend is trusted no more than a client.  Its reply text could hold a bare CR
(``230 ok\\rINJECT 200 fake`` reads as two replies in a log or a terminal), other C0
controls or ANSI escape sequences; those bytes become ``?`` (TAB stays).  And it
names addresses the client must not learn: its own (``STAT``: ``Connected to:
10.0.0.5:21``) and the proxy's on the backend's network.  :class:`AddressMask`
rewrites them to the client's view of the same connection: the proxy's address as
the client reached it, and the client's own address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from .replies import Reply

_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def strip_controls(reply: Reply) -> Reply:
    """*reply* with every control byte but TAB replaced by ``?`` (UTF-8 text is untouched)."""
    if not any(_CONTROLS.search(line) for line in reply.lines):
        return reply
    return Reply(reply.code, tuple(_CONTROLS.sub(b"?", line) for line in reply.lines))


def _variants(address: str) -> list[str]:
    """The spellings of *address* a server may print: as given, and IPv4 also as mapped."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return [address]  # a host name
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return [str(parsed.ipv4_mapped)]  # "::ffff:" before it stays, the address goes
    return [str(parsed)]


class AddressMask:
    """Replaces inside addresses in reply text with their outside counterparts.

    *replacements* maps an inside address (or host name) to what the client sees
    instead; the first mapping of an address wins.  Matches are whole addresses, not
    parts of longer numbers (``10.0.0.5`` is not found in ``10.0.0.50``).
    """

    def __init__(self, replacements: Mapping[str, str]) -> None:
        self._outside: dict[bytes, bytes] = {}
        for inside, outside in replacements.items():
            for variant in _variants(inside):
                self._outside.setdefault(variant.lower().encode(), outside.encode())
        names = sorted(self._outside, key=len, reverse=True)
        alternatives = b"|".join(re.escape(name) for name in names)
        self._pattern = re.compile(
            rb"(?<![0-9A-Za-z.-])(" + alternatives + rb")(?![0-9A-Za-z-]|\.[0-9A-Za-z])",
            re.IGNORECASE,
        )

    def apply(self, reply: Reply) -> Reply:
        lines = reply.lines
        if not any(self._pattern.search(line) for line in lines):
            return reply
        return Reply(reply.code, tuple(self._pattern.sub(self._replace, line) for line in lines))

    def _replace(self, match: re.Match[bytes]) -> bytes:
        return self._outside[match.group(1).lower()]


def client_view(
    *,
    backend_address: str,
    backend_name: str,
    proxy_inside: str,
    proxy_outside: str,
    client: str,
) -> AddressMask:
    """The mask for one session: the backend's address (and its configured name, if not an
    address) reads as the proxy's outside address, the proxy's own address on the
    backend's network as the client's address: what the client sees of the same link."""
    inside = {backend_address: proxy_outside, proxy_inside: client}
    if not _is_address(backend_name):
        inside[backend_name] = proxy_outside
    return AddressMask(inside)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
