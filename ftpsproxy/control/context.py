"""What all sessions of a service share: settings, the reactor, the port allocator, TLS,
the backend router and routing by user, the login guard, the reporter, and who is connected."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ftpsproxy.control.loginguard import LoginGuard
from ftpsproxy.control.proxy_rules import ConfiguredHeaderRules
from ftpsproxy.control.routing import BackendRouter
from ftpsproxy.control.user_routing import UserRouting
from ftpsproxy.data.ports import PortAllocator
from ftpsproxy.data.splice import splice_supported
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.session_events import SessionEvents
from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.observe.xferlog import XferLog
from ftpsproxy.settings.config import Config
from ftpsproxy.settings.values import DataPath
from ftpsproxy.tls.server import ReloadableServerTLS

LOCKED_OUT = "Too many failed logins from your address; try again later."  # with 421


class OpenSession(Protocol):
    """A running session, as the service sees it when it stops."""

    @property
    def transferring(self) -> bool: ...

    def drain(self) -> None: ...

    def force_close(self) -> None: ...


@dataclass
class ProxyContext:
    """What all sessions of a service share."""

    reactor: Any  # provides IReactorTCP and IReactorTime
    config: Config
    metrics: Metrics
    allocator: PortAllocator
    server_tls: ReloadableServerTLS | None
    router: BackendRouter  # which backend each session gets
    open_sessions: set[OpenSession] = field(default_factory=set)
    sessions_per_ip: Counter[str] = field(default_factory=Counter)
    xferlog: XferLog | None = None
    # Session ids, as in the logs and the PROXY v2 unique id; a worker's are its own
    # stride of the numbers (ftpsproxy.ops.workerspec), so no two workers share one.
    session_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    login_guard: LoginGuard = field(init=False)
    events: SessionEvents = field(init=False)
    # Which backends a user may go to; the service gives it its map and lookup, if any.
    user_routing: UserRouting = field(init=False)
    splice: bool = field(init=False)  # plain-to-plain transfers may move in the kernel
    # PROXY protocol headers on control and on data connections (one each: one log throttle)
    control_headers: ConfiguredHeaderRules = field(init=False)
    data_headers: ConfiguredHeaderRules = field(init=False)

    def __post_init__(self) -> None:
        self.splice = self.config.data_path == DataPath.SPLICE and splice_supported(self.reactor)
        self.login_guard = LoginGuard(self.config.max_login_failures, self.config.login_lockout)
        self.events = SessionEvents(self.metrics, lambda: self.xferlog)
        self.user_routing = UserRouting(lambda: self.config, UserRoutingEvents(self.metrics))
        config, metrics, clock = (lambda: self.config), self.metrics, self.reactor
        self.control_headers = ConfiguredHeaderRules(config, metrics, clock, "control")
        self.data_headers = ConfiguredHeaderRules(config, metrics, clock, "data")
        self.metrics.locked_out_addresses.set_function(
            lambda: self.login_guard.locked_count(self.reactor.seconds())
        )

    def admission_refusal(self, client_host: str) -> tuple[str, str] | None:
        """Why a new connection from *client_host* must be refused (421): (reason, text)."""
        if self.login_guard.locked(client_host, self.reactor.seconds()):
            return "lockout", LOCKED_OUT
        if len(self.open_sessions) >= self.config.max_sessions:
            return "limit", "Too many sessions; try again later."
        if self.sessions_per_ip[client_host] >= self.config.max_sessions_per_ip:
            return "limit", "Too many sessions from your address."
        return None
