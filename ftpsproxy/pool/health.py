"""Health of one backend: a rise/fall state machine fed by probe and session results.

Thresholds keep one slow probe from flapping a backend.  Decisions, and why:

- Initial state ``unknown``, usable like ``up``: a proxy restarting under load
  keeps serving at once instead of refusing everyone for ``rise`` probe
  intervals, and failover covers a backend that turns out dead.  The first
  result decides at once (one failure: ``down``, one success: ``up``), so a
  backend dead at start-up is not tried ``fall`` times.
- A failed real session (connect refused or timed out, backend TLS failure,
  no ``220`` in time) counts exactly like a failed probe.  Under load a dead
  backend reaches ``fall`` within a few sessions rather than ``fall`` probe
  intervals.  Only backend-side set-up failures count: a ``530`` is the
  user's, not the backend's.
- A successful real session clears the failure streak of an ``up`` backend
  but never brings a ``down`` one back: re-admission takes ``rise``
  consecutive good probes, so a backend that half works cannot bounce back on
  the luck of one session that was already under way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ftpsproxy.settings.errors import ConfigError


class HealthState(StrEnum):
    UNKNOWN = "unknown"  # nothing heard yet: usable, see the module docstring
    UP = "up"
    DOWN = "down"


class Source(StrEnum):
    """Where a result comes from: the prober, or a real session setting up."""

    PROBE = "probe"
    SESSION = "session"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``rise`` good probes in a row bring a backend up, ``fall`` failures take it down."""

    rise: int = 2
    fall: int = 3

    def __post_init__(self) -> None:
        for key, value in (("rise", self.rise), ("fall", self.fall)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"health {key} {value!r} must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One observation of a backend; ``reason`` says what failed (``certificate expired``)."""

    ok: bool
    reason: str = ""
    source: Source = Source.PROBE

    @classmethod
    def passed(cls, source: Source = Source.PROBE) -> CheckResult:
        return cls(True, "", source)

    @classmethod
    def failed(cls, reason: str, source: Source = Source.PROBE) -> CheckResult:
        return cls(False, reason, source)


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A transition, for one log line and one counter increment."""

    backend: str
    old: HealthState
    new: HealthState
    reason: str  # the last result's reason, and how many in a row led here
    source: Source


class Health:
    """The state machine of one backend; :meth:`record` returns an event on a transition."""

    def __init__(self, backend: str, thresholds: Thresholds) -> None:
        self.backend = backend
        self.thresholds = thresholds
        self.state = HealthState.UNKNOWN
        self._streak = 0  # consecutive results pointing away from the current state

    @property
    def usable(self) -> bool:
        return self.state is not HealthState.DOWN

    def record(self, result: CheckResult) -> HealthEvent | None:
        if self.state is HealthState.UNKNOWN:
            new = HealthState.UP if result.ok else HealthState.DOWN
            return self._move(new, result, "first result")
        if self.state is HealthState.UP:
            if result.ok:
                self._streak = 0
                return None
            self._streak += 1
            if self._streak < self.thresholds.fall:
                return None
            return self._move(HealthState.DOWN, result, f"{self._streak} failures in a row")
        # down: only probes re-admit (see the module docstring)
        if not result.ok:
            self._streak = 0
            return None
        if result.source is not Source.PROBE:
            return None
        self._streak += 1
        if self._streak < self.thresholds.rise:
            return None
        return self._move(HealthState.UP, result, f"{self._streak} good probes in a row")

    def _move(self, new: HealthState, result: CheckResult, why: str) -> HealthEvent:
        old, self.state, self._streak = self.state, new, 0
        reason = f"{why}: {result.reason}" if result.reason else why
        return HealthEvent(self.backend, old, new, reason, result.source)
