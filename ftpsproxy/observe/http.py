"""The metrics site: ``/metrics``, ``/healthz`` and ``/readyz``.

prometheus-client's own Twisted resource renders in the thread pool; ours
renders on the reactor thread, so collection never races the sessions that
update the series.  With ``--workers N`` the master's site answers later, once
it has asked its workers (``supervisor_site``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ftpsproxy.observe.metrics import Metrics

log = Logger()


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._metrics.registry)


class HealthResource(Resource):
    """200 when ``check`` returns None, else 503 with the reason it returns.

    ``notes`` are lines added to a 200's body: what is degraded but not failing
    (the backends of a pool that are down while others serve).
    """

    isLeaf = True

    def __init__(
        self, check: Callable[[], str | None], notes: Callable[[], list[str]] = list
    ) -> None:
        super().__init__()
        self._check = check
        self._notes = notes

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        problem = self._check()
        if problem is None:
            return "".join(f"{line}\n" for line in ["ok", *self._notes()]).encode()
        request.setResponseCode(503)
        return problem.encode() + b"\n"


class QuietSite(Site):
    """A site without an access log: a line per scrape would drown the sessions' lines."""

    noisy = False
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        pass


def metrics_site(
    metrics: Metrics,
    ready: Callable[[], str | None],
    ready_notes: Callable[[], list[str]] = list,
) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(lambda: None))
    root.putChild(b"readyz", HealthResource(ready, ready_notes))
    return QuietSite(root)


def _answer_later(request: Request, answer: Deferred[tuple[int, bytes, bytes]]) -> int:
    """Finish *request* with the (code, content type, body) *answer* gives, if still there."""
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def respond(result: tuple[int, bytes, bytes]) -> None:
        if gone:
            return
        code, content_type, body = result
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type)
        request.write(body)
        request.finish()

    def failed(reason: Failure) -> None:
        log.failure("answering {path}", reason, path=request.path)
        if not gone:
            request.setResponseCode(500)
            request.finish()

    answer.addCallbacks(respond, failed)
    return NOT_DONE_YET


class DeferredMetricsResource(Resource):
    """``/metrics`` whose exposition *render* produces later (the workers' merged)."""

    isLeaf = True

    def __init__(self, render: Callable[[], Deferred[bytes]]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> int:
        answer = self._render().addCallback(lambda body: (200, CONTENT_TYPE_LATEST.encode(), body))
        return _answer_later(request, answer)


class DeferredHealthResource(Resource):
    """Like ``HealthResource``, for a check that answers later."""

    isLeaf = True

    def __init__(self, check: Callable[[], Deferred[str | None]]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> int:
        def answer(problem: str | None) -> tuple[int, bytes, bytes]:
            text = b"ok\n" if problem is None else problem.encode() + b"\n"
            return (200 if problem is None else 503), b"text/plain; charset=utf-8", text

        return _answer_later(request, self._check().addCallback(answer))


def supervisor_site(
    render_metrics: Callable[[], Deferred[bytes]], ready: Callable[[], Deferred[str | None]]
) -> Site:
    """The master's site with ``--workers``: ``/healthz`` is the master itself."""
    root = Resource()
    root.putChild(b"metrics", DeferredMetricsResource(render_metrics))
    root.putChild(b"healthz", HealthResource(lambda: None))
    root.putChild(b"readyz", DeferredHealthResource(ready))
    return QuietSite(root)
