"""The metrics site: ``/metrics``, ``/healthz`` and ``/readyz``.

prometheus-client's own Twisted resource renders in the thread pool; ours
renders on the reactor thread, so collection never races the sessions that
update the series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .metrics import Metrics


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._metrics.registry)


class HealthResource(Resource):
    """200 when ``check`` returns None, else 503 with the reason it returns."""

    isLeaf = True

    def __init__(self, check: Callable[[], str | None]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        problem = self._check()
        if problem is None:
            return b"ok\n"
        request.setResponseCode(503)
        return problem.encode() + b"\n"


def metrics_site(metrics: Metrics, ready: Callable[[], str | None]) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(lambda: None))
    root.putChild(b"readyz", HealthResource(ready))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
