"""The proxy's Prometheus series, in one registry owned by the service.

Every label value comes from a fixed set (never a user, file name or address),
so the series count is bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

# No ``*_created`` series: a third of the exposition, and nothing here reads them.
disable_created_metrics()

DIRECTIONS = ("upload", "download", "listing")
LOOKUP_ERRORS = ("unreachable", "timeout", "status", "invalid")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.sessions_active = Gauge(
            "ftpsproxy_sessions_active",
            "Client sessions currently open, by listener and frontend mode.",
            ["listener", "mode"],
            registry=r,
        )
        self.sessions_total = Counter(
            "ftpsproxy_sessions",
            "Client sessions accepted, by listener and frontend mode.",
            ["listener", "mode"],
            registry=r,
        )
        self.sessions_refused = Counter(
            "ftpsproxy_sessions_refused",
            "Connections refused with 421 before a session started, by reason.",
            ["reason"],
            registry=r,
        )
        self.logins_total = Counter(
            "ftpsproxy_logins", "Login attempts relayed, by result.", ["result"], registry=r
        )
        self.login_lockouts = Counter(
            "ftpsproxy_login_lockouts",
            "Client addresses locked out after too many failed logins.",
            registry=r,
        )
        self.locked_out_addresses = Gauge(
            "ftpsproxy_locked_out_addresses",
            "Client addresses currently locked out after failed logins.",
            registry=r,
        )
        self.data_timeouts = Counter(
            "ftpsproxy_data_timeouts",
            "Data connections ended by a timeout: stall (no byte moved) or close "
            "(the peer never finished closing).",
            ["kind"],
            registry=r,
        )
        self.session_duration = Histogram(
            "ftpsproxy_session_duration_seconds",
            "How long client sessions lasted.",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "ftpsproxy_tls_handshake_failures",
            "TLS handshakes that failed, by side, channel (control, data, probe: the "
            "backend health probe) and reason (verification, protocol, timeout, closed, "
            "session_reuse).",
            ["side", "channel", "reason"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "ftpsproxy_tls_handshakes",
            "TLS handshakes completed, by side, channel (control, data, probe) and protocol "
            "version.",
            ["side", "channel", "version"],
            registry=r,
        )
        self.tls_data_sessions = Counter(
            "ftpsproxy_tls_data_sessions",
            "TLS data connections by side and whether they resumed the control session.",
            ["side", "resumed"],
            registry=r,
        )
        self.bytes_total = Counter(
            "ftpsproxy_transfer_bytes",
            "Data-connection payload bytes relayed, by direction.",
            ["direction"],
            registry=r,
        )
        self.transfers_total = Counter(
            "ftpsproxy_transfers",
            "Data transfers finished, by direction and result.",
            ["direction", "result"],
            registry=r,
        )
        self.transfer_duration = Histogram(
            "ftpsproxy_transfer_duration_seconds",
            "How long data transfers took, by direction.",
            ["direction"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
            registry=r,
        )
        self.data_paths = Counter(
            "ftpsproxy_data_paths",
            "Transfers by how their bytes were relayed: splice (in the kernel, plain to "
            "plain) or copy (through Python, TLS on either side).",
            ["path"],
            registry=r,
        )
        self.transfers_active = Gauge(
            "ftpsproxy_transfers_active", "Data transfers currently running.", registry=r
        )
        self.passive_ports_in_use = Gauge(
            "ftpsproxy_passive_ports_in_use", "Passive ports currently allocated.", registry=r
        )
        self.passive_ports_capacity = Gauge(
            "ftpsproxy_passive_ports_capacity", "Size of the passive port range.", registry=r
        )
        self.passive_ports_exhausted = Counter(
            "ftpsproxy_passive_ports_exhausted",
            "PASV/EPSV requests refused because every passive port was in use.",
            registry=r,
        )
        self.data_connections_refused = Counter(
            "ftpsproxy_data_connections_refused",
            "Data connections refused, by reason: foreign_address (not from the session's "
            "client), bounce (PORT/EPRT elsewhere or below 1024), per_ip_share (PASV/EPSV "
            "refused with 425: the client address holds its share of the passive range), "
            "backend_port (the backend's 227/229 named a port below 1024).",
            ["reason"],
            registry=r,
        )
        self.proxy_header_refusals = Counter(
            "ftpsproxy_proxy_header_refusals",
            "Connections to a listener that requires a PROXY protocol header, closed before "
            "a session or transfer, by channel (control, data) and reason: untrusted (not "
            "from --proxy-protocol-from), timeout (no header in time), invalid.",
            ["channel", "reason"],
            registry=r,
        )
        self.proxy_health_checks = Counter(
            "ftpsproxy_proxy_health_checks",
            "Connections whose PROXY header says no client is behind them (v2 LOCAL, v1 "
            "UNKNOWN: a balancer's health check), closed without a session, by channel.",
            ["channel"],
            registry=r,
        )
        self.backend_replies_dropped = Counter(
            "ftpsproxy_backend_replies_dropped",
            "Backend replies not passed to the client: sent with no command outstanding.",
            registry=r,
        )
        self.backend_connects_total = Counter(
            "ftpsproxy_backend_connects",
            "Backend session set-ups, by backend and result (success, refused, unreachable, "
            "tls, timeout); a failover counts one per backend tried.",
            ["backend", "result"],
            registry=r,
        )
        self.backend_up = Gauge(
            "ftpsproxy_backend_up",
            "1 while the backend is in use (its health is up, or not known yet), else 0.",
            ["backend"],
            registry=r,
        )
        self.backend_sessions = Gauge(
            "ftpsproxy_backend_sessions",
            "Sessions open on the backend now.",
            ["backend"],
            registry=r,
        )
        self.backend_connect_seconds = Histogram(
            "ftpsproxy_backend_connect_seconds",
            "Time to a ready backend session: connect, TLS, greeting, PBSZ/PROT.",
            ["backend"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.backend_probes_total = Counter(
            "ftpsproxy_backend_probes",
            "Health probes of the backend, by result (the backend_connects results).",
            ["backend", "result"],
            registry=r,
        )
        self.backend_failovers_total = Counter(
            "ftpsproxy_backend_failovers",
            "Sessions moved to another backend because the chosen one failed to set up.",
            ["from", "to"],
            registry=r,
        )
        self.user_lookup_cache = Counter(
            "ftpsproxy_user_lookup_cache",
            "User lookups by cache result: hit (answered from the cache, found or 404), "
            "miss (the lookup service was asked), joined (waited for the same user's "
            "question already asked).",
            ["result"],
            registry=r,
        )
        self.user_lookup_errors = Counter(
            "ftpsproxy_user_lookup_errors",
            "User lookups that failed, by reason: unreachable, timeout, status (neither 200 "
            "nor 404), invalid (a 200 that is not an answer).",
            ["reason"],
            registry=r,
        )
        self.user_map_reloads = Counter(
            "ftpsproxy_user_map_reloads",
            "Reloads of the user map file, by result (error: the previous map is kept).",
            ["result"],
            registry=r,
        )
        self.replies_total = Counter(
            "ftpsproxy_replies",
            "Replies sent to clients, by class (1xx-5xx).",
            ["class"],
            registry=r,
        )
        self.commands_total = Counter(
            "ftpsproxy_commands",
            "Client commands received, by verb (known verbs, else 'other').",
            ["verb"],
            registry=r,
        )
        for direction in DIRECTIONS:
            self.bytes_total.labels(direction=direction)
        for path in ("splice", "copy"):
            self.data_paths.labels(path=path)
        for kind in ("stall", "close"):
            self.data_timeouts.labels(kind=kind)
        for reason in ("limit", "lockout"):
            self.sessions_refused.labels(reason=reason)
        for reason in ("foreign_address", "bounce", "per_ip_share", "backend_port"):
            self.data_connections_refused.labels(reason=reason)
        for channel in ("control", "data"):
            for reason in ("untrusted", "timeout", "invalid"):
                self.proxy_header_refusals.labels(channel=channel, reason=reason)
        for result in ("hit", "miss", "joined"):
            self.user_lookup_cache.labels(result=result)
        for reason in LOOKUP_ERRORS:
            self.user_lookup_errors.labels(reason=reason)
        for result in ("ok", "error"):
            self.user_map_reloads.labels(result=result)
        self.transfers_active.set(0)
        self.passive_ports_in_use.set(0)


class SupervisorMetrics:
    """The master's own series with ``--workers N`` (the workers' come with ``worker="i"``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(namespace="ftpsproxy_master", registry=self.registry)
        r = self.registry
        self.workers = Gauge("ftpsproxy_workers", "Worker processes running.", registry=r)
        self.worker_restarts = Counter(
            "ftpsproxy_worker_restarts",
            "Worker processes started again after one exited unexpectedly.",
            registry=r,
        )
        self.worker_scrape_errors = Counter(
            "ftpsproxy_worker_scrape_errors",
            "Scrapes of a worker's metrics that failed or timed out (its series are "
            "missing from that scrape), by worker.",
            ["worker"],
            registry=r,
        )
        self.workers.set(0)
