"""Client-side TLS towards FTPS backends: verification, and session reuse on data connections.

One :class:`BackendSessionTLS` exists per backend session, with a context of its
own.  Every data connection resumes the TLS session of the control connection,
taken just before the data connection is made: with TLS 1.3 the session tickets
arrive after the handshake, so a session taken earlier may not be resumable.
Strict servers (vsftpd ``require_ssl_reuse``, ProFTPD mod_tls) refuse data
connections that do not resume.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import TLSVersion
from ftpsproxy.tls.openssl_internals import verify_error_text

_VERSIONS = {TLSVersion.V1_2: SSL.TLS1_2_VERSION, TLSVersion.V1_3: SSL.TLS1_3_VERSION}


@dataclass(frozen=True, slots=True)
class BackendTLSSettings:
    """How to speak TLS to the backend; built once at start-up from the configuration."""

    server_name: str  # what the certificate must name: the URL's host, or an override
    ca_file: Path | None = None  # None: the system trust store
    insecure: bool = False  # no verification at all (logged at start-up)
    client_certificate: Path | None = None
    client_key: Path | None = None
    minimum_version: TLSVersion = TLSVersion.V1_2
    maximum_version: TLSVersion | None = None  # cap, for servers that fail TLS 1.3 resumption

    def validate(self) -> None:
        """Fail at start-up, naming the file, rather than on the first session."""
        BackendSessionTLS(self)


@implementer(IOpenSSLClientConnectionCreator)
class BackendSessionTLS:
    """The TLS side of one backend session: its context, its control connection's session."""

    def __init__(self, settings: BackendTLSSettings) -> None:
        self.settings = settings
        self.failure: str | None = None  # why the last verification failed, for logs and replies
        self._control: SSL.Connection | None = None
        self._context = self._make_context()
        try:
            self._identity: DNS_ID | IPAddress_ID = IPAddress_ID(
                str(ipaddress.ip_address(settings.server_name))
            )
            self._sni: bytes | None = None
        except ValueError:
            self._identity = DNS_ID(settings.server_name)
            self._sni = settings.server_name.encode("idna")

    def _make_context(self) -> SSL.Context:
        settings = self.settings
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(_VERSIONS[settings.minimum_version])
        if settings.maximum_version is not None:
            context.set_max_proto_version(_VERSIONS[settings.maximum_version])
        context.set_options(SSL.OP_NO_COMPRESSION)
        # OpenSSL's default cipher list, unlike the client-facing side (tlsconfig.py):
        # the backend is often an old server on the inside with only static-RSA or CBC
        # suites that must stay reachable; this leg does not face the internet.

        # Sessions are kept by hand (the control connection's).  OpenSSL's client-side
        # cache must stay off: with it, the control session stopped being offered
        # after its first use on a data connection (seen with vsftpd and ProFTPD,
        # TLS 1.3), and strict servers refused the next data connection.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if settings.insecure:
            context.set_verify(SSL.VERIFY_NONE)
        else:
            if settings.ca_file is not None:
                try:
                    context.load_verify_locations(str(settings.ca_file))
                except SSL.Error as error:
                    raise ConfigError(
                        f"backend-ca {settings.ca_file}: unusable: {error}"
                    ) from error
            else:
                context.set_default_verify_paths()
            context.set_verify(SSL.VERIFY_PEER, self._verify)
        if settings.client_certificate is not None:
            key = settings.client_key or settings.client_certificate
            try:
                context.use_certificate_chain_file(str(settings.client_certificate))
            except SSL.Error as error:
                raise ConfigError(
                    f"backend-client-certificate {settings.client_certificate}: unusable: {error}"
                ) from error
            try:
                context.use_privatekey_file(str(key))
                context.check_privatekey()
            except SSL.Error as error:
                raise ConfigError(
                    f"backend-client-key {key}: unusable or does not match the certificate"
                ) from error
        return context

    def _verify(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            self.failure = f"certificate verification failed: {verify_error_text(error)}"
            return False
        if depth != 0:
            return True
        try:
            verify_service_identity(extract_patterns(certificate), [self._identity], [])
        except VerificationError:
            self.failure = f"certificate does not match {self.settings.server_name}"
            return False
        except Exception as error:  # a certificate service-identity cannot read
            self.failure = f"certificate unusable: {error}"
            return False
        return True

    def _connection(self) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection

    def clientConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """The control connection (the first TLS connection of the session)."""
        self._control = self._connection()
        return self._control

    def for_data(self) -> DataConnectionTLS:
        """A creator for one data connection, resuming the control session as it is now.

        Taken just before each data connection: TLS 1.3 tickets arrive after the
        control handshake.  The same control session serves every data connection,
        as curl, lftp and Python's ``ssl`` do.
        """
        session = _session_of(self._control) if self._control is not None else None
        return DataConnectionTLS(self, session)


@implementer(IOpenSSLClientConnectionCreator)
class DataConnectionTLS:
    def __init__(self, owner: BackendSessionTLS, session: SSL.Session | None) -> None:
        self._owner = owner
        self._session = session

    def clientConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._owner._connection()
        if self._session is not None:
            connection.set_session(self._session)
        return connection


def _session_of(connection: SSL.Connection) -> SSL.Session | None:
    try:
        return connection.get_session()
    except SSL.Error:
        return None
