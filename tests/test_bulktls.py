"""BulkTLSProtocol: the same bytes, order and closes as Twisted's TLS, in fewer, larger pieces.

Both ends run in memory (``twisted.test.iosim``), against Twisted's own
``TLSMemoryBIOProtocol`` on the other side, in both roles.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from ftpsproxy.tls.bulk import BulkTLSFactory, BulkTLSProtocol
from tests.support.certs import Pki

# Twisted's PrivateCertificate hands pyOpenSSL its legacy X509/PKey objects.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@implementer(IHandshakeListener)
class Collector(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None
        self.handshake_done = False

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


def _pair(
    pki: Pki, bulk_server: bool, *, tls12: bool = False, greet: bool = True
) -> tuple[Collector, Collector, IOPump, object, object]:
    """A TLS server and client in memory: one bulk, the other Twisted's stock protocol."""
    identity = PrivateCertificate.loadPEM(pki.server_cert.read_text() + pki.server_key.read_text())
    server_options = CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        lowerMaximumSecurityTo=TLSVersion.TLSv1_2 if tls12 else None,
    )
    client_options = optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(pki.ca_cert.read_bytes())
    )
    server_app, client_app = Collector(), Collector()
    server_kind = BulkTLSFactory if bulk_server else TLSMemoryBIOFactory
    client_kind = TLSMemoryBIOFactory if bulk_server else BulkTLSFactory
    server = server_kind(server_options, False, Factory.forProtocol(lambda: server_app))
    client = client_kind(client_options, True, Factory.forProtocol(lambda: client_app))
    server_tls = server.buildProtocol(None)
    client_tls = client.buildProtocol(None)
    pump = connect(
        server_tls,
        FakeTransport(server_tls, isServer=True),
        client_tls,
        FakeTransport(client_tls, isServer=False),
        greet=greet,
    )
    return server_app, client_app, pump, server_tls, client_tls


@pytest.mark.parametrize("bulk_server", [True, False])
def test_large_writes_arrive_whole_both_ways_and_close_cleanly(pki: Pki, bulk_server: bool) -> None:
    server_app, client_app, pump, server_tls, client_tls = _pair(pki, bulk_server)
    bulk_app = server_app if bulk_server else client_app
    stock_app = client_app if bulk_server else server_app
    bulk_tls = server_tls if bulk_server else client_tls
    assert isinstance(bulk_tls, BulkTLSProtocol)
    down = os.urandom(3 * 1024 * 1024 + 17)
    up = os.urandom(1024 * 1024 + 5)
    pump.flush()  # the handshake
    socket_writes: list[int] = []
    socket_write = bulk_tls.transport.write  # type: ignore[attr-defined]

    def counted(data: bytes) -> None:
        socket_writes.append(len(data))
        socket_write(data)

    bulk_tls.transport.write = counted  # type: ignore[attr-defined]
    bulk_app.transport.write(down[:100])  # type: ignore[union-attr]
    bulk_app.transport.write(down[100:])  # type: ignore[union-attr]
    # One write of TLS records to the socket per application write (Twisted: one per record).
    assert len(socket_writes) == 2, socket_writes
    stock_app.transport.write(up)  # type: ignore[union-attr]
    for _ in range(200):
        if not pump.pump():
            break
    assert hashlib.sha256(stock_app.data).digest() == hashlib.sha256(down).digest()
    assert bulk_app.data == up
    bulk_app.transport.loseConnection()  # type: ignore[union-attr]
    for _ in range(50):
        if not pump.pump():
            break
    assert bulk_app.lost is not None and bulk_app.lost.check(ConnectionDone)
    assert stock_app.lost is not None and stock_app.lost.check(ConnectionDone)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 70_000), min_size=1, max_size=12))
def test_any_sequence_of_writes_arrives_in_order(pki: Pki, sizes: list[int]) -> None:
    server_app, client_app, pump, _, _ = _pair(pki, bulk_server=True)
    chunks = [os.urandom(size) for size in sizes]
    for chunk in chunks:
        server_app.transport.write(chunk)  # type: ignore[union-attr]
        pump.pump()
    for _ in range(100):
        if not pump.pump():
            break
    assert client_app.data == b"".join(chunks)


def _record_writes(tls: object, app: Collector) -> list[tuple[bool, int]]:
    """Every socket write of *tls*: (was the handshake over for *app*, size)."""
    writes: list[tuple[bool, int]] = []
    transport = tls.transport  # type: ignore[attr-defined]
    socket_write = transport.write

    def recorded(data: bytes) -> None:
        writes.append((app.handshake_done, len(data)))
        socket_write(data)

    transport.write = recorded
    return writes


def _pump_all(pump: IOPump) -> None:
    for _ in range(200):
        if not pump.pump():
            break


def test_tls13_server_sends_nothing_after_the_handshake_until_the_upload_ends(pki: Pki) -> None:
    """Go and Java clients never read an upload's data connection: TLS 1.3 session tickets
    left unread there make Linux answer their close with RST, and the upload's tail is lost.
    The proxy's side sends them only with its close_notify, after the whole upload."""
    server_app, client_app, pump, server_tls, client_tls = _pair(pki, True, greet=False)
    writes = _record_writes(server_tls, server_app)
    pump.flush()  # the handshake
    assert server_app.handshake_done and client_app.handshake_done
    assert client_tls.getHandle().get_protocol_version_name() == "TLSv1.3"  # type: ignore[attr-defined]
    assert not any(after for after, _ in writes)  # nothing since the handshake ended
    upload = os.urandom(2 * 1024 * 1024 + 3)
    client_app.transport.write(upload)  # type: ignore[union-attr]
    _pump_all(pump)
    assert not any(after for after, _ in writes), writes  # still nothing for the client to read
    assert server_app.data == upload
    client_app.transport.loseConnection()  # type: ignore[union-attr]
    _pump_all(pump)
    # The client's close_notify made the server answer: the held tickets, then its own.
    assert any(after for after, _ in writes)
    assert server_app.lost is not None and server_app.lost.check(ConnectionDone)
    assert client_app.lost is not None and client_app.lost.check(ConnectionDone)


def test_tls13_download_gets_the_held_tickets_before_its_data(pki: Pki) -> None:
    """Held output keeps its place in the record stream: a reading client decrypts it all."""
    server_app, client_app, pump, server_tls, client_tls = _pair(pki, True, greet=False)
    writes = _record_writes(server_tls, server_app)
    pump.flush()
    assert not any(after for after, _ in writes)
    download = os.urandom(300_001)
    server_app.transport.write(download)  # type: ignore[union-attr]
    _pump_all(pump)
    assert client_app.data == download
    session = client_tls.getHandle().get_session()  # type: ignore[attr-defined]
    assert session is not None  # a ticket arrived and was read
    server_app.transport.loseConnection()  # type: ignore[union-attr]
    _pump_all(pump)
    assert client_app.lost is not None and client_app.lost.check(ConnectionDone)


def test_tls12_handshake_is_not_held(pki: Pki) -> None:
    """Under TLS 1.2 the server's last flight is part of the handshake: it goes at once."""
    server_app, client_app, pump, _, client_tls = _pair(pki, bulk_server=True, tls12=True)
    pump.flush()
    assert client_app.handshake_done
    assert client_tls.getHandle().get_protocol_version_name() == "TLSv1.2"  # type: ignore[attr-defined]
    # (Twisted's stock side holds small writes back for a reactor turn: write large ones.)
    up, down = os.urandom(100_000), os.urandom(100_001)
    client_app.transport.write(up)  # type: ignore[union-attr]
    server_app.transport.write(down)  # type: ignore[union-attr]
    _pump_all(pump)
    assert (server_app.data, client_app.data) == (up, down)


def test_the_server_side_reads_the_clients_close_notify(pki: Pki) -> None:
    """The info callback sees the close_notify alert: with it an error OpenSSL reports
    next (OpenSSL 4 after Java's user_canceled + close_notify) still ends cleanly."""
    server_app, client_app, pump, server_tls, _ = _pair(pki, True)
    pump.flush()
    assert not server_tls._close_notify_read  # type: ignore[attr-defined]
    client_app.transport.loseConnection()  # type: ignore[union-attr]
    _pump_all(pump)
    assert server_tls._close_notify_read  # type: ignore[attr-defined]
    assert server_app.lost is not None and server_app.lost.check(ConnectionDone)
