"""Failed-login accounting per client address (sans-IO: the test passes the time)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpsproxy.loginguard import LoginGuard


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
