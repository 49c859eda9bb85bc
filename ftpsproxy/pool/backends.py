"""One backend of a pool as configured: a frozen value, validated once at start-up or reload."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import BackendAddress

# A name is a log field and a Prometheus label value: keep it short and unambiguous.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class AdminState(StrEnum):
    """What the operator wants: ``drain`` takes no new sessions, running ones continue."""

    ACTIVE = "active"
    DRAIN = "drain"


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend by ``name``; the address never appears in logs or metrics, the name does."""

    name: str
    address: BackendAddress
    weight: int = 1
    max_sessions: int | None = None  # None: no cap of its own
    state: AdminState = AdminState.ACTIVE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"backend name {self.name!r}: 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if not _positive_int(self.weight):
            raise ConfigError(
                f"backend {self.name}: weight {self.weight!r} must be an integer >= 1"
            )
        cap = self.max_sessions
        if cap is not None and not _positive_int(cap):
            raise ConfigError(
                f"backend {self.name}: max-sessions {cap!r} must be an integer >= 1 (or unset)"
            )
        try:
            # A config file spells the state as text; keep the enum member.
            object.__setattr__(self, "state", AdminState(self.state))
        except ValueError:
            raise ConfigError(
                f"backend {self.name}: state {self.state!r} must be active or drain"
            ) from None


def _positive_int(value: object) -> bool:
    # bool is an int: weight = true in TOML is a mistake, not a weight of 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
