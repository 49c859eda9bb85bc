"""Whether the backend is reachable: a periodic TCP probe behind ``/readyz`` and a gauge.

Sessions connect to the backend only on ``USER``, so without a probe the proxy
would report ready while every login fails.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpsproxy.control.backend import BackendConnector
from ftpsproxy.observe.metrics import Metrics

log = Logger()


class _Hangup(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class BackendHealth:
    """Probes the backend with TCP connections."""

    def __init__(
        self,
        connector: BackendConnector,
        metrics: Metrics,
        interval: float,
    ) -> None:
        self._connector = connector
        self._metrics = metrics
        self.up: bool | None = None  # None: not probed yet
        self._loop = LoopingCall(self.probe)
        self._interval = interval

    def start(self, clock: Any) -> None:
        self._loop.clock = clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def probe(self) -> Deferred[None]:
        address = self._connector.address
        connecting = self._connector.tcp(address.host, address.port, _Hangup())

        def result(outcome: object) -> None:
            up = not isinstance(outcome, Failure)
            if up != self.up:
                why = outcome.getErrorMessage() if isinstance(outcome, Failure) else ""
                log.info(
                    "backend {backend} is {state}",
                    backend=address.url,
                    state="reachable" if up else f"unreachable ({why})",
                )
            self.up = up
            self._metrics.backend_up.set(1 if up else 0)

        return connecting.addBoth(result)
