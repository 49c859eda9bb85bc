"""One worker process of ``--workers N`` (``python -m ftpsproxy.ops.worker_main``).

Started by the master (``ftpsproxy.ops.supervisor``).

It runs an ordinary ``ProxyService`` on the listening sockets the master bound and
passed down (descriptors 3, 4, …, adopted, so the kernel spreads new connections
over the workers) with its own slice of the passive port range.  Its log events go
to stdout as Twisted JSON records, which the master re-emits.  Its stdin is a pipe
from the master: when that pipe ends, the master is gone, and the worker stops as
on SIGTERM (draining its sessions) instead of lingering.  SIGINT is left to the
master, which passes SIGTERM on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.logger import Logger, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.observe.logs import forwarding_observer
from ftpsproxy.ops.service import ProxyService
from ftpsproxy.ops.workerspec import SPEC_ENV, WorkerSpec
from ftpsproxy.settings.errors import ConfigError

log = Logger()


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket inherited as descriptor *fd*, for ``StreamServerEndpointService``."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        probe = socket.socket(fileno=self._fd)  # learns the address family
        family = probe.family
        probe.detach()
        port: IListeningPort = self._reactor.adoptStreamPort(self._fd, family, protocolFactory)
        os.close(self._fd)  # the port works on its own duplicate
        return succeed(port)


@implementer(IReadDescriptor)
class ParentPipe:
    """Our end of the pipe from the master: end of file means the master is gone."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:  # like Twisted's own: an exception, not a Failure, ends it
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        return None if data else ConnectionDone()

    def connectionLost(self, reason: Failure) -> None:
        if reason.check(ConnectionDone):  # not the reactor closing everything at shutdown
            self._gone()

    def logPrefix(self) -> str:
        return "master"


class _Master:
    gone = False

    @classmethod
    def lost(cls) -> None:
        cls.gone = True
        log.warn("the master process is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as the master's SIGTERM


def main() -> int:
    spec = WorkerSpec.from_json(os.environ.pop(SPEC_ENV))
    globalLogBeginner.beginLoggingTo([forwarding_observer(sys.stdout)], redirectStandardIO=True)
    from twisted.internet import reactor

    try:
        config = spec.read_config()
        endpoints = {
            (option, description): AdoptedEndpoint(reactor, fd)
            for option, description, fd in spec.listeners
        }
        service = ProxyService(
            config,
            reactor,
            reread_config=spec.read_config,
            endpoints=endpoints,
            session_ids=spec.session_ids(),
        )
        service.ignore_sigint()  # Ctrl-C in a terminal reaches the master too, which stops us
        service.privilegedStartService()
        service.startService()
    except ConfigError as error:
        log.critical("worker {worker} cannot start: {error}", worker=spec.index, error=error)
        return 2
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addReader(ParentPipe(0, _Master.lost))
    reactor.run()
    if _Master.gone and spec.runtime_dir is not None:
        # Nobody else will remove it; the last worker out (its socket gone) succeeds.
        with contextlib.suppress(OSError):
            os.rmdir(spec.runtime_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
