"""Backend pools without I/O: which backends a session may use, in which order, and their health.

The caller (the session at ``USER``, the health prober) feeds results in and
gets values out: candidate lists, leases, health events to log and count.
Nothing here knows about the reactor, sockets or time.
"""

from ftpsproxy.pool.health import CheckResult, HealthEvent, HealthState, Source, Thresholds
from ftpsproxy.pool.leases import Lease
from ftpsproxy.pool.pool import Pool
from ftpsproxy.settings.backends import AdminState, Backend, Policy

__all__ = [
    "AdminState",
    "Backend",
    "CheckResult",
    "HealthEvent",
    "HealthState",
    "Lease",
    "Policy",
    "Pool",
    "Source",
    "Thresholds",
]
