"""Routing by user inside a session, in memory: the decision comes before any backend, a
lookup in flight holds pipelined commands, a timeout answers 421, a second USER stays on
its backend."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred

from ftpsproxy.control.user_lookup import UserLookup
from ftpsproxy.control.user_routing import UserRouting
from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.pool.rewrite import parse_rewrite
from ftpsproxy.pool.usermap import MapEntry, UserMap
from tests.test_session import Harness


class SilentAgent:
    """An ``IAgent`` whose requests are never answered; remembers the URLs asked."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, body: Any = None
    ) -> Deferred[Any]:
        self.asked.append(uri)
        return Deferred()


def with_map(harness: Harness, **entries: MapEntry) -> None:
    usermap = SimpleNamespace(current=UserMap(entries))
    events = UserRoutingEvents(harness.metrics)
    harness.context.user_routing = UserRouting(
        lambda: harness.context.config,
        events,
        user_map=usermap,  # type: ignore[arg-type]
    )


def with_lookup(harness: Harness, agent: SilentAgent) -> None:
    events = UserRoutingEvents(harness.metrics)
    config = lambda: harness.context.config  # noqa: E731
    lookup = UserLookup(
        harness.reactor,
        "http://lookup.test/{user}",
        config,
        lambda: ["default"],
        events,
        agent,  # type: ignore[arg-type]
    )
    harness.context.user_routing = UserRouting(config, events, lookup=lookup)


def test_an_unmapped_user_gets_530_and_may_try_another_name() -> None:
    harness = Harness()
    with_map(harness, bob=MapEntry("bob", ("default",), parse_rewrite("robert")))
    harness.replies()
    harness.send(b"USER mallory\r\n")
    assert harness.replies() == b""  # a failed login: answered late
    harness.reactor.advance(1.0)
    assert harness.replies() == b"530 Login incorrect.\r\n"
    assert harness.backend.pending == []
    harness.send(b"USER bob\r\n")
    harness.control, harness.backend_transport = harness.backend.accept()
    assert harness.sent_to_backend() == b"USER robert\r\n"


def test_a_second_user_goes_to_the_backend_only_if_its_route_allows_it() -> None:
    harness = Harness()
    with_map(
        harness,
        demo=MapEntry("demo", ("default",)),
        ally=MapEntry("ally", ("default",), parse_rewrite("{local}-x")),
        eve=MapEntry("eve", ("elsewhere",)),
    )
    harness.replies()
    harness.send(b"USER demo\r\n")
    harness.control, harness.backend_transport = harness.backend.accept()
    assert harness.sent_to_backend() == b"USER demo\r\n"
    harness.backend_says(b"331 Password required\r\n")
    harness.send(b"USER eve\r\n")
    harness.reactor.advance(1.0)
    assert harness.replies() == b"331 Password required\r\n530 Login incorrect.\r\n"
    assert harness.sent_to_backend() == b""
    harness.send(b"USER ally\r\n")
    assert harness.sent_to_backend() == b"USER ally-x\r\n"


def test_commands_wait_for_the_lookup_and_a_timeout_answers_421() -> None:
    harness = Harness(user_lookup_timeout=2.0)
    agent = SilentAgent()
    with_lookup(harness, agent)
    harness.replies()
    harness.send(b"USER al ice@acme\r\nPASS secret\r\nNOOP\r\n")
    assert agent.asked == [b"http://lookup.test/al%20ice%40acme"]
    assert harness.replies() == b""  # PASS and NOOP wait behind USER
    harness.reactor.advance(1.9)
    assert harness.replies() == b""
    harness.reactor.advance(0.2)
    assert harness.replies() == (
        b"421 Service not available: cannot find your server now; try again later.\r\n"
    )
    assert harness.backend.pending == []
    samples = harness.metrics.user_lookup_errors.labels(reason="timeout")._value.get()
    assert samples == 1


def test_logins_of_one_user_wait_for_the_question_already_out_and_share_its_failure() -> None:
    harness = Harness(user_lookup_timeout=2.0)
    agent = SilentAgent()
    lookup = UserLookup(
        harness.reactor,
        "http://lookup.test/{user}",
        lambda: harness.context.config,
        lambda: ["default"],
        UserRoutingEvents(harness.metrics),
        agent,  # type: ignore[arg-type]
    )
    asking = [lookup.find("bob"), lookup.find("bob"), lookup.find("carol"), lookup.find("bob")]
    assert agent.asked == [b"http://lookup.test/bob", b"http://lookup.test/carol"]
    reasons: list[str] = []
    for deferred in asking:
        deferred.addErrback(lambda failure: reasons.append(failure.value.reason))
    harness.reactor.advance(2.1)
    assert reasons == ["timeout"] * 4
    lookup.find("bob")  # a failure is neither kept nor still out: the next login asks
    assert agent.asked[2:] == [b"http://lookup.test/bob"]
    cache = harness.metrics.user_lookup_cache
    counts = {r: cache.labels(result=r)._value.get() for r in ("hit", "miss", "joined")}
    assert counts == {"hit": 0, "miss": 3, "joined": 2}
