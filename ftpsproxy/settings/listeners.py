"""A control listener as configured: its endpoint, and whether it expects a PROXY header.

``--proxy-protocol`` makes every control listener expect the header.  One listener
alone does when its endpoint starts with ``haproxy:``, Twisted's own prefix for an
endpoint behind the PROXY protocol (``haproxy:tcp:2121``): a balancer in front of one
port, clients straight on another.  ftpsproxy reads that prefix itself and strips it
before Twisted's endpoint parser sees the rest, so such a header is held to the same
rules as ``--proxy-protocol``'s (``--proxy-protocol-from``, the handshake timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The prefix of an endpoint that expects a PROXY header (Twisted's name for it).
PROXIED_PREFIX = "haproxy:"


@dataclass(frozen=True, slots=True)
class Listener:
    description: str  # as written: the logs' and the metrics' name for it
    endpoint: str  # what Twisted's endpoint parser reads
    proxied: bool  # a PROXY header comes first

    @classmethod
    def of(cls, description: str, *, all_proxied: bool = False) -> Listener:
        """*description* read; *all_proxied* is ``--proxy-protocol``."""
        endpoint = description.removeprefix(PROXIED_PREFIX)
        return cls(description, endpoint, all_proxied or endpoint != description)
