"""What one backend probe found: up, or down with a reason an operator can act on.

Pure: the probe's I/O (``probe.py``) hands over the backend set-up's result, and this
decides what it means for ``/readyz``, the log and the TLS failure metric.  The same
set-up errors a session gets (``BackendSetupError`` and its TLS subclass) are read
here, so a probe fails exactly when a login would.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpsproxy.control.backend import BackendSetupError, BackendTLSError
from ftpsproxy.observe.logs import printable

_REASON_LIMIT = 300  # characters: a backend's greeting text is not ours to echo at length
_TLS_PREFIX = "TLS handshake failed"


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    up: bool
    reason: str = ""  # why it is down, for /readyz and the log; empty when up
    tls_failure: str | None = None  # a tls_handshake_failures reason label when TLS failed
    tls_version: str | None = None  # negotiated with an FTPS backend, when up
    result: str = "success"  # the backend_connects_total result label: success, refused,
    # unreachable, tls or timeout


def probe_succeeded(tls_version: str | None) -> ProbeOutcome:
    return ProbeOutcome(up=True, tls_version=tls_version)


def probe_failed(error: BaseException) -> ProbeOutcome:
    """Classify why a probe's backend set-up failed."""
    if isinstance(error, BackendTLSError):
        why = str(error)
        if not why.startswith(_TLS_PREFIX):
            why = f"{_TLS_PREFIX}: {why}"
        return ProbeOutcome(up=False, reason=_reason(why), tls_failure=error.kind, result="tls")
    if isinstance(error, BackendSetupError):
        return ProbeOutcome(up=False, reason=_reason(str(error)), result=error.kind)
    return ProbeOutcome(up=False, reason=_reason(f"unreachable: {error}"), result="unreachable")


def _reason(text: str) -> str:
    """No control characters (a log line and an HTTP body), bounded length."""
    return printable(text, _REASON_LIMIT)
