"""The passive port allocator."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.ports import PortAllocator


def test_exhaustion_and_release() -> None:
    allocator = PortAllocator(41000, 41001)
    assert {allocator.acquire(), allocator.acquire()} == {41000, 41001}
    assert allocator.acquire() is None
    allocator.release(41000)
    assert allocator.acquire() == 41000


def test_round_robin_reuses_a_released_port_last() -> None:
    allocator = PortAllocator(41000, 41002)
    first = allocator.acquire()
    assert first == 41000
    allocator.release(first)
    assert [allocator.acquire(), allocator.acquire(), allocator.acquire()] == [41001, 41002, 41000]


def test_double_release_is_a_bug() -> None:
    allocator = PortAllocator(41000, 41000)
    port = allocator.acquire()
    assert port is not None
    allocator.release(port)
    with pytest.raises(ValueError):
        allocator.release(port)


@given(st.lists(st.booleans(), max_size=200))
def test_ports_in_use_are_unique_and_in_range(ops: list[bool]) -> None:
    allocator = PortAllocator(50000, 50009)
    held: list[int] = []
    for acquire in ops:
        if acquire:
            port = allocator.acquire()
            if port is None:
                assert len(held) == 10
            else:
                assert 50000 <= port <= 50009 and port not in held
                held.append(port)
        elif held:
            allocator.release(held.pop(0))
        assert allocator.in_use == len(held)
