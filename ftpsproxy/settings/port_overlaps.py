"""Ports the passive range must not share: the proxy's own TCP listeners, and the kernel's.

A passive port that is also a listener's port can never be handed out (the allocator
would skip it on every pass), so that is refused at start-up.  A passive range
inside the kernel's ephemeral range (``net.ipv4.ip_local_port_range``) works until an
outgoing connection takes one of its ports; that only earns a warning, which names the
sysctl to change.  Pure code: the caller reads ``/proc``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.listeners import Listener
from ftpsproxy.settings.values import PortRange

#: Twisted's server endpoint types that listen on a TCP port given as the first argument.
_TCP_TYPES = frozenset({"tcp", "tcp6", "ssl"})
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def tcp_port(description: str) -> int | None:
    """The TCP port of an endpoint description (``tcp:2121:interface=::1``, ``tcp:port=21``).

    None for what has no TCP port to compare (``unix:``, ``systemd:``) or does not parse:
    the endpoint parser reports those, with the option's name.
    """
    kind, *arguments = _UNESCAPED_COLON.split(Listener.of(description).endpoint)
    if kind not in _TCP_TYPES:
        return None
    positional = [each for each in arguments if "=" not in each]
    keywords = dict(each.split("=", 1) for each in arguments if "=" in each)
    text = keywords.get("port", positional[0] if positional else "")
    return int(text) if text.isdigit() else None


def check_passive_overlaps(passive_ports: PortRange, listeners: Iterable[tuple[str, str]]) -> None:
    """Refuse a passive range that holds the port of a listener, given as (option, endpoint)."""
    for option, description in listeners:
        port = tcp_port(description)
        if port is not None and passive_ports.low <= port <= passive_ports.high:
            raise ConfigError(
                f"passive-ports: {passive_ports.low}-{passive_ports.high} includes port "
                f"{port} of {option} {description}"
            )


def _reserved(text: str) -> list[tuple[int, int]]:
    """``ip_local_reserved_ports`` (``"30000-30099,40000"``) as (low, high) pairs."""
    ranges = []
    for item in text.replace(",", " ").split():
        low, _, high = item.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            ranges.append((int(low), int(high or low)))
    return ranges


def ephemeral_overlap_warning(
    passive_ports: PortRange, port_range_text: str, reserved_text: str = ""
) -> str | None:
    """The warning for a passive range the kernel may hand to outgoing connections, or None.

    *port_range_text* is ``/proc/sys/net/ipv4/ip_local_port_range`` (``"32768\\t60999"``),
    *reserved_text* ``ip_local_reserved_ports``: reserved ports are never ephemeral.
    """
    bounds = port_range_text.split()
    if len(bounds) != 2 or not all(each.isdigit() for each in bounds):
        return None
    ephemeral_low, ephemeral_high = int(bounds[0]), int(bounds[1])
    reserved = _reserved(reserved_text)
    exposed = [
        port
        for port in range(
            max(passive_ports.low, ephemeral_low), min(passive_ports.high, ephemeral_high) + 1
        )
        if not any(low <= port <= high for low, high in reserved)
    ]
    if not exposed:
        return None
    wanted = f"{passive_ports.low}-{passive_ports.high}"
    return (
        f"passive-ports {wanted} lies in the kernel's ephemeral port range "
        f"{ephemeral_low}-{ephemeral_high}: outgoing connections may take passive ports. "
        f"Reserve them (sysctl -w net.ipv4.ip_local_reserved_ports={wanted}), move the "
        f"ephemeral range (sysctl -w net.ipv4.ip_local_port_range=...), or choose "
        f"passive-ports below {ephemeral_low}"
    )
