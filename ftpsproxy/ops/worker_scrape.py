"""The master's view of its workers' own HTTP sites: their metrics as one page, and whether
they are all ready.  Each worker serves them on a private UNIX socket."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from ftpsproxy.observe.exposition import merge_expositions
from ftpsproxy.observe.metrics import SupervisorMetrics
from ftpsproxy.ops.worker_process import SCRAPE_TIMEOUT, Worker, WorkerSockets


class WorkerScraper:
    def __init__(self, reactor: Any, workers: Sequence[Worker], metrics: SupervisorMetrics) -> None:
        self._reactor = reactor
        self._workers = workers
        self._metrics = metrics
        # Persistent: one connection per worker for all scrapes, not a new one (logged) each.
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent.usingEndpointFactory(
            reactor, WorkerSockets(reactor, workers), pool=self._pool
        )

    def close(self) -> None:
        self._pool.closeCachedConnections()

    def fetch(self, worker: Worker, path: bytes) -> Deferred[tuple[int, bytes] | None]:
        """GET *path* from *worker*'s own site: (code, body), or None if it did not answer."""
        if worker.metrics_path is None or worker.process is None:
            return succeed(None)
        if not worker.metrics_path.exists():
            return succeed(None)  # not listening yet: no connection attempt (each one is logged)
        url = b"http://worker%d%s" % (worker.index, path)
        fetched: Deferred[Any] = self._agent.request(b"GET", url)

        def body(response: Any) -> Deferred[tuple[int, bytes]]:
            return readBody(response).addCallback(lambda data: (response.code, data))

        fetched.addCallback(body)
        fetched.addTimeout(SCRAPE_TIMEOUT, self._reactor)
        return fetched.addErrback(lambda reason: None)

    def render_metrics(self) -> Deferred[bytes]:
        """The master's series and every worker's, labelled ``worker="i"``, as one page."""
        fetches = [self.fetch(worker, b"/metrics") for worker in self._workers]

        def merge(results: list[tuple[int, bytes] | None]) -> bytes:
            parts: list[tuple[str | None, str]] = []
            for worker, result in zip(self._workers, results, strict=True):
                if result is None or result[0] != 200:
                    self._metrics.worker_scrape_errors.labels(worker=str(worker.index)).inc()
                    continue
                parts.append((str(worker.index), result[1].decode("utf-8", "replace")))
            own = generate_latest(self._metrics.registry).decode()
            text, unparsable = merge_expositions([(None, own), *parts])
            for source in unparsable:
                self._metrics.worker_scrape_errors.labels(worker=source).inc()
            return text.encode()

        gathered: Deferred[Any] = gatherResults(fetches)
        return gathered.addCallback(merge)

    def ready_problem(self) -> Deferred[str | None]:
        """None when every worker runs and answers its own ``/readyz`` with 200."""
        fetches = [self.fetch(worker, b"/readyz") for worker in self._workers]

        def judge(results: list[tuple[int, bytes] | None]) -> str | None:
            problems: list[str] = []
            for worker, result in zip(self._workers, results, strict=True):
                if worker.process is None:
                    problems.append(f"worker {worker.index}: not running")
                elif result is None:
                    problems.append(f"worker {worker.index}: no answer")
                elif result[0] != 200:
                    why = result[1].decode("utf-8", "replace").strip()
                    problems.append(f"worker {worker.index}: {why}")
            return "; ".join(problems) or None

        gathered: Deferred[Any] = gatherResults(fetches)
        return gathered.addCallback(judge)
