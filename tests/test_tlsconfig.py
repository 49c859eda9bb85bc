"""The client-facing TLS context: which TLS 1.2 suites it accepts, tried one by one in memory."""

from __future__ import annotations

import re

import pytest
from OpenSSL import SSL

from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.tls.server import DEFAULT_CIPHERS, load_server_tls
from tests.support.certs import Pki, make_pki

# Forward secrecy (ephemeral (EC)DH) and an AEAD cipher; the hash after it is the PRF's.
GOOD = re.compile(r"^(ECDHE|DHE)-(RSA|ECDSA)-(AES(128|256)-(GCM|CCM)|CHACHA20-POLY1305)")


def _tls12_suites() -> list[str]:
    """Every TLS 1.2 suite this OpenSSL knows, weak ones included."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_cipher_list(b"ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return [name for name in SSL.Connection(context).get_cipher_list() if "_" not in name]


def _pump(a: SSL.Connection, b: SSL.Connection) -> bool:
    moved = False
    for source, sink in ((a, b), (b, a)):
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            continue
        sink.bio_write(data)
        moved = moved or bool(data)
    return moved


def _handshake(server: SSL.Context, client: SSL.Context) -> SSL.Connection | None:
    """The client's connection after a completed handshake in memory, or None if refused."""
    client_conn = SSL.Connection(client, None)
    client_conn.set_connect_state()
    server_conn = SSL.Connection(server, None)
    server_conn.set_accept_state()
    while True:
        done = True
        for connection in (client_conn, server_conn):
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                done = False
            except SSL.Error:
                return None
        if not _pump(client_conn, server_conn):
            return client_conn if done else None


def _accepted_tls12(server: SSL.Context) -> list[str]:
    accepted = []
    for name in _tls12_suites():
        client = SSL.Context(SSL.TLS_METHOD)
        client.set_max_proto_version(SSL.TLS1_2_VERSION)
        client.set_cipher_list(f"{name}:@SECLEVEL=0".encode())
        connection = _handshake(server, client)
        if connection is not None:
            assert connection.get_cipher_name() == name
            accepted.append(name)
    return accepted


@pytest.fixture(scope="module")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ec-pki"), key_type="ec")


def test_the_probe_offers_weak_suites_too() -> None:
    suites = _tls12_suites()
    assert len(suites) >= 30
    assert {"AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"} <= set(suites)


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_default_tls12_suites_are_forward_secret_aead_only(
    key_type: str, pki: Pki, ec_pki: Pki
) -> None:
    certs = pki if key_type == "rsa" else ec_pki
    server = load_server_tls(certs.server_cert, certs.server_key)
    accepted = _accepted_tls12(server.context)
    print(key_type, ":".join(accepted))
    algorithm = "RSA" if key_type == "rsa" else "ECDSA"
    assert len(accepted) >= 2, accepted
    for name in accepted:
        assert GOOD.match(name), name
        assert f"-{algorithm}-" in name, name
        assert "CBC" not in name and not name.endswith("-SHA"), name
    assert set(accepted) <= set(DEFAULT_CIPHERS.split(":"))


def test_tls13_is_still_offered_with_openssl_suites(pki: Pki) -> None:
    server = load_server_tls(pki.server_cert, pki.server_key)
    connection = _handshake(server.context, SSL.Context(SSL.TLS_METHOD))
    assert connection is not None
    assert connection.get_protocol_version_name() == "TLSv1.3"
    assert connection.get_cipher_name() in {
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    }


def test_tls_ciphers_overrides_the_default(pki: Pki) -> None:
    server = load_server_tls(pki.server_cert, pki.server_key, ciphers="AES128-SHA")
    assert _accepted_tls12(server.context) == ["AES128-SHA"]


def test_tls_ciphers_that_select_nothing_are_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls-ciphers"):
        load_server_tls(pki.server_cert, pki.server_key, ciphers="NO-SUCH-SUITE")
