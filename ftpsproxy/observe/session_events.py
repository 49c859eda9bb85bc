"""What a session reports, turned into Prometheus counters, log lines and transfer-log records.

The session says what happened (``session_started``, ``login``, ``transfer_done``, …) and
knows nothing of metric names, label sets or log wording; this is the one place that
does.  A test can hand a session a recording stand-in instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.xferlog import TransferRecord, XferLog

log = Logger(namespace="ftpsproxy.session")  # the namespace operators filter on, kept


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """Who a session is, for its start and end lines."""

    id: int
    client: str
    listener: str
    mode: str


@dataclass(frozen=True, slots=True)
class TransferDone:
    """One finished transfer (complete, failed or aborted)."""

    direction: str  # upload, download, listing
    result: str  # complete, failed, aborted
    record: TransferRecord  # for the transfer log (listings are not logged there)


class SessionEvents:
    """The one reporter of every session of a service."""

    def __init__(self, metrics: Metrics, xferlog: Callable[[], XferLog | None]) -> None:
        self._metrics = metrics
        self._xferlog = xferlog

    # -- life cycle -------------------------------------------------------------------------

    def session_started(self, facts: SessionFacts) -> None:
        self._metrics.sessions_total.labels(listener=facts.listener, mode=facts.mode).inc()
        self._metrics.sessions_active.labels(listener=facts.listener, mode=facts.mode).inc()
        log.info(
            "session {session} start client={client} mode={mode}",
            session=facts.id,
            client=facts.client,
            mode=facts.mode,
        )

    def session_ended(
        self,
        facts: SessionFacts,
        *,
        user: str | None,
        backend: str,
        bytes_up: int,
        bytes_down: int,
        seconds: float,
        why: str,
    ) -> None:
        self._metrics.sessions_active.labels(listener=facts.listener, mode=facts.mode).dec()
        self._metrics.session_duration.observe(seconds)
        log.info(
            "session {session} end client={client} user={user} backend={backend} "
            "bytes_up={up} bytes_down={down} duration={duration:.3f}s reason={why}",
            session=facts.id,
            client=facts.client,
            user=user,
            backend=backend,
            up=bytes_up,
            down=bytes_down,
            duration=seconds,
            why=why,
        )

    def timed_out(self, session: int, which: str) -> None:
        log.info("session {session} {which} timeout", session=session, which=which)

    # -- commands and replies ---------------------------------------------------------------

    def command(self, verb: str) -> None:
        self._metrics.commands_total.labels(verb=verb).inc()

    def reply(self, code: int) -> None:
        self._metrics.replies_total.labels(f"{code // 100}xx").inc()

    # -- the backend ------------------------------------------------------------------------

    def backend_failed(self, session: int, why: str) -> None:
        """No backend could be set up for the session (each attempt is counted by routing)."""
        log.warn("session {session} {why}", session=session, why=why)

    def backend_lost(self, session: int, why: str) -> None:
        log.warn("session {session} backend connection lost: {why}", session=session, why=why)

    def backend_reply_dropped(self, session: int, code: int) -> None:
        self._metrics.backend_replies_dropped.inc()
        log.warn(
            "session {session} dropped a backend reply with no command outstanding: {code}",
            session=session,
            code=code,
        )

    # -- logins -----------------------------------------------------------------------------

    def login(self, ok: bool) -> None:
        self._metrics.logins_total.labels(result="success" if ok else "failure").inc()

    def login_failed(self, session: int, client: str, user: str) -> None:
        """One line per failed login, for fail2ban or a SIEM (deploy/fail2ban/)."""
        self.login(ok=False)
        log.warn(
            "session {session} failed login client={client} user={user}",
            session=session,
            client=client,
            user=user,
        )

    def locked_out(self, session: int, client: str, seconds: float, failures: int) -> None:
        self._metrics.login_lockouts.inc()
        log.warn(
            "session {session} client {client} locked out for {seconds:g}s after "
            "{count} failed logins",
            session=session,
            client=client,
            seconds=seconds,
            count=failures,
        )

    def certificate_mismatch(self, session: int, user: str) -> None:
        log.warn(
            "session {session} user {user} does not match the client certificate",
            session=session,
            user=user,
        )

    # -- data connections and transfers -----------------------------------------------------

    def bounce_refused(self, session: int, command: str, client: str) -> None:
        self._metrics.data_connections_refused.labels(reason="bounce").inc()
        log.warn(
            "session {session} refused {command} (client {client})",
            session=session,
            command=command,
            client=client,
        )

    def backend_data_failed(self, session: int, why: str, *, privileged_port: bool) -> None:
        if privileged_port:
            self._metrics.data_connections_refused.labels(reason="backend_port").inc()
        log.warn(
            "session {session} backend data connection set-up failed: {error}",
            session=session,
            error=why,
        )

    def transfer_done(self, done: TransferDone) -> None:
        self._metrics.transfers_total.labels(direction=done.direction, result=done.result).inc()
        self._metrics.transfer_duration.labels(done.direction).observe(done.record.seconds)
        xferlog = self._xferlog()
        if xferlog is not None and done.direction != "listing":
            xferlog.record(done.record)
