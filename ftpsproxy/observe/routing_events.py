"""What routing and health checks report about the backends: per-backend series and log lines.

Every series carries the backend's configured *name* as its ``backend`` label, never
its address.  Health changes are logged once per transition (the pool's thresholds
decide when), not once per probe.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger

from ftpsproxy.observe.metrics import Metrics

log = Logger(namespace="ftpsproxy.session")  # session lines share the operators' namespace
health_log = Logger(namespace="ftpsproxy.health")

RESULTS = ("success", "refused", "unreachable", "tls", "timeout")


class RoutingEvents:
    """The one reporter of routing and health for a service's backends."""

    def __init__(self, metrics: Metrics, backends: Iterable[str]) -> None:
        self._metrics = metrics
        self._seen: set[str] = set()  # names whose session gauge is set up
        self.add_backends(backends)

    def add_backends(self, names: Iterable[str]) -> None:
        """Backends new to the pool: their series from the start, up (unknown health counts
        as in use).  Pass only the new ones: a backend that stays keeps its gauges.  A name
        that was removed and comes back keeps its session count (its sessions still run).
        """
        metrics = self._metrics
        for name in names:
            for result in RESULTS:
                metrics.backend_connects_total.labels(backend=name, result=result)
            if name not in self._seen:
                self._seen.add(name)
                metrics.backend_sessions.labels(backend=name).set(0)
            metrics.backend_connect_seconds.labels(backend=name)
            metrics.backend_up.labels(backend=name).set(1)

    # -- sessions -------------------------------------------------------------------------

    def chosen(self, session: int, backend: str, why: str, seconds: float, tls: str | None) -> None:
        """A session's backend set-up succeeded after *seconds*."""
        metrics = self._metrics
        metrics.backend_connects_total.labels(backend=backend, result="success").inc()
        metrics.backend_connect_seconds.labels(backend=backend).observe(seconds)
        metrics.backend_sessions.labels(backend=backend).inc()
        if tls is not None:
            metrics.tls_handshakes.labels(side="backend", channel="control", version=tls).inc()
        log.info(
            "session {session} backend {backend} ({why})", session=session, backend=backend, why=why
        )

    def released(self, backend: str) -> None:
        self._metrics.backend_sessions.labels(backend=backend).dec()

    def set_up_failed(
        self, session: int, backend: str, result: str, why: str, tls_kind: str | None
    ) -> None:
        """One backend's set-up failed for a session (a failover may follow)."""
        metrics = self._metrics
        metrics.backend_connects_total.labels(backend=backend, result=result).inc()
        if tls_kind is not None:
            metrics.tls_handshake_failures.labels(
                side="backend", channel="control", reason=tls_kind
            ).inc()
        log.warn(
            "session {session} backend {backend} set-up failed: {why}",
            session=session,
            backend=backend,
            why=why,
        )

    def failover(self, session: int, failed: str, to: str) -> None:
        self._metrics.backend_failovers_total.labels(**{"from": failed, "to": to}).inc()
        log.info(
            "session {session} failover from backend {failed} to {to}",
            session=session,
            failed=failed,
            to=to,
        )

    # -- health ---------------------------------------------------------------------------

    def probed(self, backend: str, result: str) -> None:
        self._metrics.backend_probes_total.labels(backend=backend, result=result).inc()

    def health_changed(self, backend: str, up: bool, why: str) -> None:
        """The pool's thresholds moved *backend* in or out of use."""
        self._metrics.backend_up.labels(backend=backend).set(1 if up else 0)
        if up:
            health_log.info("backend {backend} is up ({why})", backend=backend, why=why)
        else:
            health_log.warn("backend {backend} is down ({why})", backend=backend, why=why)
