"""Balancing policies: smooth weighted round robin, least sessions, rendezvous hashing."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ftpsproxy.pool import Backend
from ftpsproxy.pool.policies import LeastSessions, Request, canonical_address
from ftpsproxy.pool.rendezvous import ranking, unit_hash
from ftpsproxy.pool.roundrobin import SmoothWeightedRoundRobin
from tests.support.pools import backend, backends, names

USERS = [f"user{n}" for n in range(1000)]


def _firsts(rotation: SmoothWeightedRoundRobin, pool: list[Backend], picks: int) -> str:
    return "".join(rotation.order(pool)[0].name for _ in range(picks))


# -- smooth weighted round robin ------------------------------------------------------


def test_weights_interleave_as_in_nginx() -> None:
    pool = [backend("a", 5), backend("b", 1), backend("c", 1)]
    assert _firsts(SmoothWeightedRoundRobin(), pool, 14) == "aabacaa" * 2


def test_the_failover_order_is_whose_turn_comes_next() -> None:
    rotation = SmoothWeightedRoundRobin()
    pool = backends("a", "b", "c")
    assert [b.name for b in rotation.order(pool)] == ["a", "b", "c"]
    assert [b.name for b in rotation.order(pool)] == ["b", "c", "a"]


def test_a_backend_left_out_keeps_its_place_in_the_rotation() -> None:
    rotation = SmoothWeightedRoundRobin()
    a, b, c = backends("a", "b", "c")
    assert _firsts(rotation, [a, b, c], 1) == "a"
    assert _firsts(rotation, [a, c], 2) == "cc"  # b is out (down, draining or full)
    assert _firsts(rotation, [a, b, c], 1) == "b"  # back, and still next in line


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 30))
def test_equal_weights_stay_within_one_pick_of_each_other_at_every_step(
    count: int, rounds: int
) -> None:
    pool = [backend(f"b{n}") for n in range(count)]
    rotation = SmoothWeightedRoundRobin()
    tally: Counter[str] = Counter()
    for _ in range(count * rounds):
        tally[rotation.order(pool)[0].name] += 1
        spread = [tally[b.name] for b in pool]
        assert max(spread) - min(spread) <= 1
    assert set(tally.values()) == {rounds}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10), min_size=1, max_size=6), st.integers(1, 4))
def test_weighted_picks_are_exactly_proportional_over_whole_cycles(
    weights: list[int], cycles: int
) -> None:
    pool = [backend(f"b{n}", weight) for n, weight in enumerate(weights)]
    rotation = SmoothWeightedRoundRobin()
    tally = Counter(rotation.order(pool)[0].name for _ in range(sum(weights) * cycles))
    assert all(tally[b.name] == b.weight * cycles for b in pool)


# -- least sessions -------------------------------------------------------------------


def test_least_sessions_counts_sessions_per_unit_of_weight() -> None:
    pool = [backend("small"), backend("big", 4)]
    order = LeastSessions().order(pool, Request(), {"small": 1, "big": 3})
    assert [b.name for b in order] == ["big", "small"]  # 3/4 < 1/1
    order = LeastSessions().order(pool, Request(), {"small": 1, "big": 5})
    assert [b.name for b in order] == ["small", "big"]


def test_least_sessions_rotates_among_equally_loaded_backends() -> None:
    pool = backends("a", "b", "c")
    policy = LeastSessions()
    picks = [policy.order(pool, Request(), {})[0].name for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 20)), min_size=1, max_size=6))
def test_least_sessions_never_prefers_a_fuller_backend(loads: list[tuple[int, int]]) -> None:
    pool = [backend(f"b{n}", weight) for n, (weight, _) in enumerate(loads)]
    sessions = {f"b{n}": count for n, (_, count) in enumerate(loads)}
    order = LeastSessions().order(pool, Request(), sessions)
    assert sorted(b.name for b in order) == sorted(b.name for b in pool)
    ratios = [sessions[b.name] / b.weight for b in order]
    assert ratios[0] == min(ratios)
    assert ratios[1:] == sorted(ratios[1:])


# -- rendezvous hashing ---------------------------------------------------------------


def test_the_hash_is_pinned_so_workers_and_restarts_agree() -> None:
    """A change here would move users to other backends at the next upgrade."""
    assert unit_hash("alice", "east") == 0.019389454343028467
    pool = backends("east", "west", "north")
    rankings = {user: [b.name for b in ranking(user, pool)] for user in ("alice", "bob")}
    assert rankings == {"alice": ["west", "north", "east"], "bob": ["west", "east", "north"]}


def _homes(pool: list[Backend]) -> dict[str, str]:
    return {user: ranking(user, pool)[0].name for user in USERS}


def test_a_fourth_backend_takes_a_quarter_of_the_users_from_the_other_three() -> None:
    before = _homes(backends("vsftpd", "proftpd", "pyftpdlib"))
    after = _homes(backends("vsftpd", "proftpd", "pyftpdlib", "pure-ftpd"))
    moved = [user for user in USERS if before[user] != after[user]]
    assert 150 <= len(moved) <= 350
    assert {after[user] for user in moved} == {"pure-ftpd"}
    assert {before[user] for user in moved} == {"vsftpd", "proftpd", "pyftpdlib"}


@settings(max_examples=25, deadline=None)
@given(names.filter(lambda n: 2 <= len(n) <= 6), st.data())
def test_adding_a_backend_moves_users_only_to_it_and_about_one_in_n(
    pool_names: list[str], data: st.DataObject
) -> None:
    *kept, added = pool_names
    before = _homes(backends(*kept))
    after = _homes(backends(*data.draw(st.permutations(pool_names))))
    moved = [user for user in USERS if before[user] != after[user]]
    assert all(after[user] == added for user in moved)
    share = len(moved) / len(USERS)
    expected = 1 / len(pool_names)
    assert expected - 0.1 <= share <= expected + 0.1


@settings(max_examples=25, deadline=None)
@given(names.filter(lambda n: 2 <= len(n) <= 6), st.data())
def test_removing_a_backend_moves_only_its_users_to_their_next_choice(
    pool_names: list[str], data: st.DataObject
) -> None:
    removed = data.draw(st.sampled_from(pool_names))
    full = backends(*pool_names)
    rest = [b for b in full if b.name != removed]
    for user in USERS[:300]:
        full_ranking = [b.name for b in ranking(user, full)]
        assert [b.name for b in ranking(user, rest)] == [n for n in full_ranking if n != removed]


def test_weights_shift_users_in_proportion() -> None:
    pool = [backend("small"), backend("big", 3)]
    homes = Counter(ranking(f"u{n}", pool)[0].name for n in range(4000))
    assert 2800 <= homes["big"] <= 3200  # 3/4 of 4000, ±10 standard deviations


def test_source_hash_spells_each_address_one_way() -> None:
    assert canonical_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert canonical_address("2001:DB8:0::1") == "2001:db8::1"
    assert canonical_address("192.0.2.7") == "192.0.2.7"
    assert canonical_address("not-an-address") == "not-an-address"
