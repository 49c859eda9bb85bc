"""The passive port allocator: which ports of the configured range are free.

Pure bookkeeping, no sockets.  Ports are handed out round-robin so a port just
released (possibly still in TIME_WAIT at a client's firewall) is reused last.
"""

from __future__ import annotations

from collections import deque


class PortAllocator:
    def __init__(self, low: int, high: int) -> None:
        if low > high:
            raise ValueError("empty port range")
        self.low = low
        self.high = high
        self._free: deque[int] = deque(range(low, high + 1))
        self._used: set[int] = set()

    @property
    def capacity(self) -> int:
        return self.high - self.low + 1

    @property
    def in_use(self) -> int:
        return len(self._used)

    def acquire(self) -> int | None:
        """A free port, or None when all are taken."""
        if not self._free:
            return None
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give *port* back; releasing a port twice or one never acquired is a bug."""
        if port not in self._used:
            raise ValueError(f"port {port} is not in use")
        self._used.remove(port)
        self._free.append(port)
