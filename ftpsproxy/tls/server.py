"""Server-side TLS for the client-facing control and data connections.

One :class:`SSL.Context` serves a listener's control connections and the data
connections of their sessions, so the session cache is shared and clients that
resume the control session on data connections (curl, lftp, FileZilla) succeed.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import ClientCertificates, TLSVersion

_VERSIONS = {TLSVersion.V1_2: SSL.TLS1_2_VERSION, TLSVersion.V1_3: SSL.TLS1_3_VERSION}
_SESSION_ID_CONTEXT = b"ftpsproxy"
#: TLS 1.2 suites offered unless --tls-ciphers says otherwise: forward secrecy (ECDHE)
#: and AEAD only, Mozilla's "intermediate" profile without its DHE suites (slower than
#: ECDHE, and their DH group would be ours to choose).  OpenSSL's default also accepts
#: static-RSA key exchange and CBC with SHA-1 MACs, which scanners flag.  TLS 1.3 suites
#: are OpenSSL's own: all AEAD, all forward-secret.  An ECDSA certificate gets the ECDSA
#: suites, an RSA one the RSA suites.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server-side TLS connections from one shared context.

    Implements Twisted's ``IOpenSSLServerConnectionCreator``, so it can be given
    to ``transport.startTLS`` (explicit FTPS) and ``TLSMemoryBIOFactory`` (implicit
    FTPS and data connections) alike.
    """

    def __init__(self, context: SSL.Context, description: str) -> None:
        self.context = context
        self.description = description

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Hands each new connection to the current :class:`ServerTLS`; a reload replaces it.

    Sessions keep the ``ServerTLS`` they started with for their data connections,
    so resumption keeps working across a reload.
    """

    def __init__(self, current: ServerTLS) -> None:
        self.current = current

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self.current.serverConnectionForTLS(protocol)


def failure_reason(reason: Failure) -> str:
    """A fixed label for why a connection ended before its TLS handshake completed."""
    if reason.check(SSL.Error):
        text = reason.getErrorMessage()
        return "verification" if "certificate" in text else "protocol"
    if reason.check(TimeoutError):
        return "timeout"
    return "closed"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read: {error.strerror}") from error


def _check_certificate(path: Path, pem: bytes) -> None:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise ConfigError(f"certificate {path}: not a PEM certificate") from error
    now = datetime.datetime.now(datetime.UTC)
    leaf = certificates[0]
    if leaf.not_valid_after_utc < now:
        raise ConfigError(f"certificate {path}: expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise ConfigError(f"certificate {path}: not valid before {leaf.not_valid_before_utc}")


def load_server_tls(
    certificate: Path,
    private_key: Path,
    *,
    minimum_version: TLSVersion = TLSVersion.V1_2,
    ciphers: str | None = None,
    client_ca: Path | None = None,
    client_certificate: ClientCertificates = ClientCertificates.NONE,
) -> ServerTLS:
    """Build the server context, failing with a one-line :class:`ConfigError` naming the file."""
    if minimum_version not in _VERSIONS:
        raise ConfigError(f"tls-minimum-version: {minimum_version!r} is not one of 1.2, 1.3")
    _check_certificate(certificate, _read(certificate, "certificate"))
    _read(private_key, "private key")
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(_VERSIONS[minimum_version])
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # Idle sessions keep no TLS buffers: matters with thousands of idle clients.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        context.set_cipher_list((ciphers or DEFAULT_CIPHERS).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as error:
        raise ConfigError(f"tls-ciphers: {ciphers!r} selects no usable cipher") from error
    try:
        context.use_certificate_chain_file(str(certificate))
    except SSL.Error as error:
        raise ConfigError(f"certificate {certificate}: unusable: {error}") from error
    try:
        context.use_privatekey_file(str(private_key))
    except SSL.Error as error:
        if "mismatch" in str(error):
            raise ConfigError(
                f"private key {private_key}: does not match certificate {certificate}"
            ) from error
        raise ConfigError(f"private key {private_key}: unusable: {error}") from error
    try:
        context.check_privatekey()
    except SSL.Error as error:
        raise ConfigError(
            f"private key {private_key}: does not match certificate {certificate}"
        ) from error
    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    if client_ca is not None and client_certificate != ClientCertificates.NONE:
        _read(client_ca, "client CA")
        try:
            context.load_verify_locations(str(client_ca))
            context.load_client_ca(str(client_ca).encode())
        except SSL.Error as error:
            raise ConfigError(f"client-ca {client_ca}: unusable: {error}") from error
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if client_certificate == ClientCertificates.REQUIRED:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode, _chain_ok)
    return ServerTLS(context, f"{certificate}")


def _chain_ok(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """OpenSSL's own chain verdict: a presented client certificate must chain to client-ca."""
    return bool(ok)


def certificate_names(certificate: crypto.X509) -> tuple[str, list[str]]:
    """The subject (for logs) and the names a user may match: CN, DNS and e-mail SANs."""
    cert = certificate.to_cryptography()
    names = [
        str(attribute.value)
        for attribute in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    return cert.subject.rfc4514_string(), names
