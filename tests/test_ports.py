"""The passive port allocator: free ports, round robin, and each owner's share."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ftpsproxy.data.ports import PortAllocator, Refusal
from ftpsproxy.settings.config import default_share

A, B = "192.0.2.1", "198.51.100.7"


def test_exhaustion_and_release() -> None:
    allocator = PortAllocator(41000, 41001)
    assert {allocator.acquire(A), allocator.acquire(B)} == {41000, 41001}
    assert allocator.acquire("203.0.113.9") is Refusal.EXHAUSTED
    allocator.release(41000)
    assert allocator.acquire("203.0.113.9") == 41000


def test_round_robin_reuses_a_released_port_last() -> None:
    allocator = PortAllocator(41000, 41002, share=3)
    first = allocator.acquire(A)
    assert first == 41000
    allocator.release(first)
    assert [allocator.acquire(A), allocator.acquire(A), allocator.acquire(A)] == [
        41001,
        41002,
        41000,
    ]


def test_double_release_is_a_bug() -> None:
    allocator = PortAllocator(41000, 41000)
    port = allocator.acquire(A)
    assert isinstance(port, int)
    allocator.release(port)
    with pytest.raises(ValueError):
        allocator.release(port)


@pytest.mark.parametrize(
    ("capacity", "share"), [(1, 2), (2, 2), (19, 2), (20, 2), (30, 3), (100, 10), (1000, 100)]
)
def test_default_share_is_a_tenth_of_the_range_at_least_two(capacity: int, share: int) -> None:
    assert default_share(capacity) == share
    assert PortAllocator(41000, 41000 + capacity - 1).share == share


def test_an_owner_beyond_its_share_is_refused_and_others_are_not() -> None:
    allocator = PortAllocator(41000, 41009, share=3)
    held = [allocator.acquire(A) for _ in range(3)]
    assert held == [41000, 41001, 41002]
    assert allocator.acquire(A) is Refusal.SHARE
    assert allocator.held_by(A) == 3 and allocator.in_use == 3
    assert allocator.acquire(B) == 41003  # another address still gets a port
    allocator.release(41001)
    assert allocator.acquire(A) == 41004  # below its share again


def test_an_owner_at_its_share_is_told_so_even_when_the_range_is_full() -> None:
    allocator = PortAllocator(41000, 41003, share=2)
    for owner in (A, A, B, B):
        assert isinstance(allocator.acquire(owner), int)
    assert allocator.acquire(A) is Refusal.SHARE
    assert allocator.acquire("203.0.113.9") is Refusal.EXHAUSTED


def test_owners_without_ports_leave_no_entry() -> None:
    allocator = PortAllocator(41000, 41009)
    ports = [allocator.acquire(f"192.0.2.{n}") for n in range(1, 9)]
    assert allocator.owners == 8
    for port in ports:
        assert isinstance(port, int)
        allocator.release(port)
    assert allocator.owners == 0 and allocator.in_use == 0
    assert allocator.held_by("192.0.2.1") == 0
    assert allocator.owners == 0  # asking creates no entry either


def test_lowering_the_share_takes_no_port_away() -> None:
    allocator = PortAllocator(41000, 41009, share=4)
    ports = [allocator.acquire(A) for _ in range(4)]
    allocator.set_share(2)
    assert allocator.held_by(A) == 4
    assert allocator.acquire(A) is Refusal.SHARE
    for port in ports[:3]:
        assert isinstance(port, int)
        allocator.release(port)
    assert isinstance(allocator.acquire(A), int)  # 1 held, below 2
    allocator.set_share(0)  # back to the default for 10 ports: 2
    assert allocator.share == 2


@given(st.lists(st.booleans(), max_size=200))
def test_ports_in_use_are_unique_and_in_range(ops: list[bool]) -> None:
    allocator = PortAllocator(50000, 50009, share=10)
    held: list[int] = []
    for acquire in ops:
        if acquire:
            port = allocator.acquire(A)
            if isinstance(port, Refusal):
                assert port is Refusal.EXHAUSTED and len(held) == 10
            else:
                assert 50000 <= port <= 50009 and port not in held
                held.append(port)
        elif held:
            allocator.release(held.pop(0))
        assert allocator.in_use == len(held)


OWNERS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "::1"]


class SharedRange(RuleBasedStateMachine):
    """Several owners acquire and release at random; the share changes now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator = PortAllocator(50000, 50011, share=3)
        self.held: dict[int, str] = {}  # the model: port -> owner

    def count(self, owner: str) -> int:
        return sum(1 for who in self.held.values() if who == owner)

    @rule(owner=st.sampled_from(OWNERS))
    def acquire(self, owner: str) -> None:
        before = self.count(owner)
        port = self.allocator.acquire(owner)
        if isinstance(port, Refusal):
            if before >= self.allocator.share:
                assert port is Refusal.SHARE
            else:
                assert port is Refusal.EXHAUSTED and len(self.held) == self.allocator.capacity
            return
        assert before < self.allocator.share  # never a port beyond the share
        assert 50000 <= port <= 50011 and port not in self.held
        self.held[port] = owner

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        port = data.draw(st.sampled_from(sorted(self.held)))
        del self.held[port]
        self.allocator.release(port)

    @rule(share=st.integers(min_value=0, max_value=6))
    def set_share(self, share: int) -> None:
        self.allocator.set_share(share)
        assert self.allocator.share == (share or 2)

    @invariant()
    def counts_match_the_model(self) -> None:
        assert self.allocator.in_use == len(self.held)
        for owner in OWNERS:
            assert self.allocator.held_by(owner) == self.count(owner)
        assert self.allocator.owners == len(set(self.held.values()))

    def teardown(self) -> None:
        for port in list(self.held):
            self.allocator.release(port)
        assert self.allocator.in_use == 0 and self.allocator.owners == 0
        # Every port is free again: one owner may take them all, up to its share.
        self.allocator.set_share(self.allocator.capacity)
        taken = {self.allocator.acquire(OWNERS[0]) for _ in range(self.allocator.capacity)}
        assert taken == set(range(50000, 50012))


TestSharedRange = SharedRange.TestCase
TestSharedRange.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
