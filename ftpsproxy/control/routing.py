"""Which backend a session gets at ``USER``, and failover before the client sees an error.

The pool (``ftpsproxy.pool``, pure) orders the candidates; this module tries them
one after the other, each within ``--backend-connect-timeout``, and reports every
set-up's outcome back to the pool, so a backend that fails real sessions goes
down after ``health-fall`` of them without waiting for the probes.  Only when
every candidate has failed does the session get the last failure (``421``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ftpsproxy.control.backend import BackendControl, BackendLink
from ftpsproxy.control.probe_outcome import probe_failed
from ftpsproxy.net.proxy_header_out import ClientFacts
from ftpsproxy.observe.routing_events import RoutingEvents
from ftpsproxy.pool import CheckResult, HealthState, Lease, Pool, Source
from ftpsproxy.settings.backends import Backend


class Connector(TypingProtocol):
    """What routing needs of one backend's connector (``BackendConnector``)."""

    def control(self, facts: ClientFacts | None = None) -> Deferred[BackendControl]: ...

    def data(self, control: BackendLink, port: int, protocol: Protocol) -> Deferred[Protocol]: ...


class NoBackendAvailable(Exception):
    """No backend of the pool may take a session (all down, draining or full)."""


@dataclass(frozen=True, slots=True)
class Route:
    """The backend a session got, how to reach it, and its place in the pool's count."""

    backend: Backend
    connector: Connector
    lease: Lease
    why: str  # how it was chosen: the policy, or a failover from another backend


class BackendRouter:
    """Connects sessions to the pool's backends, in the order the pool gives."""

    def __init__(
        self,
        clock: IReactorTime,
        pool: Pool,
        connectors: Mapping[str, Connector],
        events: RoutingEvents,
    ) -> None:
        self.pool = pool
        self.connectors = dict(connectors)
        self.events = events
        self._clock = clock

    def connect(
        self,
        session: int,
        *,
        user: str,
        client: str,
        among: Sequence[str] | None = None,
        why: str = "",
        facts: ClientFacts | None = None,
    ) -> Deferred[tuple[Route, BackendControl]]:
        """The first candidate that sets a session up; fails with the last failure.

        ``among`` limits the candidates to these names (the user's routing decided
        them, ``why`` says how); the policy balances among them.  *facts* describe the
        client to a backend that wants a PROXY header.  When the pool has no usable
        backend (all down by the probes' account), every active one is tried anyway:
        the probes may be a few seconds behind, and a client is better served by a late
        success than by a certain ``421``.
        """
        candidates = self.pool.candidates(user=user, client=client, among=among)
        panic = not candidates
        if panic:
            candidates = self.pool.candidates(
                user=user, client=client, among=among, include_down=True
            )
        result: Deferred[tuple[Route, BackendControl]] = Deferred()
        if not candidates:
            result.errback(Failure(NoBackendAvailable("no backend may take a session")))
            return result
        policy = f"{self.pool.policy.value}{' (all down: trying anyway)' if panic else ''}"
        if why:
            policy = f"{why}; {policy}"
        self._try(session, candidates, 0, policy, None, result, include_down=panic, facts=facts)
        return result

    def _try(
        self,
        session: int,
        candidates: list[Backend],
        index: int,
        why: str,
        failed: tuple[Backend, Failure] | None,
        result: Deferred[tuple[Route, BackendControl]],
        *,
        include_down: bool,
        facts: ClientFacts | None,
    ) -> None:
        lease = None
        while index < len(candidates) and lease is None:
            lease = self.pool.acquire(candidates[index].name, include_down=include_down)
            index += 1  # a full one, or one gone down meanwhile, is passed over
        if lease is None:
            reason = failed[1] if failed else Failure(NoBackendAvailable("no backend is usable"))
            result.errback(reason)
            return
        backend = candidates[index - 1]
        if failed is not None:
            self.events.failover(session, failed[0].name, backend.name)
            why = f"failover from {failed[0].name}"
        connector = self.connectors[backend.name]
        route = Route(backend, connector, lease, why)
        started = self._clock.seconds()

        def ready(control: BackendControl) -> None:
            self.report(backend.name, CheckResult.passed(Source.SESSION))
            seconds = self._clock.seconds() - started
            self.events.chosen(session, backend.name, why, seconds, control.tls_version)
            result.callback((route, control))

        def set_up_failed(reason: Failure) -> None:
            self.pool.release(lease)
            outcome = probe_failed(reason.value or Exception(reason.getErrorMessage()))
            self.report(backend.name, CheckResult.failed(outcome.reason, Source.SESSION))
            self.events.set_up_failed(
                session, backend.name, outcome.result, outcome.reason, outcome.tls_failure
            )
            self._try(
                session,
                candidates,
                index,
                why,
                (backend, reason),
                result,
                include_down=include_down,
                facts=facts,
            )

        connector.control(facts).addCallbacks(ready, set_up_failed)

    def update(self, backends: Sequence[Backend], connectors: Mapping[str, Connector]) -> None:
        """A reload: new backends, states, weights and caps for new sessions.

        Running sessions keep their route (and connector) until they end; a backend
        that keeps its name keeps its health and its count of sessions.
        """
        before = {backend.name for backend in self.pool.backends}
        self.pool.update(backends)
        self.connectors = dict(connectors)
        self.events.add_backends(name for name in connectors if name not in before)

    def release(self, route: Route) -> None:
        """The session on *route* ended (any number of calls: counted once)."""
        if self.pool.release(route.lease):
            self.events.released(route.backend.name)

    def report(self, name: str, result: CheckResult) -> None:
        """A probe's or a session set-up's result; the pool decides if that changes health."""
        event = self.pool.report(name, result)
        if event is not None:
            up = event.new is not HealthState.DOWN
            self.events.health_changed(event.backend, up, event.reason)
