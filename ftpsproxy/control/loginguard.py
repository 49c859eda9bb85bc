"""Failed logins per client address: every failure answered late, too many locks the address out.

Guesses under way count too: from one address at most ``max_failures`` passwords
are at the backend or failed within the window, however many sessions it opens
at once.  A guess beyond that waits (``wait``) until one under way is answered;
a success frees its place, a failure keeps it until it leaves the window.

Sans-IO: the caller passes the time.  Memory is bounded by ``max_tracked``
addresses; when full, the address whose record is oldest is forgotten first.
Guesses under way and their waiters are bounded by the sessions an address may
open.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

Waiter = Callable[[], None]


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
    _in_flight: dict[str, int] = field(default_factory=dict)
    _waiters: dict[str, deque[Waiter]] = field(default_factory=dict)

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

    def in_flight(self, host: str) -> int:
        """Guesses from *host* sent to the backend and not yet answered."""
        return self._in_flight.get(host, 0)

    def try_begin(self, host: str, now: float) -> bool:
        """May a guess from *host* go to the backend now?  If so it counts as under way
        until :meth:`finish`; if not, :meth:`wait` (or refuse, when :meth:`locked`)."""
        if self.locked(host, now):
            return False
        if self._recent_failures(host, now) + self.in_flight(host) >= self.max_failures:
            return False
        self._in_flight[host] = self.in_flight(host) + 1
        return True

    def finish(self, host: str, now: float, *, failed: bool) -> tuple[bool, list[Waiter]]:
        """A guess under way was answered (or abandoned: count that as *failed*).

        Returns whether *host* is now locked out, and the waiters that may try again
        (all of them when locked: they are to be refused).
        """
        count = self.in_flight(host) - 1
        if count > 0:
            self._in_flight[host] = count
        else:
            self._in_flight.pop(host, None)
        locked = self.failed(host, now) if failed else False
        return locked, self._wake(host, now)

    def wait(self, host: str, waiter: Waiter) -> None:
        """Call *waiter* (through :meth:`finish`'s result) when a guess may go again."""
        self._waiters.setdefault(host, deque()).append(waiter)

    def cancel(self, host: str, waiter: Waiter) -> None:
        """*waiter*'s session ended before its turn."""
        waiting = self._waiters.get(host)
        if waiting is None:
            return
        try:
            waiting.remove(waiter)
        except ValueError:
            return
        if not waiting:
            del self._waiters[host]

    def _wake(self, host: str, now: float) -> list[Waiter]:
        waiting = self._waiters.get(host)
        if not waiting:
            return []
        if self.locked(host, now):
            room = len(waiting)
        else:
            room = self.max_failures - self._recent_failures(host, now) - self.in_flight(host)
        woken = [waiting.popleft() for _ in range(min(max(room, 0), len(waiting)))]
        if not waiting:
            del self._waiters[host]
        return woken

    def _recent_failures(self, host: str, now: float) -> int:
        times = self._failures.get(host)
        if times is None:
            return 0
        return sum(1 for when in times if when > now - self.lockout)

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
