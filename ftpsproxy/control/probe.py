"""One backend probe: set up a backend session exactly as a login would, then ``QUIT``.

A TCP connect alone says nothing about a wrong ``--backend-ca``, a server that accepts
and never greets, or one that greets with ``421``: every login would fail while the
proxy reports ready.  So the probe goes through :meth:`BackendConnector.control` (connect,
the ``220`` greeting, for FTPS backends ``AUTH TLS`` or implicit TLS with the session's
verification, ``PBSZ``/``PROT``) within ``--backend-connect-timeout``, says ``QUIT`` and
closes.  Only the I/O is here; what the result means is ``probe_outcome.py``.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ftpsproxy.control.backend import BackendControl, BackendLoss
from ftpsproxy.control.probe_outcome import ProbeOutcome, probe_failed, probe_succeeded
from ftpsproxy.ftp.replies import Reply
from ftpsproxy.settings.config import BackendAddress


class ControlConnector(TypingProtocol):
    """What a probe needs from a backend connector (one per backend of a pool, later)."""

    address: BackendAddress
    timeout: float

    def control(self) -> Deferred[BackendControl]: ...


def probe_backend(connector: ControlConnector, clock: IReactorTime) -> Deferred[ProbeOutcome]:
    """Probe once; the Deferred always fires with an outcome, never fails.

    It fires once the backend has answered ``QUIT`` (or closed, or not answered within the
    timeout); the close that follows is bounded by the same timeout.
    """
    outcome: Deferred[ProbeOutcome] = Deferred()

    def ready(control: BackendControl) -> None:
        result = probe_succeeded(control.tls_version)
        control.watch_replies(clock, connector.timeout, connector.timeout)

        def finish() -> None:
            if not outcome.called:
                control.close()
                outcome.callback(result)

        def answered(reply: Reply) -> None:
            finish()

        def lost(kind: BackendLoss, why: str) -> None:
            finish()

        control.on_lost = lost
        control.request(b"QUIT\r\n", answered)

    def failed(reason: Failure) -> None:
        outcome.callback(probe_failed(reason.value or Exception(reason.getErrorMessage())))

    connector.control().addCallbacks(ready, failed)
    return outcome
