"""``--workers N``: a master process that binds the listeners and supervises N proxy processes.

The master binds every ``listen``/``listen-implicit`` endpoint (before twistd drops
privileges) but never accepts on them: each worker adopts the same listening
sockets, and the kernel gives every new connection to one of the workers waiting
on them.  A session's data connections must reach the process that owns the
session, so each worker gets its own slice of the passive port range.

The master starts a worker again when one dies (with a growing delay while it
keeps dying), forwards SIGHUP, turns SIGTERM into a drain of every worker, re-emits
the workers' log events with a ``worker`` field, and serves the workers' metrics
as one page, each sample labelled ``worker="i"`` (``exposition.merge_expositions``).
What it tells each worker is in ``ftpsproxy.ops.workerspec``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventFromJSON,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from ftpsproxy.net.timers import cancel_call
from ftpsproxy.net.twisted_internals import close_without_shutdown
from ftpsproxy.observe.http import supervisor_site
from ftpsproxy.observe.metrics import SupervisorMetrics
from ftpsproxy.ops.listeners import OptionListener, listen_now
from ftpsproxy.ops.process import ProcessService
from ftpsproxy.ops.service import ProxyService, parse_endpoint
from ftpsproxy.ops.worker_process import (
    STABLE_AFTER,
    Worker,
    WorkerJSONLineObserver,
    WorkerProtocol,
    ended_how,
    respawn_delay,
)
from ftpsproxy.ops.worker_scrape import WorkerScraper
from ftpsproxy.ops.workerspec import (
    FIRST_LISTENER_FD,
    MASTER_KEYS,
    SPEC_ENV,
    WorkerSpec,
    worker_cli,
)
from ftpsproxy.settings.config import Config
from ftpsproxy.settings.listeners import Listener

log = Logger()

#: The fields of ``MASTER_KEYS``: on SIGHUP the master logs their changes, the workers the rest.
_MASTER_FIELDS = frozenset(key.replace("-", "_") for key in MASTER_KEYS)
KILL_MARGIN = 5.0  # seconds past --drain-timeout before a worker that has not exited is killed


class _NeverAccepting(Factory):
    """The master's factory for the listeners: it stops reading them at once."""

    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return None


def _private_dir() -> Path:
    """A new directory only we can enter (mode 0700), short enough for UNIX socket paths."""
    path = Path(tempfile.mkdtemp(prefix="ftpsproxy-workers-"))
    if len(str(path)) > 80:  # a socket path has at most 107 bytes; $TMPDIR may be long
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="ftpsproxy-workers-", dir="/tmp"))
    return path


def _unix_endpoint(path: Path) -> str:
    escaped = str(path).replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600:lockfile=0"


class WorkerSupervisor(ProcessService):
    """The master of ``--workers N``: listeners, worker processes, signals, one metrics site."""

    terminate_message = "{signal}: stopping the workers; their sessions drain for up to {s}s"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        cli: Mapping[str, Any],
        config_file: str | None = None,
        reread_config: Callable[[], Config] | None = None,
        executable: str = sys.executable,
    ) -> None:
        super().__init__(config, reactor, reread_config)
        self._cli = dict(cli)
        self._config_file = str(Path(config_file).absolute()) if config_file else None
        self._executable = executable
        self.metrics = SupervisorMetrics()
        self.workers = [
            Worker(index, ports)
            for index, ports in enumerate(config.passive_ports.split(config.workers))
        ]
        for worker in self.workers:
            self.metrics.worker_scrape_errors.labels(worker=str(worker.index))
        self._endpoints = [
            (option, description, self._parse(option, Listener.of(description).endpoint))
            for option, descriptions in (
                ("listen", config.listen),
                ("listen-implicit", config.listen_implicit),
            )
            for description in descriptions
        ]
        self._ports: list[Any] = []  # the bound listeners, in the order of _endpoints
        self._runtime_dir: Path | None = None
        self._stopping = False
        self._check_worker_config()
        self._scraper = WorkerScraper(reactor, self.workers, self.metrics)
        if config.metrics:
            site = supervisor_site(self.render_metrics, self.ready_problem)
            endpoint = self._parse("metrics", config.metrics)
            OptionListener("metrics", config.metrics, endpoint, site).setServiceParent(self)

    def _parse(self, option: str, description: str) -> Any:
        return parse_endpoint(self._reactor, option, description)

    def _spec(self, worker: Worker) -> WorkerSpec:
        metrics = _unix_endpoint(worker.metrics_path) if worker.metrics_path else None
        return WorkerSpec(
            index=worker.index,
            config_file=self._config_file,
            cli=worker_cli(self._cli, worker.ports, metrics),
            listeners=tuple(
                (option, description, FIRST_LISTENER_FD + number)
                for number, (option, description, _) in enumerate(self._endpoints)
            ),
            runtime_dir=str(self._runtime_dir) if self._runtime_dir else None,
            count=len(self.workers),
        )

    def _check_worker_config(self) -> None:
        """Fail at start-up, in the master, on what would make every worker fail.

        A worker's configuration is built and its ``ProxyService`` constructed (which
        loads the certificates and opens the xferlog) without binding anything.
        """
        config = self._spec(self.workers[0]).read_config()
        probe = ProxyService(
            config,
            self._reactor,
            endpoints={(option, desc): endpoint for option, desc, endpoint in self._endpoints},
        )
        if probe.context.xferlog is not None:
            probe.context.xferlog.close()

    # -- start -----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the listeners (as root, if twistd drops privileges later)."""
        self._bind()
        super().privilegedStartService()

    def _bind(self) -> None:
        if self._ports:
            return
        for option, description, endpoint in self._endpoints:
            port = listen_now(option, description, endpoint, _NeverAccepting())
            port.stopReading()  # the workers accept; the master only keeps the socket open
            self._ports.append(port)
            log.info(
                "{option} {description}: shared by {count} workers",
                option=option,
                description=description,
                count=len(self.workers),
            )

    def startService(self) -> None:
        self._bind()
        super().startService()
        reactor = self._reactor
        if self.config.metrics:
            self._runtime_dir = _private_dir()
            for worker in self.workers:
                worker.metrics_path = self._runtime_dir / f"worker-{worker.index}.sock"
        for worker in self.workers:
            reactor.callWhenRunning(self._spawn, worker)

    def _json_log_observer(self) -> ILogObserver:
        return WorkerJSONLineObserver()

    # -- workers ---------------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        worker.respawn = None
        if self._stopping:
            return
        if worker.metrics_path is not None:
            with contextlib.suppress(FileNotFoundError):
                worker.metrics_path.unlink()  # left behind by a worker that was killed
        env = dict(os.environ)
        env[SPEC_ENV] = self._spec(worker).to_json()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for number, port in enumerate(self._ports):
            child_fds[FIRST_LISTENER_FD + number] = port.fileno()
        try:
            worker.process = self._reactor.spawnProcess(
                WorkerProtocol(self, worker),
                self._executable,
                [self._executable, "-m", "ftpsproxy.ops.worker_main"],
                env=env,
                childFDs=child_fds,
            )
        except OSError as error:
            log.error("worker {worker} could not start: {error}", worker=worker.index, error=error)
            self._schedule_respawn(worker)
            return
        worker.pid = worker.process.pid
        if worker.spawned:
            self.metrics.worker_restarts.inc()
        worker.spawned += 1
        worker.started = self._reactor.seconds()
        self._count_alive()
        log.info(
            "worker {worker} started: pid {pid}, passive ports {low}-{high}",
            worker=worker.index,
            pid=worker.pid,
            low=worker.ports.low,
            high=worker.ports.high,
        )

    def _count_alive(self) -> None:
        self.metrics.workers.set(sum(1 for worker in self.workers if worker.process is not None))

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        pid = worker.pid
        worker.process = None
        self._count_alive()
        how = ended_how(reason)
        waiting, worker.ended = worker.ended, []
        for ended in waiting:
            ended.callback(None)
        if self._stopping:
            log.info("worker {worker} (pid {pid}) {how}", worker=worker.index, pid=pid, how=how)
            return
        lived = self._reactor.seconds() - worker.started
        worker.quick_failures = 0 if lived >= STABLE_AFTER else worker.quick_failures + 1
        delay = self._schedule_respawn(worker)
        log.warn(
            "worker {worker} (pid {pid}) {how} after {lived:.1f}s; starting it again in "
            "{delay:.1f}s",
            worker=worker.index,
            pid=pid,
            how=how,
            lived=lived,
            delay=delay,
        )

    def _schedule_respawn(self, worker: Worker) -> float:
        delay = respawn_delay(worker.quick_failures)
        worker.respawn = self._reactor.callLater(delay, self._spawn, worker)
        return delay

    def worker_output(self, worker: Worker, child_fd: int, line: bytes) -> None:
        """Re-emit a line a worker wrote: its log events, or raw text (a crash before logging)."""
        text = line.decode("utf-8", "replace").lstrip("\x1e").rstrip("\r")
        if not text.strip():
            return
        event: Any = None
        if child_fd == 1 and text.startswith("{"):
            with contextlib.suppress(ValueError):
                event = eventFromJSON(text)
        if not isinstance(event, dict):
            level = LogLevel.warn if child_fd == 2 else LogLevel.info
            log.emit(
                level,
                "{text}",
                text=text,
                worker=worker.index,
                log_system=f"worker={worker.index}",
            )
            return
        level = event.get("log_level")
        system = event.get("log_system") or "{}#{}".format(
            event.get("log_namespace", "-"), getattr(level, "name", "info")
        )
        event["log_system"] = f"{system} worker={worker.index}"
        event["worker"] = worker.index
        globalLogPublisher(event)

    # -- signals -----------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: each worker reloads itself; the master re-reads what it uses."""
        # Each worker logs its own changes, and why a file no longer parses.
        self._reload_config(fields=_MASTER_FIELDS, log_errors=False)
        count = self._signal_workers("HUP")
        log.info("SIGHUP: passed on to {count} workers", count=count)

    def _signal_workers(self, name: str) -> int:
        count = 0
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessExitedAlready, OSError):
                    worker.process.signalProcess(name)
                    count += 1
        return count

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Close the listeners here, SIGTERM every worker, wait for them (SIGKILL if late)."""
        self._stopping = True
        for worker in self.workers:
            cancel_call(worker.respawn)
            worker.respawn = None
        for port in self._ports:
            # Our descriptor only: a shutdown() would stop the workers' accepts too.
            close_without_shutdown(port)
            port.stopListening()
        self._ports = []
        # The master's /metrics and /readyz (503 "shutting down") go on while the workers
        # drain; they stop with the rest, once every worker has ended.
        stop_the_rest = super().stopService

        def workers_ended(_: object) -> Deferred[None]:
            self._scraper.close()
            return stop_the_rest()

        stopped = self._stop_workers().addCallback(workers_ended)
        return stopped.addBoth(self._remove_runtime_dir)

    def _stop_workers(self) -> Deferred[None]:
        reactor = self._reactor
        running = [worker for worker in self.workers if worker.process is not None]
        waits: list[Deferred[None]] = []
        for worker in running:
            ended: Deferred[None] = Deferred()
            worker.ended.append(ended)
            waits.append(ended)
        self._signal_workers("TERM")
        deadline = self.config.drain_timeout + KILL_MARGIN

        def kill() -> None:
            for worker in self.workers:
                if worker.process is not None:
                    log.warn(
                        "worker {worker} still running after {s}s: killing it",
                        worker=worker.index,
                        s=deadline,
                    )
            self._signal_workers("KILL")

        done: Deferred[None] = Deferred()

        def give_up() -> None:
            log.error("workers did not go away after SIGKILL; stopping anyway")
            done.callback(None)

        killer = reactor.callLater(deadline, kill)
        giving_up = reactor.callLater(deadline + KILL_MARGIN, give_up)

        def all_ended(result: object) -> None:
            for call in (killer, giving_up):
                cancel_call(call)
            if not done.called:
                done.callback(None)

        gatherResults(waits).addBoth(all_ended)
        return done

    def _remove_runtime_dir(self, result: object) -> object:
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        return result

    # -- the metrics site --------------------------------------------------------------------

    def render_metrics(self) -> Deferred[bytes]:
        """The master's series and every worker's, labelled ``worker="i"``, as one page."""
        return self._scraper.render_metrics()

    def ready_problem(self) -> Deferred[str | None]:
        """None when every worker runs and answers its own ``/readyz`` with 200."""
        if self._stopping:
            return succeed("shutting down")
        return self._scraper.ready_problem()
