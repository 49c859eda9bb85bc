"""Asking an HTTP service which backends a user goes to, with a cache and a time limit.

Twisted's own HTTP client (``Agent``): no new dependency for one ``GET``.  What the
URL and the answer mean is ``ftpsproxy.pool.lookup_reply``; answers (and ``404``)
are kept in a bounded cache, failures never, so a service that comes back is asked
again at once.  Logins of one user while its question is out wait for that answer
instead of asking again: a burst of one user's sessions (a client opening several at
once, a script in a loop) asks the service once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from ftpsproxy.net.twisted_internals import quiet_http_pool
from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.pool.lookup_cache import LookupCache
from ftpsproxy.pool.lookup_reply import Answer, LookupReplyError, lookup_url, parse_answer
from ftpsproxy.settings.options import Config

_HEADERS = Headers({b"Accept": [b"application/json"], b"User-Agent": [b"ftpsproxy"]})


class LookupFailed(Exception):
    """The service gave no answer; ``reason`` is the metric's label."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class UserLookup:
    def __init__(
        self,
        reactor: Any,
        url: str,
        config: Callable[[], Config],
        backend_names: Callable[[], Collection[str]],
        events: UserRoutingEvents,
        agent: IAgent | None = None,
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._config = config
        self._backend_names = backend_names
        self._events = events
        self._agent = agent or Agent(reactor, pool=quiet_http_pool(reactor))
        self.cache = LookupCache()
        # The users whose question is out, each with the logins waiting for its answer.
        self._waiting: dict[str, list[Deferred[Answer]]] = {}

    def find(self, user: str) -> Deferred[Answer]:
        """The answer for *user*, from the cache or the service; fails with LookupFailed."""
        now = self._reactor.seconds()
        kept = self.cache.get(user, now)
        if kept is not None:
            self._events.lookup_cached("hit")
            return defer.succeed(kept)
        waiting = self._waiting.get(user)
        if waiting is not None:
            self._events.lookup_cached("joined")
            joined: Deferred[Answer] = Deferred()
            waiting.append(joined)
            return joined
        self._events.lookup_cached("miss")
        self._waiting[user] = []
        return self._ask(user).addBoth(self._tell_waiting, user)

    def _tell_waiting(self, result: Answer | Failure, user: str) -> Answer | Failure:
        """Give *result* to the logins that joined *user*'s question, then to the first."""
        for joined in self._waiting.pop(user):
            if isinstance(result, Failure):
                joined.errback(result)
            else:
                joined.callback(result)
        return result

    def _ask(self, user: str) -> Deferred[Answer]:
        config = self._config()
        asking = self._agent.request(b"GET", lookup_url(self.url, user).encode(), _HEADERS)
        asking.addCallback(self._read)
        asking.addTimeout(config.user_lookup_timeout, self._reactor, _timed_out)

        def answered(reply: tuple[int, bytes]) -> Answer:
            try:
                answer = parse_answer(*reply, self._backend_names())
            except LookupReplyError as failure:
                kind = "status" if str(failure).startswith("HTTP status") else "invalid"
                raise LookupFailed(kind, str(failure)) from None
            config = self._config()
            self.cache.put(
                user,
                answer,
                self._reactor.seconds(),
                ttl=config.user_lookup_ttl,
                negative_ttl=config.user_lookup_negative_ttl,
            )
            return answer

        return asking.addCallbacks(answered, self._failed)

    @staticmethod
    def _read(response: IResponse) -> Deferred[tuple[int, bytes]]:
        code = response.code
        return readBody(response).addCallback(lambda body: (code, body))

    def _failed(self, reason: Failure) -> Failure:
        if reason.check(LookupFailed):
            return reason
        if reason.check(error.TimeoutError):  # the connect's own timeout
            raise LookupFailed("timeout", reason.getErrorMessage())
        if reason.check(ResponseFailed):
            raise LookupFailed("unreachable", "the connection failed mid-response")
        raise LookupFailed("unreachable", reason.getErrorMessage())


def _timed_out(result: object, timeout: float) -> Failure:
    """``addTimeout`` cancelled the request: whatever the Agent made of that, a timeout."""
    return Failure(LookupFailed("timeout", f"no answer within {timeout:g}s"))
