"""Whether each backend can take a session: periodic probes behind ``/readyz`` and the gauges.

Sessions connect to a backend only on ``USER``, so without probes the proxy would
report ready, and route sessions to a backend, while every login there fails.
Each probe sets a backend session up as a login would (``probe.py``); its result
goes to the pool, whose rise/fall thresholds decide when a backend leaves or
rejoins the rotation (one log line per change, ``ftpsproxy_backend_up``).  A
probe whose TLS failed counts in
``ftpsproxy_tls_handshake_failures_total{side="backend",channel="probe"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from ftpsproxy.control.probe import ControlConnector, probe_backend
from ftpsproxy.control.probe_outcome import ProbeOutcome
from ftpsproxy.control.routing import BackendRouter
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.pool import CheckResult, HealthState

CHANNEL = "probe"  # the channel label of the probes' TLS handshakes, apart from sessions'
NOT_PROBED = "not probed yet"


class PoolHealth:
    """Probes every backend of the router's pool each *interval* seconds.

    Each backend has a loop of its own, one probe at a time: a backend that accepts
    and never greets holds back only its own next probe, not the others' (a backend
    coming back is re-admitted on time however slow its neighbours are).
    """

    def __init__(
        self,
        router: BackendRouter,
        connectors: Mapping[str, ControlConnector],
        metrics: Metrics,
        interval: float,
    ) -> None:
        self._router = router
        self._connectors = dict(connectors)
        self._metrics = metrics
        self._loops: dict[str, LoopingCall] = {}
        self._interval = interval
        self._clock: Any = None
        self.reasons: dict[str, str] = {}  # the latest probe's reason, per backend down
        self.probed: set[str] = set()  # backends probed at least once

    def update(self, connectors: Mapping[str, ControlConnector]) -> None:
        """A reload changed the pool: probe new backends, stop probing removed ones."""
        self._connectors = dict(connectors)
        self.probed &= set(connectors)
        if self._clock is not None:
            self._start_loops()

    def start(self, clock: Any) -> None:
        self._clock = clock
        self._start_loops()

    def _start_loops(self) -> None:
        for name in list(self._loops):
            if name not in self._connectors:
                self._stop_loop(name)
        for name in self._connectors:
            if name not in self._loops:
                loop = self._loops[name] = LoopingCall(self.probe, name)
                loop.clock = self._clock
                loop.start(self._interval, now=True)

    def stop(self) -> None:
        for name in list(self._loops):
            self._stop_loop(name)

    def _stop_loop(self, name: str) -> None:
        loop = self._loops.pop(name)
        if loop.running:
            loop.stop()

    def probe(self, name: str) -> Deferred[None]:
        """Probe *name* once (its connector as configured now)."""
        connector = self._connectors[name]
        done: Deferred[None] = probe_backend(connector, self._clock).addCallback(self._record, name)
        return done

    def _record(self, outcome: ProbeOutcome, name: str) -> None:
        if name not in self._connectors:  # removed by a reload while it was probed
            return
        if outcome.tls_failure is not None:
            self._metrics.tls_handshake_failures.labels(
                side="backend", channel=CHANNEL, reason=outcome.tls_failure
            ).inc()
        if outcome.tls_version is not None:
            self._metrics.tls_handshakes.labels(
                side="backend", channel=CHANNEL, version=outcome.tls_version
            ).inc()
        self._router.events.probed(name, outcome.result)
        self.probed.add(name)
        self.reasons[name] = outcome.reason
        result = CheckResult.passed() if outcome.up else CheckResult.failed(outcome.reason)
        self._router.report(name, result)

    def ready_problem(self) -> str | None:
        """Why ``/readyz`` must say 503: no backend is up (each named, with its reason)."""
        pool = self._router.pool
        states = {backend.name: pool.health(backend.name) for backend in pool.backends}
        if any(state is HealthState.UP for state in states.values()):
            return None
        if not self.probed:
            return f"backends {NOT_PROBED}"
        return "no backend ready: " + "; ".join(self.describe(name) for name in states)

    def down(self) -> list[str]:
        """The backends out of use, each with why: for ``/readyz``'s body while ready."""
        pool = self._router.pool
        return [
            self.describe(backend.name)
            for backend in pool.backends
            if pool.health(backend.name) is HealthState.DOWN
        ]

    def describe(self, name: str) -> str:
        address = self._connectors[name].address.url
        state = self._router.pool.health(name).value
        reason = self.reasons.get(name) or (NOT_PROBED if name not in self.probed else "")
        return f"backend {name} ({address}) {state}" + (f": {reason}" if reason else "")
