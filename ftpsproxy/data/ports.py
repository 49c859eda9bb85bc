"""The passive port allocator: which ports of the configured range are free, and who holds them.

Pure bookkeeping, no sockets.  Ports are handed out round-robin so a port just
released (possibly still in TIME_WAIT at a client's firewall) is reused last.

Each port is acquired for an *owner* (the client's address), and no owner may
hold more than its *share* of the range at once: otherwise one address, with
sessions that send ``PASV`` and never connect, could hold every port and lock
every other client out.  Only owners holding ports have an entry, so memory is
bounded by the range, not by the number of addresses ever seen.
"""

from __future__ import annotations

import enum
from collections import deque

from ftpsproxy.settings.config import default_share


class Refusal(enum.Enum):
    """Why :meth:`PortAllocator.acquire` gave no port."""

    EXHAUSTED = "exhausted"  # every port of the range is in use
    SHARE = "per_ip_share"  # the owner already holds its share


class PortAllocator:
    def __init__(self, low: int, high: int, share: int = 0) -> None:
        if low > high:
            raise ValueError("empty port range")
        self.low = low
        self.high = high
        self._free: deque[int] = deque(range(low, high + 1))
        self._owners: dict[int, str] = {}  # port in use -> its owner
        self._held: dict[str, int] = {}  # owner -> ports it holds (never 0)
        self.share = 0
        self.set_share(share)

    def set_share(self, share: int) -> None:
        """Ports one owner may hold at once; 0 means :func:`default_share` of the range.

        Lowering it takes no port away: an owner above the new share gets no more
        until it is below it again.
        """
        if share < 0:
            raise ValueError("share must be >= 0")
        self.share = share or default_share(self.capacity)

    @property
    def capacity(self) -> int:
        return self.high - self.low + 1

    @property
    def in_use(self) -> int:
        return len(self._owners)

    @property
    def owners(self) -> int:
        """How many owners hold at least one port."""
        return len(self._held)

    def held_by(self, owner: str) -> int:
        return self._held.get(owner, 0)

    def acquire(self, owner: str) -> int | Refusal:
        """A free port for *owner*, or why there is none."""
        if self._held.get(owner, 0) >= self.share:
            return Refusal.SHARE
        if not self._free:
            return Refusal.EXHAUSTED
        port = self._free.popleft()
        self._owners[port] = owner
        self._held[owner] = self._held.get(owner, 0) + 1
        return port

    def release(self, port: int) -> None:
        """Give *port* back; releasing a port twice or one never acquired is a bug."""
        owner = self._owners.pop(port, None)
        if owner is None:
            raise ValueError(f"port {port} is not in use")
        held = self._held[owner] - 1
        if held:
            self._held[owner] = held
        else:
            del self._held[owner]
        self._free.append(port)
