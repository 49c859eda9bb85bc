"""A factory for a protocol that already exists: data connections are built before they connect."""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Protocol


class PrebuiltFactory(ClientFactory):
    """Hands out one already-built protocol (to an endpoint, a listener, or a TLS wrapper)."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol
