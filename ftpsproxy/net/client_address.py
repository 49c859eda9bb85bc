"""Which clients the per-address limits count together: an IPv4 address, an IPv6 network.

An IPv6 host usually has a whole /64 to itself (SLAAC and privacy addresses; RFC 7934),
so caps and a lockout counted per /128 would let one client take a fresh address for
every session or password guess.  ``--max-sessions-per-ip``, ``--max-passive-ports-per-ip``
and the login lockout count an IPv6 client by its network of ``--ipv6-prefix-length``
bits instead (64 by default; 128 counts each address).  An IPv4-mapped IPv6 address
(``::ffff:192.0.2.7``, a dual-stack listener's view) counts as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress


def limit_key(host: str, ipv6_prefix_length: int) -> str:
    """The name the limits count *host* by (the host itself if it is not an IP address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    unscoped = ipaddress.IPv6Address(address.packed)  # fe80::1%eth0: the scope is no part
    network = ipaddress.IPv6Network((unscoped, ipv6_prefix_length), strict=False)
    return str(network.network_address) if ipv6_prefix_length == 128 else str(network)
