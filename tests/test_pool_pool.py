"""The pool: candidate lists without unusable backends, session leases, failover order, reloads."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpsproxy.pool import AdminState, CheckResult, HealthState, Lease, Policy, Pool, Source
from ftpsproxy.settings.errors import ConfigError
from tests.support.pools import backend, backends

DOWN = CheckResult.failed("connection refused")
UP = CheckResult.passed()


def _names(
    pool: Pool, *, user: str = "", client: str = "", among: list[str] | None = None
) -> list[str]:
    return [b.name for b in pool.candidates(user=user, client=client, among=among)]


def test_round_robin_candidates_list_every_usable_backend_first_choice_first() -> None:
    pool = Pool(backends("a", "b", "c"))
    assert _names(pool) == ["a", "b", "c"]
    assert _names(pool) == ["b", "c", "a"]


def test_down_draining_and_full_backends_are_skipped() -> None:
    pool = Pool(
        [backend("down"), backend("draining", state=AdminState.DRAIN), backend("full", cap=1)],
        Policy.PRIORITY,
    )
    pool.report("down", DOWN)
    assert pool.acquire("full") is not None
    assert pool.candidates() == []
    assert pool.acquire("down") is None
    assert pool.acquire("draining") is None
    assert pool.acquire("full") is None


def test_unknown_backends_are_tried_before_the_first_probe() -> None:
    pool = Pool(backends("a"))
    assert pool.health("a") is HealthState.UNKNOWN
    assert _names(pool) == ["a"]


def test_priority_prefers_the_first_configured_backend_while_it_is_up() -> None:
    pool = Pool(backends("active", "standby"), Policy.PRIORITY)
    assert _names(pool) == ["active", "standby"]
    pool.report("active", DOWN)
    assert _names(pool) == ["standby"]
    pool.report("active", UP)
    pool.report("active", UP)
    assert _names(pool) == ["active", "standby"]


def test_user_hash_fails_over_to_the_users_next_choice_and_comes_home_after_rise() -> None:
    pool = Pool(backends("a", "b", "c", "d"), Policy.USER_HASH)
    ranking = _names(pool, user="alice")
    assert _names(pool, user="alice") == ranking  # stable
    home, second = ranking[0], ranking[1]
    for _ in range(3):
        pool.report(home, CheckResult.failed("greeting timeout", Source.SESSION))
    assert _names(pool, user="alice") == ranking[1:]
    assert _names(pool, user="alice")[0] == second
    pool.report(home, UP)
    assert _names(pool, user="alice")[0] == second  # one good probe is not enough (rise 2)
    pool.report(home, UP)
    assert _names(pool, user="alice") == ranking


def test_source_hash_routes_by_client_address() -> None:
    pool = Pool(backends("a", "b", "c"), Policy.SOURCE_HASH)
    first = _names(pool, user="alice", client="192.0.2.7")
    assert _names(pool, user="bob", client="::ffff:192.0.2.7") == first
    others = {_names(pool, client=f"192.0.2.{n}")[0] for n in range(50)}
    assert others == {"a", "b", "c"}


def test_least_sessions_follows_acquired_sessions() -> None:
    pool = Pool(backends("a", "b"), Policy.LEAST_SESSIONS)
    first = pool.acquire(_names(pool)[0])
    assert first is not None
    assert _names(pool)[0] != first.backend
    pool.release(first)
    assert pool.sessions(first.backend) == 0


def test_among_restricts_the_choice_to_a_user_maps_list() -> None:
    pool = Pool(backends("a", "b", "c"))
    assert {_names(pool, among=["b", "c"])[0] for _ in range(4)} == {"b", "c"}
    assert _names(pool, among=["nope"]) == []


def test_release_is_idempotent_per_lease() -> None:
    pool = Pool([backend("a", cap=2)])
    one, two = pool.acquire("a"), pool.acquire("a")
    assert one is not None and two is not None and one != two
    assert pool.acquire("a") is None
    assert pool.release(one)
    assert not pool.release(one)
    assert not pool.release(Lease("a", 999))
    assert pool.sessions("a") == 1
    assert pool.acquire("a") is not None


def test_a_reload_keeps_health_sessions_and_leases_by_name() -> None:
    pool = Pool(backends("a", "b"))
    lease = pool.acquire("a")
    assert lease is not None
    pool.report("b", DOWN)
    pool.update([backend("a", state=AdminState.DRAIN), backend("b"), backend("c")])
    assert pool.sessions("a") == 1  # draining: its sessions go on
    assert pool.health("b") is HealthState.DOWN
    assert pool.health("c") is HealthState.UNKNOWN
    assert _names(pool) == ["c"]
    pool.update(backends("b", "c"))
    assert pool.report("a", DOWN) is None  # a late probe of a removed backend
    assert pool.release(lease)
    assert pool.sessions("a") == 0


# -- properties over random sequences of pool operations ------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.sampled_from(["u1", "u2", "u3"])),
        st.tuples(st.just("acquire"), st.integers(0, 3)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("report"), st.integers(0, 3), st.booleans(), st.sampled_from(Source)),
        st.tuples(st.just("drain"), st.integers(0, 3), st.sampled_from(AdminState)),
    ),
    max_size=80,
)


def test_a_new_policy_applies_to_the_next_session_and_keeps_health_and_leases() -> None:
    pool = Pool(backends("a", "b", "c"))
    held = pool.acquire("a")
    pool.report("b", DOWN)
    assert _names(pool) == ["a", "c"]
    pool.set_policy(Policy.LEAST_SESSIONS)
    assert pool.policy is Policy.LEAST_SESSIONS
    assert _names(pool)[0] == "c"  # a holds a session; b is still down
    pool.set_policy(Policy.PRIORITY)
    assert _names(pool) == ["a", "c"]
    assert held is not None and pool.release(held) and pool.sessions("a") == 0


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(Policy),
    st.lists(st.tuples(st.integers(1, 4), st.none() | st.integers(1, 3)), min_size=1, max_size=4),
    operations,
)
def test_candidates_are_always_usable_and_caps_are_never_exceeded(
    policy: Policy, shapes: list[tuple[int, int | None]], steps: list[tuple[object, ...]]
) -> None:
    configured = [backend(f"b{n}", weight, cap) for n, (weight, cap) in enumerate(shapes)]
    pool = Pool(configured, policy)
    leases: list[Lease] = []  # every lease taken, released or not
    live: set[Lease] = set()  # the model: leases not yet released
    for step in steps:
        match step:
            case ("pick", str(user)):
                candidates = pool.candidates(user=user, client="198.51.100.1")
                for chosen in candidates:
                    assert pool.health(chosen.name) is not HealthState.DOWN
                    assert chosen.state is AdminState.ACTIVE
                    assert (
                        chosen.max_sessions is None
                        or pool.sessions(chosen.name) < chosen.max_sessions
                    )
                usable = [b.name for b in pool.backends if pool.usable(b.name)]
                assert sorted(b.name for b in candidates) == sorted(usable)
                if policy is Policy.LEAST_SESSIONS and candidates:
                    loads = [pool.sessions(b.name) / b.weight for b in candidates]
                    assert loads[0] == min(loads)
                lease = next(filter(None, map(pool.acquire, [b.name for b in candidates])), None)
                if lease is not None:
                    leases.append(lease)
                    live.add(lease)
            case ("acquire", int(index)):  # whatever its state: refused unless usable
                name = configured[index % len(configured)].name
                allowed = pool.usable(name)
                lease = pool.acquire(name)
                assert (lease is not None) == allowed
                if lease is not None:
                    leases.append(lease)
                    live.add(lease)
            case ("release", int(index)) if leases:
                lease = leases[index % len(leases)]  # sometimes a second time
                assert pool.release(lease) == (lease in live)
                live.discard(lease)
            case ("report", int(index), bool(ok), Source() as source):
                name = configured[index % len(configured)].name
                pool.report(name, CheckResult(ok, "" if ok else "refused", source))
            case ("drain", int(index), AdminState() as state):
                changed = configured[index % len(configured)]
                configured = [replace(b, state=state) if b is changed else b for b in configured]
                pool.update(configured)
        for b in configured:
            assert b.max_sessions is None or pool.sessions(b.name) <= b.max_sessions
            assert pool.sessions(b.name) == sum(1 for lease in live if lease.backend == b.name)


def test_a_refused_reload_leaves_the_pool_as_it_was() -> None:
    pool = Pool(backends("a", "b"))
    with pytest.raises(ConfigError, match="unique"):
        pool.update(backends("c", "c"))
    assert [b.name for b in pool.backends] == ["a", "b"]


def test_the_pool_imports_no_reactor_and_no_upper_layer() -> None:
    code = (
        "import sys, ftpsproxy.pool; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted' "
        "or m.startswith(('ftpsproxy.control', 'ftpsproxy.data', 'ftpsproxy.tls', "
        "'ftpsproxy.ops', 'ftpsproxy.observe', 'ftpsproxy.net'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
