"""Smooth weighted round robin, as nginx does it: weights interleave (a a b a c a a for 5:1:1).

Each pick adds every backend's weight to its running value, takes the largest
and subtracts the total from it.  Over any ``sum(weights)`` picks of a fixed
set each backend is chosen exactly ``weight`` times, never in long runs.
Backends left out of a pick (down, draining, full) keep their running value.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftpsproxy.settings.backends import Backend


class SmoothWeightedRoundRobin:
    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def order(self, backends: Sequence[Backend]) -> list[Backend]:
        """Advance one pick among *backends* (in configured order): the pick, then the rest.

        The rest follow by running value, so failover goes to the backend whose
        turn would come next.  Ties go to the earlier configured backend.
        """
        if not backends:
            return []
        current = self._current
        total = 0
        best = backends[0]
        for backend in backends:
            total += backend.weight
            current[backend.name] = current.get(backend.name, 0) + backend.weight
            if current[backend.name] > current[best.name]:
                best = backend
        current[best.name] -= total
        position = {backend.name: index for index, backend in enumerate(backends)}
        rest = sorted(
            (backend for backend in backends if backend is not best),
            key=lambda backend: (-current[backend.name], position[backend.name]),
        )
        return [best, *rest]

    def keep_only(self, names: set[str]) -> None:
        """Forget backends no longer configured."""
        for name in self._current.keys() - names:
            del self._current[name]
