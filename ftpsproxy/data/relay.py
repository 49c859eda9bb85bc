"""One data transfer: the client's and the backend's data connections, coupled.

The source side's transport is registered as the producer of the sink side's
transport (as in Twisted's ``portforward``): flow control both ways, no queue
of our own beyond the single read a side may deliver before it is coupled.
The channel reports its end once *both* connections are closed, which is when
the session may pass the backend's final reply on to the client.

When neither side is TLS the bytes need not pass through Python at all: a
:class:`~ftpsproxy.data.splice.SplicePump` moves them in the kernel, and the channel
only sees byte counts and the pump's end.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ftpsproxy.data.connection import DataConnection, Side
from ftpsproxy.data.splice import SpliceError, SplicePump, spliceable
from ftpsproxy.ftp.policy import Direction
from ftpsproxy.net.timers import cancel_call
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.tls.openssl_internals import session_reused

log = Logger()

# The kernel relay's pipe (fs.pipe-max-size allows 1 MiB by default).  Past the per-user
# quota (fs.pipe-user-pages-soft, 64 MiB: 64 such transfers at once, unless root) the kernel
# refuses the size and the pump keeps its default 64 KiB pipe: slower, still correct.
PIPE_SIZE = 1024 * 1024


class Outcome(enum.Enum):
    COMPLETE = "complete"
    CLIENT_FAILED = "client_failed"  # client's data connection failed or never came
    BACKEND_FAILED = "backend_failed"  # backend's data connection failed or never came
    ABORTED = "aborted"  # closed on purpose: ABOR, an error reply, the session ending
    STALLED = "stalled"  # no byte moved for the stall timeout


class DataChannel:
    """The data connections prepared by one PASV/EPSV and used by at most one transfer."""

    def __init__(
        self,
        reactor: IReactorTime,
        metrics: Metrics,
        on_finished: Callable[[DataChannel], None],
        *,
        client_tls: bool,
        backend_tls: bool = False,
        connect_timeout: float,
        handshake_timeout: float = 10.0,
        require_session_reuse: bool = False,
        stall_timeout: float = 300.0,
        close_timeout: float = 10.0,
        splice: bool = False,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self._on_finished = on_finished
        self.client_tls = client_tls
        self.backend_tls = backend_tls
        self.handshake_timeout = handshake_timeout
        self.require_session_reuse = require_session_reuse
        self.stall_timeout = stall_timeout
        self.close_timeout = close_timeout
        self.splice = splice  # may use a SplicePump (the kernel supports it, config allows)
        # A reply the session must send instead of the backend's (code, text).
        self.refusal: tuple[int, str] | None = None
        # Active mode: where the proxy connects to the client, instead of listening.
        self.active_target: tuple[str, int] | None = None
        # Backend passive mode: the port to connect to when the transfer command goes out.
        self.backend_port: int | None = None
        self.client = DataConnection(self, Side.CLIENT)
        self.backend = DataConnection(self, Side.BACKEND)
        self.direction: Direction | None = None
        self.outcome: Outcome | None = None
        self.bytes = 0
        self.reported = False  # both sockets are gone and the session has been told
        self.accounted = False  # its bytes are in the session's totals
        self.filename = "-"  # the transfer command's argument, for the transfer log
        self.started_at = 0.0  # epoch seconds, set when the transfer begins
        self._bytes_counter: Any = None  # the labelled counter, looked up once per transfer
        self._started = False
        self._closing_sink = False
        self._backend_grace: float | None = None
        self._close_hooks: list[Callable[[], None]] = []
        self._timer: DelayedCall | None = reactor.callLater(  # type: ignore[assignment]
            connect_timeout, self._connect_timed_out
        )
        self._stall_timer: IDelayedCall | None = None
        self._bytes_at_last_check = 0
        self._pump: SplicePump | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run *hook* when the channel ends (releases the passive port, for instance)."""
        self._close_hooks.append(hook)

    # -- events from the session ------------------------------------------------------------

    def begin(self, direction: Direction, now: float) -> None:
        """The transfer command went to the backend (at *now*, the reactor's time): bytes
        may now flow in *direction*."""
        if self.finished or self.direction is not None:
            return
        self.direction = direction
        self.started_at = now
        self._bytes_counter = self.metrics.bytes_total.labels(direction=direction.value)
        self.metrics.transfers_active.inc()
        self._try_start()

    def client_connect_failed(self, reason: Failure) -> None:
        log.info("connecting to the client failed: {reason}", reason=reason.getErrorMessage())
        self._end(Outcome.CLIENT_FAILED)

    def backend_connect_failed(self, reason: Failure) -> None:
        log.info("backend data connection failed: {reason}", reason=reason.getErrorMessage())
        self._end(Outcome.BACKEND_FAILED)

    def abort(self) -> None:
        """Close both connections now (an error reply, the session's end)."""
        if self.finished:
            return
        self._end(Outcome.ABORTED)

    def abort_for_abor(self, grace: float = 5.0) -> None:
        """ABOR: drop the client's side now, and leave the backend's side to the backend.

        The backend closes its data connection when it handles ABOR; closing it first,
        perhaps in the middle of its TLS handshake, makes vsftpd end the whole session.
        """
        if self.finished:
            return
        self._backend_grace = grace
        self._end(Outcome.ABORTED)

    # -- events from the connections --------------------------------------------------------

    def side_connected(self, connection: DataConnection) -> None:
        if self.finished:
            connection.abort()
            return
        if self.client.connected_ and self.backend.connected_ and self._timer is not None:
            self._cancel_timer()
        self._try_start()

    def handshake_completed(self, connection: DataConnection) -> None:
        handle = connection.transport.getHandle()  # type: ignore[union-attr]
        version = handle.get_protocol_version_name()
        side = connection.side.value
        self.metrics.tls_handshakes.labels(side=side, channel="data", version=version).inc()
        resumed = session_reused(handle)
        self.metrics.tls_data_sessions.labels(side=side, resumed=str(resumed).lower()).inc()
        if connection.side is Side.CLIENT and self.require_session_reuse and not resumed:
            # Like vsftpd's require_ssl_reuse: a data connection that does not resume the
            # control session may come from someone else behind the same address.
            log.warn("refused a data connection that did not resume the TLS session")
            connection.handshake.count("session_reuse")
            self.refusal = (522, "TLS session reuse required on the data connection.")
            self._end(Outcome.CLIENT_FAILED)

    def side_lost(self, connection: DataConnection) -> None:
        if self.finished:
            self._maybe_report()
            return
        if not self._started:
            # Keep an early end (an empty listing, a tiny upload) until the direction is known.
            if self.direction is not None:
                self._try_start()
            return
        source, sink = self._source_and_sink()
        if connection is source and source.side is Side.CLIENT and not source.clean_end:
            # An upload that ended without a TLS close_notify, or with a reset, may be
            # truncated: the backend must not take it for a complete file.
            log.info("client data connection ended uncleanly: upload not complete")
            self._end(Outcome.CLIENT_FAILED)
        elif connection is source:
            self._closing_sink = True
            sink.finish()
            if sink.ended:
                self._end(Outcome.COMPLETE)
        elif source.ended and self._closing_sink:
            # A sink reset because it did not finish closing in time may not have had
            # everything: a client that stopped reading must not be told 226.
            self._end(_failure_of(sink) if sink.close_expired else Outcome.COMPLETE)
        else:
            self._end(_failure_of(sink))

    # -- internals --------------------------------------------------------------------------

    def _source_and_sink(self) -> tuple[DataConnection, DataConnection]:
        assert self.direction is not None
        if self.direction.to_client:
            return self.backend, self.client
        return self.client, self.backend

    def _try_start(self) -> None:
        if self._started or self.direction is None:
            return
        if not (self.client.connected_ and self.backend.connected_):
            return
        source, sink = self._source_and_sink()
        if sink.ended:
            self._end(_failure_of(sink))
            return
        if source.ended and source.side is Side.CLIENT and not source.clean_end:
            self._end(Outcome.CLIENT_FAILED)  # a tiny upload that already ended uncleanly
            return
        self._started = True
        self._stall_timer = self.reactor.callLater(self.stall_timeout, self._check_progress)
        sink.discard_input()
        if source.ended:
            source.forward_to(sink)
            self._closing_sink = True
            sink.finish()
        elif not self._start_pump(source, sink):
            source.forward_to(sink)

    def _start_pump(self, source: DataConnection, sink: DataConnection) -> bool:
        """Relay in the kernel if both sides are plain TCP; False to relay in Python."""
        if not (self.splice and spliceable(source.transport) and spliceable(sink.transport)):
            return False
        pump = SplicePump(
            self.reactor,  # type: ignore[arg-type]
            source.transport,  # type: ignore[arg-type]
            sink.transport,  # type: ignore[arg-type]
            on_progress=self.count,
            on_done=self._pump_done,
            pipe_size=PIPE_SIZE,
        )
        try:
            pump.start(initial=source.take_held())
        except (ValueError, OSError) as error:
            log.info("relaying in Python: splice could not start ({error})", error=error)
            return False
        self._pump = pump
        self.metrics.data_paths.labels(path="splice").inc()
        return True

    def _pump_done(self, reason: Failure | None) -> None:
        """The pump ended by itself: at the source's end (its EOF is read again by
        Twisted, which ends the transfer as usual), or with an error on one side."""
        self._pump = None
        if reason is None or self.finished:
            return
        error = reason.value
        assert isinstance(error, SpliceError)
        log.info("kernel relay failed: {error}", error=error)
        source, sink = self._source_and_sink()
        if error.side == "source":
            self._end(_failure_of(source))
        elif error.side == "sink":
            self._end(_failure_of(sink))
        else:
            self._end(Outcome.ABORTED)

    def _stop_pump(self) -> None:
        """Give both transports back to Twisted before anyone else touches them."""
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.stop()

    def count(self, size: int) -> None:
        self.bytes += size
        self._bytes_counter.inc(size)

    def _check_progress(self) -> None:
        """Every stall timeout while relaying: end the transfer if no byte moved since."""
        self._stall_timer = None
        if self.finished or self._closing_sink:
            return  # closing is bounded by each connection's close deadline
        if self.bytes == self._bytes_at_last_check:
            log.info(
                "transfer stalled: no data for {seconds:g}s after {bytes} bytes",
                seconds=self.stall_timeout,
                bytes=self.bytes,
            )
            self.metrics.data_timeouts.labels(kind="stall").inc()
            self._end(Outcome.STALLED)
            return
        self._bytes_at_last_check = self.bytes
        self._stall_timer = self.reactor.callLater(self.stall_timeout, self._check_progress)

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self.finished:
            return
        missing = _failure_of(self.backend if self.client.connected_ else self.client)
        log.info("data connection not established in time ({side})", side=missing.value)
        self._end(missing)

    def _cancel_timer(self) -> None:
        cancel_call(self._timer)
        self._timer = None

    def _end(self, outcome: Outcome) -> None:
        self._stop_pump()
        self.outcome = outcome
        self._cancel_timer()
        cancel_call(self._stall_timer)
        self._stall_timer = None
        if outcome is not Outcome.COMPLETE:
            self.client.stop_relaying()
            self.backend.stop_relaying()
            if self._backend_grace is None:
                self.client.abort()
                self.backend.abort()
            else:
                # Decouple first: aborting the client's side would otherwise stop its
                # producer, the backend's side, under the backend's feet (ProFTPD ends
                # the whole session on the broken pipe).
                if self.client.connected_ and not self.client.ended:
                    self.client._unregister_producer()
                self.backend.detach()
                self.client.abort()
                self.reactor.callLater(self._backend_grace, self.backend.abort)
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            hook()
        if self.direction is not None:
            self.metrics.transfers_active.dec()
        self._maybe_report()

    def _maybe_report(self) -> None:
        """Tell the session once both sockets are gone (or never existed)."""
        if self.reported:
            return
        for connection in (self.client, self.backend):
            if connection.connected_ and not connection.ended:
                return
        self.reported = True
        self._on_finished(self)


def _failure_of(connection: DataConnection) -> Outcome:
    """The outcome of a transfer whose *connection* failed or never came."""
    return Outcome.CLIENT_FAILED if connection.side is Side.CLIENT else Outcome.BACKEND_FAILED
