"""Connections closed over their PROXY protocol header: counted always, logged sparingly.

Anyone can open connections without a header, or from an untrusted address, as fast
as the network allows; one log line each would let them fill the disk.  So every such
connection is counted (``ftpsproxy_proxy_header_refusals_total{channel, reason}``), and
logged at info at most once per :data:`LOG_INTERVAL` per channel and reason, with how
many went unlogged since.  Balancer health checks are counted, never logged.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ftpsproxy.observe.metrics import Metrics

log = Logger()

LOG_INTERVAL = 10.0  # seconds between two info lines for the same channel and reason

_WHY = {
    "untrusted": "not from a --proxy-protocol-from network",
    "timeout": "no PROXY header in time",
    "invalid": "not a valid PROXY header",
}


class LogThrottle:
    """Says whether a line for *key* may be logged now, and how many were held back."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: hold this one back; else log it, with the returned count held back before."""
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class ProxyHeaderEvents:
    """What the PROXY header readers of one channel (``control``, ``data``) report."""

    def __init__(self, metrics: Metrics, clock: IReactorTime, channel: str) -> None:
        self._metrics = metrics
        self._clock = clock
        self._channel = channel
        self._throttle = LogThrottle(LOG_INTERVAL)

    def refused(self, reason: str, peer: str) -> None:
        self._metrics.proxy_header_refusals.labels(channel=self._channel, reason=reason).inc()
        held = self._throttle.allow(reason, self._clock.seconds())
        if held is None:
            return
        log.info(
            "closed a {channel} connection from {peer}: {why}{more}",
            channel=self._channel,
            peer=peer,
            why=_WHY.get(reason, reason),
            more=f" ({held} more since the last such line)" if held else "",
        )

    def health_check(self, peer: str) -> None:
        # No line at all: a balancer checks every few seconds, all day long.
        self._metrics.proxy_health_checks.labels(channel=self._channel).inc()
