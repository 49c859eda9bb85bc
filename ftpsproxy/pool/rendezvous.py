"""Weighted rendezvous (highest-random-weight) hashing: each key ranks every backend.

Each (key, backend) pair gets a score of its own, so adding or removing a
backend changes no other pair's score: only the keys whose top choice is the
changed backend move, and a key's next choice when its first is down is simply
its second-best score.  The hash is BLAKE2b of fixed bytes, never Python's
``hash()``: every worker, and the proxy after a restart, must rank alike.
Scoring on the backend's *name* keeps users in place when an address changes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from ftpsproxy.settings.backends import Backend

_UNIT = 2.0**53


def unit_hash(key: str, backend: str) -> float:
    """A uniform value in (0, 1), fixed forever for this key and backend name."""
    # NUL cannot occur in an FTP argument or a backend name, so the pair is unambiguous.
    data = key.encode("utf-8", "surrogateescape") + b"\0" + backend.encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"ftpsproxy-hrw").digest()
    top = int.from_bytes(digest, "big") >> 11  # 53 bits: exact in a float
    return (top + 0.5) / _UNIT


def score(key: str, backend: Backend) -> float:
    """``-weight / ln(u)``: the largest wins, with probability proportional to weight."""
    return -backend.weight / math.log(unit_hash(key, backend.name))


def ranking(key: str, backends: Iterable[Backend]) -> list[Backend]:
    """Backends by descending score for *key*; the name breaks (astronomically rare) ties."""
    return sorted(backends, key=lambda backend: (-score(key, backend), backend.name))
