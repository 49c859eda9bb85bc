"""The PROXY protocol settings, applied: who may send a header, how long it may take, and
which address a ``227`` announces when the header says where the client connected to."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from ftpsproxy.net.proxy_header import TrustedNetworks
from ftpsproxy.observe.metrics import Metrics
from ftpsproxy.observe.proxy_headers import ProxyHeaderEvents
from ftpsproxy.settings.config import Config


class ConfiguredHeaderRules:
    """``HeaderRules`` (:mod:`ftpsproxy.net.proxy_protocol`) from the running configuration:
    a SIGHUP that changes ``--proxy-protocol-from`` applies to the next connection.

    The header shares the TLS handshake's timeout: both are the preamble a connection
    owes before its first FTP byte, and a balancer sends the header in its first packet.
    """

    def __init__(
        self, config: Callable[[], Config], metrics: Metrics, clock: IReactorTime, channel: str
    ) -> None:
        self._config = config
        self._events = ProxyHeaderEvents(metrics, clock, channel)
        self._networks: tuple[str, ...] = ()
        self._trusted = TrustedNetworks(())

    @property
    def timeout(self) -> float:
        return self._config().tls_handshake_timeout

    def trusts(self, host: str) -> bool:
        networks = self._config().proxy_protocol_from
        if networks != self._networks:
            self._networks, self._trusted = networks, TrustedNetworks(networks)
        return self._trusted.trusts(host)

    def refused(self, reason: str, peer: str) -> None:
        self._events.refused(reason, peer)

    def health_check(self, peer: str) -> None:
        self._events.health_check(peer)


def announced_host(config: Config, local_host: str, proxied_destination: str | None) -> str:
    """The IPv4 address a ``227`` names: the PROXY header's destination when so configured
    (a balancer with several public addresses), else ``--public-address``, else the address
    the connection came in on."""
    if config.public_address_from_proxy_header and proxied_destination is not None:
        if ipaddress.ip_address(proxied_destination).version == 4:
            return proxied_destination
    return config.public_address or local_host
