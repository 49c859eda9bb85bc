"""The backend's readiness as the probes last saw it, and when that changed.

Pure: probe outcomes in, a change out only when up turns down or back (so the log
gets one line per change, not one per probe).  Rise/fall thresholds, per backend of
a pool, belong here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpsproxy.control.probe_outcome import ProbeOutcome

NOT_PROBED = "not probed yet"


@dataclass(frozen=True, slots=True)
class ReadinessChange:
    up: bool
    reason: str  # why it is down; empty when up
    first: bool  # the first probe's outcome, not a change from an earlier state


class BackendReadiness:
    def __init__(self) -> None:
        self.up: bool | None = None  # None: not probed yet
        self.reason = NOT_PROBED  # the latest probe's reason while down

    def record(self, outcome: ProbeOutcome) -> ReadinessChange | None:
        """Take one probe's outcome; the change it makes, if any."""
        before = self.up
        self.up = outcome.up
        self.reason = outcome.reason
        if before == outcome.up:
            return None
        return ReadinessChange(outcome.up, outcome.reason, first=before is None)
