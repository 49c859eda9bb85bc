"""What routing by user reports: which map entry or lookup answer chose a session's
backends, users with no backend, the lookup's cache and failures, map reloads.

User names appear in log lines (as printable text), never in labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from ftpsproxy.observe.logs import printable
from ftpsproxy.observe.metrics import Metrics

log = Logger(namespace="ftpsproxy.session")
map_log = Logger(namespace="ftpsproxy.usermap")


class UserRoutingEvents:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def routed(
        self, session: int, user: str, among: Sequence[str] | None, sent_as: str, why: str
    ) -> None:
        backends = ", ".join(among) if among is not None else "any"
        renamed = f", sent as {printable(sent_as)!r}" if sent_as != user else ""
        log.info(
            "session {session} user {user} routed by {why}: backends {backends}{renamed}",
            session=session,
            user=printable(user),
            why=why,
            backends=backends,
            renamed=renamed,
        )

    def unrouted(self, session: int, user: str, why: str) -> None:
        log.warn(
            "session {session} user {user} has no backend ({why}): 530, no backend contacted",
            session=session,
            user=printable(user),
            why=why,
        )

    def lookup_cached(self, result: str) -> None:
        """``hit``, ``miss`` or ``joined`` (see ``ftpsproxy.control.user_lookup``)."""
        self._metrics.user_lookup_cache.labels(result=result).inc()

    def lookup_failed(self, session: int, user: str, reason: str, why: str, fallback: str) -> None:
        self._metrics.user_lookup_errors.labels(reason=reason).inc()
        log.warn(
            "session {session} user {user}: user lookup failed ({why}): {fallback}",
            session=session,
            user=printable(user),
            why=why,
            fallback=fallback,
        )

    def map_loaded(self, path: str, entries: int, cause: str) -> None:
        self._metrics.user_map_reloads.labels(result="ok").inc()
        map_log.info(
            "user map {path} loaded ({cause}): {entries} entries",
            path=path,
            cause=cause,
            entries=entries,
        )

    def map_refused(self, error: str, cause: str) -> None:
        """One line: the file is broken, the previous map stays in use."""
        self._metrics.user_map_reloads.labels(result="error").inc()
        map_log.error(
            "user map not reloaded ({cause}), keeping the previous one: {error}",
            cause=cause,
            error=error,
        )
