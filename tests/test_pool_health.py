"""Backend health: rise/fall thresholds over probe and session results, one event per change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpsproxy.pool import CheckResult, HealthEvent, HealthState, Source, Thresholds
from ftpsproxy.pool.health import Health
from ftpsproxy.settings.errors import ConfigError

OK = CheckResult.passed()
REFUSED = CheckResult.failed("connection refused")


def _health(state: HealthState, rise: int = 2, fall: int = 3) -> Health:
    """A backend in *state*, reached through the first result."""
    health = Health("east", Thresholds(rise, fall))
    health.record(OK if state is HealthState.UP else REFUSED)
    assert health.state is state
    return health


def test_a_new_backend_is_unknown_and_usable() -> None:
    health = Health("east", Thresholds())
    assert health.state is HealthState.UNKNOWN
    assert health.usable


def test_the_first_result_decides_at_once() -> None:
    event = Health("east", Thresholds(rise=5, fall=5)).record(
        CheckResult.failed("certificate has expired")
    )
    assert event == HealthEvent(
        "east",
        HealthState.UNKNOWN,
        HealthState.DOWN,
        "first result: certificate has expired",
        Source.PROBE,
    )
    event = Health("east", Thresholds(rise=5, fall=5)).record(OK)
    assert event is not None
    assert (event.old, event.new) == (HealthState.UNKNOWN, HealthState.UP)


def test_fall_failures_in_a_row_take_it_down_with_the_last_reason() -> None:
    health = _health(HealthState.UP, fall=3)
    assert health.record(REFUSED) is None
    assert health.record(CheckResult.failed("greeting timeout")) is None
    event = health.record(CheckResult.failed("TLS handshake failed"))
    assert event == HealthEvent(
        "east",
        HealthState.UP,
        HealthState.DOWN,
        "3 failures in a row: TLS handshake failed",
        Source.PROBE,
    )
    assert not health.usable


def test_a_success_between_failures_starts_the_count_again() -> None:
    health = _health(HealthState.UP, fall=2)
    assert health.record(REFUSED) is None
    assert health.record(OK) is None
    assert health.record(REFUSED) is None
    assert health.state is HealthState.UP
    assert health.record(REFUSED) is not None


def test_session_failures_count_like_probe_failures() -> None:
    health = _health(HealthState.UP, fall=3)
    failed_session = CheckResult.failed("connect timeout", Source.SESSION)
    health.record(REFUSED)
    health.record(failed_session)
    event = health.record(failed_session)
    assert event is not None
    assert (event.new, event.source) == (HealthState.DOWN, Source.SESSION)


def test_a_successful_session_clears_the_failure_streak_of_an_up_backend() -> None:
    health = _health(HealthState.UP, fall=2)
    health.record(REFUSED)
    health.record(CheckResult.passed(Source.SESSION))
    assert health.record(REFUSED) is None


def test_only_good_probes_bring_a_backend_back() -> None:
    health = _health(HealthState.DOWN, rise=2)
    for _ in range(5):
        assert health.record(CheckResult.passed(Source.SESSION)) is None
    assert health.state is HealthState.DOWN
    assert health.record(OK) is None
    event = health.record(OK)
    assert event == HealthEvent(
        "east", HealthState.DOWN, HealthState.UP, "2 good probes in a row", Source.PROBE
    )


def test_a_failure_while_down_restarts_the_rise_count() -> None:
    health = _health(HealthState.DOWN, rise=2)
    health.record(OK)
    health.record(CheckResult.failed("refused", Source.SESSION))
    assert health.record(OK) is None
    assert health.record(OK) is not None


@pytest.mark.parametrize(("rise", "fall"), [(0, 3), (2, 0), (True, 3), (2, 1.5)])
def test_thresholds_must_be_positive_integers(rise: int, fall: int) -> None:
    with pytest.raises(ConfigError, match=r"health (rise|fall)"):
        Thresholds(rise, fall)


results = st.builds(
    CheckResult,
    st.booleans(),
    st.sampled_from(["", "refused"]),
    st.sampled_from(list(Source)),
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.lists(results, max_size=40), st.data())
def test_exactly_k_consecutive_results_flip_the_state(
    rise: int, fall: int, history: list[CheckResult], data: st.DataObject
) -> None:
    """From any reachable state: k-1 results pointing away change nothing, the k-th flips."""
    health = Health("east", Thresholds(rise, fall))
    for result in [OK, *history]:
        health.record(result)
    state = health.state
    # Start the count afresh: one result that confirms the current state resets the streak.
    health.record(OK if state is HealthState.UP else REFUSED)
    assert health.state is state
    if state is HealthState.UP:
        away, needed = [REFUSED, CheckResult.failed("timeout", Source.SESSION)], fall
    else:
        away, needed = [OK], rise
    for _ in range(needed - 1):
        assert health.record(data.draw(st.sampled_from(away))) is None
        assert health.state is state
    event = health.record(data.draw(st.sampled_from(away)))
    assert event is not None
    assert event.old is state
    assert health.state is event.new is not state


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.lists(results, max_size=40))
def test_events_report_every_change_and_only_changes(
    rise: int, fall: int, history: list[CheckResult]
) -> None:
    health = Health("east", Thresholds(rise, fall))
    for result in history:
        before = health.state
        event = health.record(result)
        if event is None:
            assert health.state is before
        else:
            assert (event.old, event.new, event.source) == (before, health.state, result.source)
            assert event.old is not event.new
        assert health.state is not HealthState.UNKNOWN
