"""SIGHUP, SIGTERM and SIGINT for the proxy's services, handled on the reactor thread."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class Signals:
    """Runs *on_reload* on SIGHUP and *on_terminate* (with the signal's name) on SIGTERM and
    SIGINT, in the reactor thread.

    Both are taken from twistd so that a graceful stop is a normal exit (0): twistd would
    re-raise the signal, and its SIGINT then SIGTERM would stop the reactor twice (a
    ``ReactorNotRunning`` traceback).  Installed once the reactor runs, after the
    reactor's own handlers, which would otherwise replace ours.  With ``ignore_sigint``
    (a worker: Ctrl-C reaches its master, which stops it) SIGINT is ignored instead.
    """

    def __init__(
        self,
        reactor: Any,
        on_reload: Callable[[], object],
        on_terminate: Callable[[str], object],
    ) -> None:
        self._reactor = reactor
        self._on_reload = on_reload
        self._on_terminate = on_terminate
        self._previous_sighup: Any = signal.SIG_DFL
        self.ignore_sigint = False

    def install(self) -> None:
        self._reactor.callWhenRunning(self._reactor.callLater, 0, self._install)

    def _install(self) -> None:
        reactor = self._reactor
        self._previous_sighup = signal.signal(
            signal.SIGHUP, lambda signum, frame: reactor.callFromThread(self._on_reload)
        )

        def terminate(signum: int, frame: object) -> None:
            reactor.callFromThread(self._on_terminate, signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.ignore_sigint else terminate)

    def stop_reloading(self) -> None:
        """While stopping: SIGHUP goes back to what it was before."""
        signal.signal(signal.SIGHUP, self._previous_sighup)
