"""A throwaway PKI for TLS tests, generated with ``cryptography``.

Every test session makes its own CA, so no real or shared key material is ever needed.
Keys are RSA 2048 by default because every FTP server we test against accepts them
(ProFTPD's ``TLSRSACertificateFile``, vsftpd's ``rsa_cert_file``); EC P-256 is an option.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_SERVER_SANS: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


@dataclass(frozen=True)
class Pki:
    """Paths (PEM) of one CA and of the localhost server certificate it signed.

    ``server_combined`` holds certificate then key in one file, for servers such as
    Pure-FTPd that want them together.
    """

    directory: Path
    key_type: KeyType
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_combined: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _days(n: int) -> datetime.timedelta:
    return datetime.timedelta(days=n)


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ftpsproxy tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_key(key: PrivateKey, path: Path) -> None:
    path.write_bytes(_key_pem(key))
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key_usage(*, ca: bool, key_type: KeyType) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and key_type == "rsa",
        data_encipherment=False,
        key_agreement=not ca and key_type == "ec",
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(pki: Pki) -> tuple[x509.Certificate, PrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"unexpected CA key type {type(key).__name__}")
    return cert, key


def _make_ca(common_name: str, key_type: KeyType) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key(key_type)
    now = _now()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Wider than any leaf it signs, including the expired one.
        .not_valid_before(now - _days(30))
        .not_valid_after(now + _days(60))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, key_type=key_type), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    pki_key_type: KeyType,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    *,
    server: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key(pki_key_type)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, key_type=pki_key_type), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(_SERVER_SANS), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _safe_stem(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "x"


def make_pki(directory: Path, ca_name: str = "ftpsproxy test CA", key_type: KeyType = "rsa") -> Pki:
    """Create a fresh CA and a server certificate for localhost/127.0.0.1/::1 in ``directory``.

    Each call makes an independent CA, so two calls give PKIs that do not trust each other.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(ca_name, key_type)
    now = _now()
    server_cert, server_key = _issue(
        key_type,
        ca_cert,
        ca_key,
        "localhost",
        server=True,
        not_before=now - _days(1),
        not_after=now + _days(30),
    )
    pki = Pki(
        directory=directory,
        key_type=key_type,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        server_combined=directory / "server-combined.pem",
    )
    _write_cert(ca_cert, pki.ca_cert)
    _write_key(ca_key, pki.ca_key)
    _write_cert(server_cert, pki.server_cert)
    _write_key(server_key, pki.server_key)
    pki.server_combined.write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM) + _key_pem(server_key)
    )
    pki.server_combined.chmod(0o600)
    return pki


def make_client_cert(pki: Pki, directory: Path, common_name: str) -> tuple[Path, Path]:
    """Issue a client-auth certificate from ``pki``'s CA; returns ``(cert, key)`` paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    cert, key = _issue(
        pki.key_type,
        ca_cert,
        ca_key,
        common_name,
        server=False,
        not_before=now - _days(1),
        not_after=now + _days(30),
    )
    stem = _safe_stem(common_name)
    cert_path = directory / f"client-{stem}.pem"
    key_path = directory / f"client-{stem}.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def make_expired_server_cert(pki: Pki, directory: Path) -> tuple[Path, Path]:
    """Issue a localhost server certificate from ``pki``'s CA that expired yesterday.

    Lets tests prove that certificate validation is really switched on; returns
    ``(cert, key)`` paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    cert, key = _issue(
        pki.key_type,
        ca_cert,
        ca_key,
        "localhost",
        server=True,
        not_before=now - _days(10),
        not_after=now - _days(1),
    )
    cert_path = directory / "server-expired.pem"
    key_path = directory / "server-expired.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path
