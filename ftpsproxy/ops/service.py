"""The running proxy as a Twisted service: listeners, the metrics site, shared state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from ftpsproxy.control.backend import BackendConnector, connector_for
from ftpsproxy.control.context import ProxyContext
from ftpsproxy.control.frontend import frontend_factory
from ftpsproxy.control.health import PoolHealth
from ftpsproxy.control.routing import BackendRouter
from ftpsproxy.control.user_lookup import UserLookup
from ftpsproxy.control.user_routing import UserRouting
from ftpsproxy.control.usermap_file import UserMapFile
from ftpsproxy.data.ports import PortAllocator
from ftpsproxy.net.twisted_internals import listener_bound
from ftpsproxy.observe.http import metrics_site
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.routing_events import RoutingEvents
from ftpsproxy.observe.user_routing_events import UserRoutingEvents
from ftpsproxy.observe.xferlog import XferLog
from ftpsproxy.ops.listeners import OptionListener
from ftpsproxy.ops.process import ProcessService
from ftpsproxy.pool import Pool, Thresholds
from ftpsproxy.settings.config import Config, ConfigChange
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.listeners import Listener
from ftpsproxy.tls.server import ReloadableServerTLS, ServerTLS, load_server_tls

log = Logger()


def parse_endpoint(reactor: Any, option: str, description: str) -> Any:
    """The server endpoint *description* names, or a ConfigError naming *option*."""
    try:
        return serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"{option}: {description!r} is not an endpoint: {error}") from error


def backend_connectors(reactor: Any, config: Config) -> dict[str, BackendConnector]:
    """A connector per backend, by name; TLS files are checked now, naming the backend."""
    connectors: dict[str, BackendConnector] = {}
    for backend in config.pool:
        try:
            connectors[backend.name] = connector_for(
                reactor, backend, config.backend_connect_timeout
            )
        except ConfigError as error:
            if not config.backends:
                raise
            raise ConfigError(f"backends {backend.name}: {error}") from error
        if backend.insecure:
            log.warn(
                "backend {backend}: certificate verification is OFF (insecure)",
                backend=backend.name,
            )
    return connectors


class ProxyService(ProcessService):
    """Owns the listeners; ``context`` is what every session shares."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        reread_config: Callable[[], Config] | None = None,
        endpoints: Mapping[tuple[str, str], Any] | None = None,
        session_ids: Iterator[int] | None = None,
    ) -> None:
        super().__init__(config, reactor, reread_config)
        # (option, description) -> an endpoint to use instead of parsing the description:
        # a worker's listeners are sockets the master bound (ftpsproxy.ops.worker_main).
        self._endpoints = dict(endpoints or {})
        server_tls = None
        if config.tls_enabled:
            server_tls = ReloadableServerTLS(self._load_server_tls())
        metrics = Metrics()
        ports = config.passive_ports
        metrics.passive_ports_capacity.set(ports.size)
        connectors = backend_connectors(reactor, config)
        router = BackendRouter(
            reactor,
            Pool(config.pool, config.balance, Thresholds(config.health_rise, config.health_fall)),
            connectors,
            RoutingEvents(metrics, connectors),
        )
        self.context = ProxyContext(
            reactor=reactor,
            config=config,
            metrics=metrics,
            allocator=PortAllocator(ports.low, ports.high, config.passive_share),
            server_tls=server_tls,
            router=router,
        )
        if session_ids is not None:  # a worker's own stride (ftpsproxy.ops.workerspec)
            self.context.session_ids = session_ids
        self.user_map = self._route_users(reactor, config, metrics)
        self._listeners: list[StreamServerEndpointService] = []
        self.draining = False  # SIGTERM: listeners closed, running transfers finishing
        for description in config.listen:
            self._add_listener(reactor, description, implicit=False)
        for description in config.listen_implicit:
            self._add_listener(reactor, description, implicit=True)
        if config.xferlog is not None:
            try:
                self.context.xferlog = XferLog(config.xferlog)
            except OSError as error:
                raise ConfigError(f"xferlog {config.xferlog}: {error.strerror}") from error
        self.health = PoolHealth(router, connectors, metrics, config.health_interval)
        if config.metrics:
            site = metrics_site(metrics, self._ready_problem, self.health.down)
            endpoint = self._endpoint(reactor, "metrics", config.metrics, config.metrics)
            self._add("metrics", config.metrics, endpoint, site)

    def _route_users(self, reactor: Any, config: Config, metrics: Metrics) -> UserMapFile | None:
        """The user map and the lookup, if configured; a broken map stops the start."""
        self._user_events = UserRoutingEvents(metrics)
        user_map = self._open_user_map(config)
        lookup = self._open_user_lookup(reactor, config)
        self._set_user_routing(user_map, lookup)
        return user_map

    def _backend_names(self) -> list[str]:
        return [backend.name for backend in self.context.router.pool.backends]

    def _open_user_map(self, config: Config) -> UserMapFile | None:
        if config.user_map is None:
            return None
        return UserMapFile(config.user_map, self._backend_names, self._user_events)

    def _open_user_lookup(self, reactor: Any, config: Config) -> UserLookup | None:
        if config.user_lookup is None:
            return None
        context = self.context
        return UserLookup(
            reactor,
            config.user_lookup,
            lambda: context.config,
            self._backend_names,
            self._user_events,
        )

    def _set_user_routing(self, user_map: UserMapFile | None, lookup: UserLookup | None) -> None:
        context = self.context
        context.user_routing = UserRouting(
            lambda: context.config, self._user_events, user_map, lookup
        )

    def _reroute_users(self, change: ConfigChange) -> None:
        """SIGHUP named another user map file or lookup URL, or none: new sessions route by
        them.  A map file that does not read keeps the routing as it was, its path too, so
        the next SIGHUP tries it again."""
        routing = self.context.user_routing
        user_map, lookup = routing.user_map, routing.lookup
        if "user_map" in change.applied:
            try:
                user_map = self._open_user_map(change.config)
            except ConfigError as error:
                log.error("SIGHUP: user-map not changed: {error}", error=error)
                kept = dataclasses.replace(self.config, user_map=change.applied["user_map"][0])
                self.config = self.context.config = kept
        if "user_lookup" in change.applied:
            lookup = self._open_user_lookup(self.context.reactor, change.config)
        if user_map is not self.user_map:
            if self.user_map is not None:
                self.user_map.stop()
            if user_map is not None and self.running:
                user_map.start(self.context.reactor)
            self.user_map = user_map
        self._set_user_routing(user_map, lookup)

    def _load_server_tls(self) -> ServerTLS:
        config = self.config
        assert config.certificate is not None and config.private_key is not None
        return load_server_tls(
            config.certificate,
            config.private_key,
            minimum_version=config.tls_minimum_version,
            ciphers=config.tls_ciphers,
            client_ca=config.client_ca,
            client_certificate=config.client_certificate,
        )

    def reload(self) -> None:
        """SIGHUP: reopen the xferlog, re-read the configuration and the user map, reload
        the certificate.

        Changes that are safe while running (limits, timeouts, TLS files) apply to new
        sessions; the others are logged and wait for a restart.  A file that no longer
        parses changes nothing.
        """
        if self.context.xferlog is not None:
            self.context.xferlog.reopen()  # after rotation by logrotate
        read_before = self.user_map
        change = self._reload_config()
        if change is not None:
            self._apply(change)
        if self.user_map is not None and self.user_map is read_before:
            self.user_map.reload("SIGHUP")  # after the backends: it names them
        self.reload_tls()

    def _apply(self, change: ConfigChange) -> None:
        """Hand the new values to what the sessions share."""
        self.context.config = change.config
        guard = self.context.login_guard
        guard.max_failures = change.config.max_login_failures
        guard.lockout = change.config.login_lockout
        self.context.allocator.set_share(change.config.passive_share)
        if "balance" in change.applied:
            self.context.router.pool.set_policy(change.config.balance)
        if "backends" in change.applied:
            self._apply_pool(change.config)
        if "user_map" in change.applied or "user_lookup" in change.applied:
            self._reroute_users(change)

    def _apply_pool(self, config: Config) -> None:
        """New ``[[backends]]`` tables: new sessions see them, running ones keep theirs."""
        reactor = self.context.reactor
        try:
            connectors = backend_connectors(reactor, config)
        except ConfigError as error:
            log.error("SIGHUP: backends not reloaded: {error}", error=error)
            return
        self.context.router.update(config.pool, connectors)
        self.health.update(connectors)
        lookup = self.context.user_routing.lookup
        if lookup is not None:
            lookup.cache.clear()  # answers may name backends that are gone

    def reload_tls(self) -> bool:
        """Load the certificate and key again (SIGHUP); on failure keep the old ones."""
        if self.context.server_tls is None:
            return True
        try:
            fresh = self._load_server_tls()
        except ConfigError as error:
            log.error("TLS reload failed, keeping the current certificate: {error}", error=error)
            return False
        self.context.server_tls.current = fresh
        log.info("TLS certificate reloaded from {path}", path=fresh.description)
        return True

    def startService(self) -> None:
        super().startService()
        reactor = self.context.reactor
        reactor.callWhenRunning(self.health.start, reactor)
        if self.user_map is not None:
            reactor.callWhenRunning(self.user_map.start, reactor)

    def stopService(self) -> Deferred[None]:
        """Stop listening, let running commands and transfers finish, then close the rest.

        ``/metrics`` and ``/readyz`` go on until the end, ``/readyz`` answering 503
        ``draining``: a load balancer stops sending sessions while running transfers
        finish, and the last counters can still be scraped.
        """
        self.health.stop()
        if self.user_map is not None:
            self.user_map.stop()
        self.draining = True
        listeners, self._listeners = self._listeners, []
        stopping = [maybeDeferred(listener.disownServiceParent) for listener in listeners]
        stop_the_rest = super().stopService
        drained = gatherResults(stopping).addCallback(lambda _: self._drain())
        return drained.addCallback(lambda _: stop_the_rest())

    def _drain(self) -> Deferred[None]:
        sessions = self.context.open_sessions
        for session in list(sessions):
            session.drain()
        reactor = self.context.reactor
        deadline = reactor.seconds() + self.config.drain_timeout
        drained: Deferred[None] = Deferred()

        def check() -> None:
            if sessions and reactor.seconds() < deadline:
                reactor.callLater(0.1, check)
                return
            if sessions:
                log.warn(
                    "drain timeout ({s}s) passed: cutting {sessions} session(s) still busy, "
                    "{transfers} of them mid-transfer",
                    s=self.config.drain_timeout,
                    sessions=len(sessions),
                    transfers=sum(1 for session in sessions if session.transferring),
                )
            for session in list(sessions):
                session.force_close()
            # Let the final replies and TLS close_notify go out before the reactor stops.
            reactor.callLater(0.2, drained.callback, None)

        check()
        return drained

    def _endpoint(self, reactor: Any, option: str, description: str, parsed: str) -> Any:
        """The endpoint of *description* (the master's socket, in a worker), *parsed* read."""
        if (option, description) in self._endpoints:
            return self._endpoints[option, description]
        return parse_endpoint(reactor, option, parsed)

    def _add_listener(self, reactor: Any, description: str, *, implicit: bool) -> None:
        option = "listen-implicit" if implicit else "listen"
        listener = Listener.of(description, all_proxied=self.config.proxy_protocol)
        factory = frontend_factory(self.context, listener, implicit=implicit)
        endpoint = self._endpoint(reactor, option, description, listener.endpoint)
        self._listeners.append(self._add(option, description, endpoint, factory))

    def _add(
        self, option: str, description: str, endpoint: Any, factory: Any
    ) -> StreamServerEndpointService:
        # A port that cannot be bound stops the process instead of running half-configured.
        service = OptionListener(option, description, endpoint, factory)
        service.setServiceParent(self)
        return service

    def _ready_problem(self) -> str | None:
        if self.draining:
            return "draining"
        problem = self.health.ready_problem()
        if problem is not None:
            return problem
        for listener in self._listeners:
            if not listener_bound(listener):
                return "listeners not bound yet"
        return None
