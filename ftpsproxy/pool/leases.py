"""Session accounting: a lease per session on a backend, released at most once.

A session may end along several paths (failover, backend close, client close,
shutdown) and each may release; counting by lease makes a second release a
no-op instead of a wrong count.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Lease:
    """A session's claim on ``backend``; hand it back with ``Pool.release``."""

    backend: str
    serial: int


@dataclass
class Ledger:
    """Live leases and their count per backend name."""

    _live: set[Lease] = field(default_factory=set)
    _counts: dict[str, int] = field(default_factory=dict)
    _serials: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def take(self, backend: str) -> Lease:
        lease = Lease(backend, next(self._serials))
        self._live.add(lease)
        self._counts[backend] = self._counts.get(backend, 0) + 1
        return lease

    def give_back(self, lease: Lease) -> bool:
        """False when *lease* was already given back (or never taken here)."""
        if lease not in self._live:
            return False
        self._live.remove(lease)
        left = self._counts[lease.backend] - 1
        if left:
            self._counts[lease.backend] = left
        else:
            del self._counts[lease.backend]
        return True

    def count(self, backend: str) -> int:
        return self._counts.get(backend, 0)

    @property
    def counts(self) -> dict[str, int]:
        return self._counts
