"""The pool: backends, their health and sessions, and the candidate list for a new session.

Usage at ``USER``: ``for backend in pool.candidates(user=..., client=...)``, take
``pool.acquire(backend.name)`` (``None``: it became unusable meanwhile, try the
next), connect, report the set-up's outcome with ``pool.report``, and on failure
``pool.release`` and go on.  Release again when the session ends (idempotent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ftpsproxy.pool.health import CheckResult, Health, HealthEvent, HealthState, Thresholds
from ftpsproxy.pool.leases import Lease, Ledger
from ftpsproxy.pool.policies import Request, balancer
from ftpsproxy.settings.backends import AdminState, Backend, Policy, check_unique_names

DEFAULT_THRESHOLDS = Thresholds()


class Pool:
    def __init__(
        self,
        backends: Sequence[Backend],
        policy: Policy = Policy.ROUND_ROBIN,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        self.policy = Policy(policy)
        self.thresholds = thresholds
        self._balancer = balancer(self.policy)
        self._ledger = Ledger()
        self._health: dict[str, Health] = {}
        self._backends: dict[str, Backend] = {}
        self.update(backends)

    def set_policy(self, policy: Policy) -> None:
        """Balance new sessions by *policy* from now on (a reload); leases and health stay."""
        self.policy = Policy(policy)
        self._balancer = balancer(self.policy)

    @property
    def backends(self) -> list[Backend]:
        """In configured order."""
        return list(self._backends.values())

    def update(self, backends: Sequence[Backend]) -> None:
        """Take a new configuration (a reload): backends that keep their name keep their
        health, sessions and place in the rotation; new ones start ``unknown``."""
        check_unique_names(backends)
        names = [backend.name for backend in backends]
        self._backends = {backend.name: backend for backend in backends}
        self._health = {
            name: self._health.get(name) or Health(name, self.thresholds) for name in names
        }
        self._balancer.keep_only(set(names))
        # Leases of removed backends stay live: their sessions still run, and count
        # again should the name come back.

    def candidates(
        self,
        *,
        user: str = "",
        client: str = "",
        among: Iterable[str] | None = None,
        include_down: bool = False,
    ) -> list[Backend]:
        """The backends to try for a new session, first choice first; empty when none is usable.

        ``among`` restricts the choice to these names (a user map's list), which the
        policy then balances.  Round robin advances by one pick per call.
        ``include_down`` ignores health (not drain or caps): the caller's last resort
        when every backend is down.
        """
        allowed = None if among is None else set(among)
        usable = [
            backend
            for backend in self._backends.values()
            if (allowed is None or backend.name in allowed)
            and self.usable(backend.name, include_down=include_down)
        ]
        return self._balancer.order(usable, Request(user, client), self._ledger.counts)

    def usable(self, name: str, *, include_down: bool = False) -> bool:
        """May a new session go to *name* now: known, not down, active, below its cap?"""
        backend = self._backends.get(name)
        if backend is None or backend.state is not AdminState.ACTIVE:
            return False
        if not include_down and not self._health[name].usable:
            return False
        return backend.max_sessions is None or self._ledger.count(name) < backend.max_sessions

    def acquire(self, name: str, *, include_down: bool = False) -> Lease | None:
        """Count a session on *name*; ``None`` when it is no longer usable (try the next)."""
        if not self.usable(name, include_down=include_down):
            return None
        return self._ledger.take(name)

    def release(self, lease: Lease) -> bool:
        """End *lease*'s session; False (and nothing changes) when it already ended."""
        return self._ledger.give_back(lease)

    def sessions(self, name: str) -> int:
        return self._ledger.count(name)

    def health(self, name: str) -> HealthState:
        return self._health[name].state

    def report(self, name: str, result: CheckResult) -> HealthEvent | None:
        """Feed a probe's or a session set-up's result; returns the transition, if any.

        Results for a backend no longer configured (a probe that outlived a reload)
        are ignored.
        """
        health = self._health.get(name)
        return None if health is None else health.record(result)
