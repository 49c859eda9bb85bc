"""The top service of a proxy process: its configuration, SIGHUP, SIGTERM/SIGINT and JSON logs.

Shared by the single-process proxy (``ftpsproxy.ops.service``) and the master of
``--workers N`` (``ftpsproxy.ops.supervisor``), so both read the configuration
again, log what changed and stop on SIGTERM in the same words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container
from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger

from ftpsproxy.observe.logs import JSONLineObserver
from ftpsproxy.ops.signals import Signals
from ftpsproxy.settings.config import Config, ConfigChange, reload_config
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.options import as_written
from ftpsproxy.settings.values import LogFormat

log = Logger()


class ProcessService(MultiService):
    """The configuration a process runs with; SIGHUP reads it again, SIGTERM stops gracefully.

    SIGTERM (or SIGINT, Ctrl-C) stops the reactor, which stops this service: subclasses
    drain in ``stopService``.  Subclasses define ``reload`` (SIGHUP).
    """

    #: Logged on the first SIGTERM or SIGINT (``{signal}``); ``{s}`` is ``--drain-timeout``.
    terminate_message: ClassVar[str] = "{signal}: draining sessions for up to {s}s"

    def __init__(
        self, config: Config, reactor: Any, reread_config: Callable[[], Config] | None
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._reread_config = reread_config  # SIGHUP: the file and command line, again
        self._signals = Signals(reactor, self.reload, self._terminate)
        self._terminating = False

    def reload(self) -> None:
        raise NotImplementedError

    def _reload_config(
        self, *, fields: Container[str] | None = None, log_errors: bool = True
    ) -> ConfigChange | None:
        """Read the configuration again and keep what may change while running.

        Logs what changed: only *fields*, if given (another process logs the rest);
        a file that no longer parses changes nothing (logged if *log_errors*).
        """
        if self._reread_config is None:
            return None
        try:
            fresh = self._reread_config()
        except ConfigError as error:
            if log_errors:
                log.error("SIGHUP: configuration not reloaded: {error}", error=error)
            return None
        change = reload_config(self.config, fresh)
        for field, (old, new) in sorted(change.applied.items()):
            if fields is None or field in fields:
                name, before = as_written(field, old)
                after = as_written(field, new)[1]
                log.info(
                    "SIGHUP: {name} changed from {old} to {new}", name=name, old=before, new=after
                )
        for field, (old, new) in sorted(change.needs_restart.items()):
            if fields is None or field in fields:
                name, before = as_written(field, old)
                after = as_written(field, new)[1]
                log.warn(
                    "SIGHUP: {name} changed from {old} to {new}: takes effect after a restart",
                    name=name,
                    old=before,
                    new=after,
                )
        if fields is None and not change.applied and not change.needs_restart:
            log.info("SIGHUP: configuration unchanged")
        self.config = change.config
        return change

    def ignore_sigint(self) -> None:
        """Leave Ctrl-C to another process (a worker's master): SIGINT is ignored."""
        self._signals.ignore_sigint = True

    def _terminate(self, signal: str) -> None:
        if self._terminating:
            log.info("{signal}: already stopping", signal=signal)
            return
        self._terminating = True
        log.info(self.terminate_message, signal=signal, s=self.config.drain_timeout)
        # The reactor may be stopping already (twistd's own SIGINT handler, before ours).
        with contextlib.suppress(ReactorNotRunning):
            self._reactor.stop()

    def startService(self) -> None:
        super().startService()
        self._signals.install()

    def stopService(self) -> Deferred[None]:
        self._signals.stop_reloading()
        stopped: Deferred[None] = maybeDeferred(super().stopService)
        return stopped

    def setServiceParent(self, parent: Any) -> None:
        """With ``--log-format json``, hand twistd our observer (it starts logging later)."""
        super().setServiceParent(parent)
        if self.config.log_format == LogFormat.JSON and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._json_log_observer())

    def _json_log_observer(self) -> ILogObserver:
        return JSONLineObserver()
