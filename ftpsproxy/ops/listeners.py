"""Listening sockets named by the option that asked for them.

A port that cannot be bound (taken, or privileged) stops the start with one line
naming the option and the endpoint, ``listen tcp:2121:interface=127.0.0.1: address
already in use``, instead of Twisted's traceback.
"""

from __future__ import annotations

from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.python.failure import Failure

from ftpsproxy.net.twisted_internals import raise_listen_errors_at_start
from ftpsproxy.ops.start_failure import fail_start


def cannot_listen(option: str, description: str, error: CannotListenError) -> NoReturn:
    reason = error.socketError
    why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    fail_start(f"{option} {description}: {why[:1].lower()}{why[1:]}")


class OptionListener(StreamServerEndpointService):
    """A listener that fails the start, naming its option, when its port cannot be bound."""

    def __init__(
        self, option: str, description: str, endpoint: Any, factory: IProtocolFactory
    ) -> None:
        super().__init__(endpoint, factory)
        self.option = option
        self.description = description
        raise_listen_errors_at_start(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            cannot_listen(self.option, self.description, error)


def listen_now(option: str, description: str, endpoint: Any, factory: IProtocolFactory) -> Any:
    """Listen on *endpoint* at once (stream endpoints bind synchronously): the port, or
    a failed start naming *option*."""
    results: list[Any] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        fail_start(f"{option} {description}: did not bind at once")
    if isinstance(results[0], Failure):
        error = results[0].value
        if isinstance(error, CannotListenError):
            cannot_listen(option, description, error)
        results[0].raiseException()
    return results[0]
