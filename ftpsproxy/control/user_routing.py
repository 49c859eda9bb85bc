"""Which backends a user may go to, decided at ``USER`` before any backend is contacted.

In this order: the client's own ``user@backend`` choice (``--user-selects-backend``,
only for the backends listed), the user map (exact names, then patterns), the HTTP
lookup, then ``--user-map-default``.  With a map or a lookup configured, a user none
of them maps gets ``530`` and no backend hears of it; with neither, every user goes
to the pool's policy over all backends, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ftpsproxy.control.user_lookup import LookupFailed, UserLookup
from ftpsproxy.control.usermap_file import UserMapFile
from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.pool.lookup_reply import Answer, Found
from ftpsproxy.pool.user_route import UserRoute, selected_by_user
from ftpsproxy.settings.options import Config
from ftpsproxy.settings.values import LookupFailure

UNMAPPED_TEXT = "Login incorrect."
LOOKUP_DOWN_TEXT = "Service not available: cannot find your server now; try again later."


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No backend for this user: the reply (``530`` or ``421``) and why, for the log."""

    code: int
    text: str
    why: str


Decision = UserRoute | NoRoute


class UserRouting:
    def __init__(
        self,
        config: Callable[[], Config],
        events: UserRoutingEvents,
        user_map: UserMapFile | None = None,
        lookup: UserLookup | None = None,
    ) -> None:
        self._config = config
        self._events = events
        self.user_map = user_map
        self.lookup = lookup

    def decide(self, session: int, user: str) -> Deferred[Decision]:
        """Never fails: every outcome is a :data:`Decision` (logged here)."""
        chosen = selected_by_user(user, self._config().user_selects_backend)
        if chosen is None and self.user_map is not None:
            chosen = self.user_map.current.route(user)
        if chosen is not None:
            return defer.succeed(self._routed(session, user, chosen))
        if self.lookup is None:
            return defer.succeed(self._unmapped(session, user, "not in the user map"))
        asking = self.lookup.find(user)
        return asking.addCallbacks(
            lambda answer: self._answered(session, user, answer),
            lambda failure: self._lookup_failed(session, user, failure),
        )

    def _answered(self, session: int, user: str, answer: Answer) -> Decision:
        if isinstance(answer, Found):
            return self._routed(session, user, answer.route(user))
        return self._unmapped(session, user, "the user lookup has none (404)")

    def _lookup_failed(self, session: int, user: str, failure: Failure) -> Decision:
        error = failure.value
        reason, why = (
            (error.reason, str(error))
            if isinstance(error, LookupFailed)
            else ("unreachable", failure.getErrorMessage())
        )
        if self._config().user_lookup_failure is LookupFailure.POLICY:
            self._events.lookup_failed(session, user, reason, why, "the policy over all backends")
            route = UserRoute(None, user, f"user lookup failed ({reason}): any backend")
            return self._routed(session, user, route)
        self._events.lookup_failed(session, user, reason, why, "421 (user-lookup-failure closed)")
        return NoRoute(421, LOOKUP_DOWN_TEXT, f"user lookup failed: {why}")

    def _unmapped(self, session: int, user: str, why: str) -> Decision:
        configured = self.user_map is not None or self.lookup is not None
        default = self._config().user_map_default
        if not configured:
            return UserRoute(None, user, "")  # no routing by user: the policy, as ever
        if default is not None:
            return self._routed(session, user, UserRoute((default,), user, "user-map-default"))
        self._events.unrouted(session, user, why)
        return NoRoute(530, UNMAPPED_TEXT, why)

    def _routed(self, session: int, user: str, route: UserRoute) -> Decision:
        if not route.user:
            why = f"{route.why} gives an empty user name"
            self._events.unrouted(session, user, why)
            return NoRoute(530, UNMAPPED_TEXT, why)
        self._events.routed(session, user, route.among, route.user, route.why)
        return route
