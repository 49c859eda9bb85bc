"""Every private part of pyOpenSSL that ftpsproxy uses, and only here.

pyOpenSSL does not say whether a handshake resumed a session, nor what an X.509
verification error code means.  Both are one OpenSSL call away through
``OpenSSL._util.lib`` (cryptography's cffi binding of libssl, which pyOpenSSL uses
itself) and a connection's private ``_ssl`` pointer: names either project may change in
any release.  :func:`problems` checks them against what is installed, and
``tests/test_internals.py`` fails, naming the internal and the versions, when one has
changed; ``pyproject.toml`` bounds pyOpenSSL and cryptography to the releases that
test passed on.  At run time a missing binding degrades (no resumption seen, a bare
error number), it does not stop the proxy.

Twisted's private parts have their fence in ``net/twisted_internals.py``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from OpenSSL import SSL

__all__ = ["problems", "session_reused", "verify_error_text"]

_lib: Any
_ffi: Any
try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # reported by problems()
    _ffi = _lib = None


def session_reused(connection: SSL.Connection) -> bool:
    """Whether *connection*'s handshake resumed a session (``SSL_session_reused``)."""
    try:
        return bool(_lib.SSL_session_reused(connection._ssl))
    except AttributeError:  # the binding or the pointer is gone: see problems()
        return False


def verify_error_text(code: int) -> str:
    """OpenSSL's text for X.509 verification error *code* (``certificate has expired``)."""
    try:
        text = _ffi.string(_lib.X509_verify_cert_error_string(code))
        return str(text.decode("ascii", "replace"))
    except Exception:  # the binding is gone: see problems()
        return f"certificate verify error {code}"


def problems() -> list[str]:
    """What no longer holds of the internals above in the installed pyOpenSSL (empty: all)."""
    versions = f"pyOpenSSL {version('pyOpenSSL')}, cryptography {version('cryptography')}"
    fence = "see ftpsproxy/tls/openssl_internals.py"
    if _lib is None or _ffi is None:
        return [
            f"{versions}: OpenSSL._util.lib/ffi cannot be imported, "
            f"but ftpsproxy uses them ({fence})"
        ]
    found = []
    for name, use in (
        ("SSL_session_reused", "session_reused(): did a data connection resume its TLS session"),
        ("X509_verify_cert_error_string", "verify_error_text(): why a backend certificate failed"),
    ):
        if not callable(getattr(_lib, name, None)):
            found.append(
                f"{versions}: OpenSSL._util.lib.{name} is gone, but ftpsproxy's {use} "
                f"needs it ({fence})"
            )
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    if not hasattr(connection, "_ssl"):
        found.append(
            f"{versions}: OpenSSL.SSL.Connection._ssl (the SSL* pointer) is gone; "
            f"ftpsproxy's session_reused() needs it ({fence})"
        )
    return found
