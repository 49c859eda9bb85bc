"""Failed-login accounting per client address (sans-IO: the test passes the time)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpsproxy.control.loginguard import LoginGuard


def test_locks_out_at_the_limit_and_for_the_lockout_period() -> None:
    guard = LoginGuard(max_failures=3, lockout=60)
    assert not guard.failed("192.0.2.1", 0)
    assert not guard.failed("192.0.2.1", 1)
    assert not guard.locked("192.0.2.1", 2)
    assert guard.failed("192.0.2.1", 2)
    assert guard.locked("192.0.2.1", 61.9)
    assert guard.locked_count(30) == 1
    assert not guard.locked("192.0.2.1", 62)
    assert guard.locked_count(62) == 0


def test_failures_older_than_the_window_do_not_count() -> None:
    guard = LoginGuard(max_failures=2, lockout=10)
    assert not guard.failed("192.0.2.1", 0)
    assert not guard.failed("192.0.2.1", 10.5)  # the first one has left the window
    assert guard.failed("192.0.2.1", 11)


def test_addresses_are_counted_apart() -> None:
    guard = LoginGuard(max_failures=2, lockout=10)
    assert not guard.failed("192.0.2.1", 0)
    assert not guard.failed("192.0.2.2", 0)
    assert not guard.locked("192.0.2.2", 1)
    assert guard.failed("192.0.2.1", 1)
    assert not guard.locked("192.0.2.2", 1)


def test_memory_is_bounded_by_max_tracked() -> None:
    guard = LoginGuard(max_failures=5, lockout=10, max_tracked=100)
    for n in range(1000):
        guard.failed(f"10.0.{n // 256}.{n % 256}", 0)
    assert len(guard._failures) == 100
    assert "10.0.3.231" in guard._failures  # the newest are kept


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 5)), min_size=1, max_size=60),
    st.integers(1, 6),
)
def test_locked_exactly_when_the_limit_is_reached_within_the_window(
    events: list[tuple[str, float]], limit: int
) -> None:
    """A model check: a lockout happens when `limit` failures fit in one window."""
    guard = LoginGuard(max_failures=limit, lockout=3)
    now = 0.0
    history: dict[str, list[float]] = {}
    locked_until: dict[str, float] = {}
    for host, step in events:
        now += step
        if locked_until.get(host, -1) > now:
            assert guard.locked(host, now)
            continue
        assert not guard.locked(host, now)
        recent = [t for t in history.get(host, []) if t > now - 3] + [now]
        expect_lock = len(recent) >= limit
        assert guard.failed(host, now) is expect_lock
        if expect_lock:
            locked_until[host] = now + 3
            history[host] = []
        else:
            history[host] = recent


def test_guesses_under_way_count_against_the_address() -> None:
    """Parallel sessions: at most max_failures passwords out at once from one address."""
    guard = LoginGuard(max_failures=3, lockout=60)
    assert [guard.try_begin("192.0.2.1", 0) for _ in range(5)] == [True, True, True, False, False]
    assert guard.try_begin("192.0.2.2", 0)  # another address has its own places
    woken: list[int] = []
    for index in range(2):
        guard.wait("192.0.2.1", lambda index=index: woken.append(index))  # type: ignore[misc]
    locked, wake = guard.finish("192.0.2.1", 1, failed=False)  # a success frees its place
    assert not locked and len(wake) == 1
    wake[0]()
    assert woken == [0]
    assert guard.try_begin("192.0.2.1", 1)
    locked, wake = guard.finish("192.0.2.1", 2, failed=True)  # a failure keeps it
    assert not locked and wake == []
    assert not guard.try_begin("192.0.2.1", 2)


def test_a_lockout_wakes_every_waiter_to_be_refused() -> None:
    guard = LoginGuard(max_failures=2, lockout=60)
    assert guard.try_begin("192.0.2.1", 0) and guard.try_begin("192.0.2.1", 0)
    waiters = [lambda: None for _ in range(4)]
    for waiter in waiters:
        guard.wait("192.0.2.1", waiter)
    guard.cancel("192.0.2.1", waiters[3])  # its session ended first
    assert guard.finish("192.0.2.1", 1, failed=True) == (False, [])
    locked, wake = guard.finish("192.0.2.1", 1, failed=True)
    assert locked and wake == waiters[:3]
    assert not guard.try_begin("192.0.2.1", 2)
    assert guard.in_flight("192.0.2.1") == 0 and not guard._waiters


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["begin", "ok", "fail"]), st.floats(0, 2)), max_size=80))
def test_never_more_than_the_limit_failed_or_under_way(events: list[tuple[str, float]]) -> None:
    """A model check: failures in the window plus guesses under way never exceed the limit,
    and nothing is left tracked once every guess is answered and the window has passed."""
    guard = LoginGuard(max_failures=3, lockout=5)
    now, under_way, failures = 0.0, 0, []
    for event, step in events:
        now += step
        if event == "begin":
            if guard.try_begin("h", now):
                under_way += 1
        elif under_way:
            under_way -= 1
            if guard.finish("h", now, failed=event == "fail")[0]:
                failures = []
            elif event == "fail":
                failures.append(now)
        recent = [when for when in failures if when > now - 5]
        assert guard.locked("h", now) or len(recent) + under_way <= 3
        assert guard.in_flight("h") == under_way
    for _ in range(under_way):
        guard.finish("h", now, failed=False)
    assert guard.in_flight("h") == 0 and "h" not in guard._in_flight
