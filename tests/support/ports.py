"""Free loopback ports for test servers.

There is an unavoidable race between finding a port and the server binding it; the
random bases keep collisions between concurrent test processes unlikely. Within one
process a passive range is handed out once only: servers bind their passive ports
lazily, so a range that looks free may already belong to a running backend.
"""

from __future__ import annotations

import random
import socket


def _ephemeral_low(default: int = 32768) -> int:
    """The first port of the kernel's ephemeral range (outgoing connections take those)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# Passive ranges come from below the ephemeral ports, so that no connection the tests
# (or the proxy's own backend connections) open can take a port inside one.
_LOW = 10000
_HIGH = max(_LOW + 5000, _ephemeral_low())
_MAX_TRIES = 200
# Every range handed out in this process: never handed out again, free or not.
_handed_out: set[int] = set()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _can_bind(port: int, host: str) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port the kernel says is free on ``host`` right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_range(count: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """Return ``(first, last)`` of ``count`` contiguous ports that are all free on ``host``.

    Passive-port ranges must be contiguous, which the kernel's ephemeral allocator
    cannot give us, so try random bases in a range away from the ephemeral ports.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    if count > _HIGH - _LOW:
        raise ValueError(f"count {count} too large")
    rng = random.Random()
    for _ in range(_MAX_TRIES):
        base = rng.randrange(_LOW, _HIGH - count + 1)
        ports = range(base, base + count)
        if _handed_out.isdisjoint(ports) and all(_can_bind(port, host) for port in ports):
            _handed_out.update(ports)
            return base, base + count - 1
    raise RuntimeError(f"no {count} contiguous free ports on {host} after {_MAX_TRIES} tries")


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ``::1`` (containers often have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
