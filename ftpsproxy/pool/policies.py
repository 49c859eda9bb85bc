"""Balancing policies: each orders the usable backends for one new session.

The first backend is the choice, the others the failover order.  Policies see
only usable backends (up or unknown, active, below their cap), in configured
order, and never filter: the pool does that once for all of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from ftpsproxy.pool import rendezvous
from ftpsproxy.pool.roundrobin import SmoothWeightedRoundRobin
from ftpsproxy.settings.backends import Backend, Policy


@dataclass(frozen=True, slots=True)
class Request:
    """What a policy may route by: the ``USER`` argument and the client's address."""

    user: str = ""
    client: str = ""


class Balancer(Protocol):
    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]: ...

    def keep_only(self, names: set[str]) -> None: ...


class _Stateless:
    def keep_only(self, names: set[str]) -> None:
        pass


class RoundRobin:
    def __init__(self) -> None:
        self._rotation = SmoothWeightedRoundRobin()

    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]:
        return self._rotation.order(usable)

    def keep_only(self, names: set[str]) -> None:
        self._rotation.keep_only(names)


class LeastSessions:
    """Fewest sessions per unit of weight; ties rotate by weighted round robin, as nginx does.

    With ties going to the first configured backend, short sessions one after
    another would all land there.  Loads compare as exact fractions.
    """

    def __init__(self) -> None:
        self._rotation = SmoothWeightedRoundRobin()

    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]:
        if not usable:
            return []
        load = {b.name: Fraction(sessions.get(b.name, 0), b.weight) for b in usable}
        lightest = min(load.values())
        tied = [backend for backend in usable if load[backend.name] == lightest]
        first = self._rotation.order(tied)[0]
        position = {backend.name: index for index, backend in enumerate(usable)}
        rest = sorted(
            (backend for backend in usable if backend is not first),
            key=lambda backend: (load[backend.name], position[backend.name]),
        )
        return [first, *rest]

    def keep_only(self, names: set[str]) -> None:
        self._rotation.keep_only(names)


class UserHash(_Stateless):
    """The user's rendezvous ranking: the same home backend while it is up, then its next."""

    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]:
        return rendezvous.ranking(request.user, usable)


class SourceHash(_Stateless):
    """The client address's rendezvous ranking (IPv4-mapped IPv6 counts as its IPv4)."""

    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]:
        return rendezvous.ranking(canonical_address(request.client), usable)


class Priority(_Stateless):
    """Configured order: the first usable backend is active, the others stand by."""

    def order(
        self, usable: Sequence[Backend], request: Request, sessions: Mapping[str, int]
    ) -> list[Backend]:
        return list(usable)


def canonical_address(host: str) -> str:
    """One spelling per address, so a dual-stack listener does not split a client in two."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def balancer(policy: Policy) -> Balancer:
    balancers: dict[Policy, type[Balancer]] = {
        Policy.ROUND_ROBIN: RoundRobin,
        Policy.LEAST_SESSIONS: LeastSessions,
        Policy.USER_HASH: UserHash,
        Policy.SOURCE_HASH: SourceHash,
        Policy.PRIORITY: Priority,
    }
    return balancers[Policy(policy)]()
