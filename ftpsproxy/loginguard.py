"""Failed logins per client address: every failure answered late, too many locks the address out.

Sans-IO: the caller passes the time.  Memory is bounded by ``max_tracked``
addresses; when full, the address whose record is oldest is forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class LoginGuard:
    """Counts failures per address over a sliding window of ``lockout`` seconds.

    ``max_failures`` failures within the window lock the address out for
    ``lockout`` seconds from the last one.
    """

    max_failures: int
    lockout: float
    max_tracked: int = 100_000
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _locked_until: dict[str, float] = field(default_factory=dict)

    def locked(self, host: str, now: float) -> bool:
        until = self._locked_until.get(host)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked_until[host]
        return False

    def locked_count(self, now: float) -> int:
        """Addresses locked out at *now*."""
        return sum(1 for until in self._locked_until.values() if until > now)

    def failed(self, host: str, now: float) -> bool:
        """Record a failed login from *host*; True when it is now locked out."""
        times = self._failures.pop(host, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.lockout:
            times.popleft()
        while len(times) > self.max_failures:
            times.popleft()
        self._failures[host] = times  # most recent last
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
        if len(times) >= self.max_failures:
            del self._failures[host]
            self._locked_until[host] = now + self.lockout
            self._expire_locks(now)
            return True
        return False

    def _expire_locks(self, now: float) -> None:
        if len(self._locked_until) <= self.max_tracked:
            return
        for host in [h for h, until in self._locked_until.items() if until <= now]:
            del self._locked_until[host]
        while len(self._locked_until) > self.max_tracked:  # the oldest locks go first
            del self._locked_until[next(iter(self._locked_until))]
