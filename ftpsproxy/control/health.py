"""Whether the backend can take a session: periodic probes behind ``/readyz`` and a gauge.

Sessions connect to the backend only on ``USER``, so without a probe the proxy
would report ready while every login fails.  Each probe sets a backend session up
as a login would (``probe.py``); a failed one makes ``/readyz`` answer 503 with the
reason, sets ``ftpsproxy_backend_up`` to 0 and, when TLS failed, counts in
``ftpsproxy_tls_handshake_failures_total{side="backend",channel="probe"}``.  The log
gets one line per change between up and down, not one per probe.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ftpsproxy.control.probe import ControlConnector, probe_backend
from ftpsproxy.control.probe_outcome import ProbeOutcome
from ftpsproxy.control.readiness import BackendReadiness
from ftpsproxy.observe.metrics import Metrics

log = Logger()

CHANNEL = "probe"  # the channel label of the probe's TLS handshakes, apart from sessions'


class BackendHealth:
    """Probes the backend every *interval* seconds, one probe at a time."""

    def __init__(self, connector: ControlConnector, metrics: Metrics, interval: float) -> None:
        self._connector = connector
        self._metrics = metrics
        self._readiness = BackendReadiness()
        self._loop = LoopingCall(self.probe)  # waits for each probe before the next
        self._interval = interval
        self._clock: Any = None

    @property
    def up(self) -> bool | None:
        """None until the first probe has finished."""
        return self._readiness.up

    @property
    def reason(self) -> str:
        """Why the backend is not ready (the latest probe's words)."""
        return self._readiness.reason

    def start(self, clock: Any) -> None:
        self._clock = clock
        self._loop.clock = clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def probe(self) -> Deferred[None]:
        return probe_backend(self._connector, self._clock).addCallback(self._record)

    def _record(self, outcome: ProbeOutcome) -> None:
        if outcome.tls_failure is not None:
            self._metrics.tls_handshake_failures.labels(
                side="backend", channel=CHANNEL, reason=outcome.tls_failure
            ).inc()
        if outcome.tls_version is not None:
            self._metrics.tls_handshakes.labels(
                side="backend", channel=CHANNEL, version=outcome.tls_version
            ).inc()
        self._metrics.backend_up.set(1 if outcome.up else 0)
        change = self._readiness.record(outcome)
        if change is None:
            return
        backend = self._connector.address.url
        if change.up:
            log.info("backend {backend} is ready", backend=backend)
        else:
            log.warn("backend {backend} not ready: {why}", backend=backend, why=change.reason)
