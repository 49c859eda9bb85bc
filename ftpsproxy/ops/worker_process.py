"""The master's side of one worker process: its record, its output pipes, how it ended,
its private metrics socket, and the JSON log lines that keep its ``worker`` field."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ftpsproxy.observe.logs import JSONLineObserver
from ftpsproxy.settings.config import PortRange

RESPAWN_DELAY = 0.5  # seconds before a dead worker is started again, doubled while it keeps dying
RESPAWN_DELAY_MAX = 30.0
STABLE_AFTER = 30.0  # seconds a worker must have run for its death not to count as a crash loop
MAX_LOG_LINE = 1024 * 1024
SCRAPE_TIMEOUT = 2.0  # seconds a worker gets to answer the master's /metrics or /readyz


class WorkerEvents(Protocol):
    """What a worker's process protocol reports to the master."""

    def worker_output(self, worker: Worker, child_fd: int, line: bytes) -> None: ...

    def worker_ended(self, worker: Worker, reason: Failure) -> None: ...


def respawn_delay(quick_failures: int) -> float:
    """Seconds to wait before starting a worker that died after *quick_failures* short runs."""
    doublings = min(max(quick_failures - 1, 0), 16)
    return min(RESPAWN_DELAY_MAX, RESPAWN_DELAY * 2.0**doublings)


class OutputLines:
    """Splits a pipe's bytes into lines; a line longer than ``MAX_LOG_LINE`` is cut."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > MAX_LOG_LINE:
            lines.append(self._buffer)
            self._buffer = b""
        return lines

    def rest(self) -> list[bytes]:
        rest, self._buffer = self._buffer, b""
        return [rest] if rest else []


@dataclass(eq=False)
class Worker:
    index: int
    ports: PortRange
    metrics_path: Path | None = None
    process: Any = None  # IProcessTransport while it runs
    pid: int | None = None
    started: float = 0.0
    spawned: int = 0
    quick_failures: int = 0
    respawn: IDelayedCall | None = None
    ended: list[Deferred[None]] = field(default_factory=list)


class WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: WorkerEvents, worker: Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker
        self._lines = {1: OutputLines(), 2: OutputLines()}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = self._lines.get(childFD)
        if lines is not None:
            for line in lines.feed(data):
                self._supervisor.worker_output(self._worker, childFD, line)

    def processEnded(self, reason: Failure) -> None:
        for childFD, lines in self._lines.items():
            for line in lines.rest():
                self._supervisor.worker_output(self._worker, childFD, line)
        self._supervisor.worker_ended(self._worker, reason)


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    """Connects with a factory that logs no ``Starting factory``/``Stopping factory`` lines.

    ``HTTPConnectionPool`` makes its own factory (``noisy``) for every connection it opens.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        connected: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connected


@implementer(IAgentEndpointFactory)
class WorkerSockets:
    """``http://worker<i>/...`` goes to worker *i*'s private UNIX socket."""

    def __init__(self, reactor: Any, workers: Sequence[Worker]) -> None:
        self._reactor = reactor
        self._workers = workers

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        worker = self._workers[int(uri.host.removeprefix(b"worker"))]
        assert worker.metrics_path is not None
        path = str(worker.metrics_path)
        return _QuietEndpoint(UNIXClientEndpoint(self._reactor, path, SCRAPE_TIMEOUT))


@implementer(ILogObserver)
class WorkerJSONLineObserver:
    """``JSONLineObserver`` that also keeps the ``worker`` of events a worker logged."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._line = io.StringIO()
        self._inner = JSONLineObserver(self._line)

    def __call__(self, event: dict[str, Any]) -> None:
        self._line.seek(0)
        self._line.truncate()
        self._inner(event)
        text = self._line.getvalue()
        if "worker" in event:
            record = json.loads(text)
            record["worker"] = event["worker"]
            text = json.dumps(record, ensure_ascii=False) + "\n"
        self._out.write(text)
        self._out.flush()


def ended_how(reason: Failure) -> str:
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number is not None:
        return f"was killed by signal {signal_number}"
    return f"exited with code {getattr(value, 'exitCode', '?')}"
