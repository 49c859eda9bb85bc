"""The private parts of Twisted and pyOpenSSL the proxy uses: still there, still used, fenced.

``ftpsproxy/net/twisted_internals.py`` and ``ftpsproxy/tls/openssl_internals.py`` are
the only modules that touch them. When a new Twisted, pyOpenSSL or cryptography drops or
changes one, the first two tests fail with a message naming it and the versions; the
hook test shows Twisted still calls the TLS steps the data connections change; the last
test keeps new uses from appearing elsewhere in the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet import abstract, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect

from ftpsproxy.net import twisted_internals
from ftpsproxy.net.twisted_internals import (
    Internal,
    QuietPort,
    TLSMemoryBIOHooks,
    pending_output,
    take_pending_output,
)
from ftpsproxy.tls import openssl_internals
from tests.support.certs import Pki

PACKAGE = Path(__file__).resolve().parent.parent / "ftpsproxy"
FENCES = {"net/twisted_internals.py", "tls/openssl_internals.py"}

# Twisted's PrivateCertificate hands pyOpenSSL its legacy X509/PKey objects.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_twisted_internals_are_still_there() -> None:
    problems = twisted_internals.problems()
    assert not problems, "\n".join(problems)


def test_openssl_internals_are_still_there() -> None:
    problems = openssl_internals.problems()
    assert not problems, "\n".join(problems)
    assert openssl_internals.verify_error_text(10) == "certificate has expired"
    fresh = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    assert openssl_internals.session_reused(fresh) is False


class _Old:
    """Stands for a Twisted class as ftpsproxy knew it."""

    flag = False

    def __init__(self) -> None:
        self._made = 1

    def step(self, reason: object) -> None:
        pass

    def run(self) -> None:
        self.step(None)
        if self.flag:
            pass


def _problem(internal: Internal) -> str | None:
    return twisted_internals._problem(internal)


def test_the_check_says_what_changed() -> None:
    assert _problem(Internal(_Old, "flag", "x", used_in="run")) is None
    assert _problem(Internal(_Old, "step", "x", parameters=("self", "reason"))) is None
    assert _problem(Internal(_Old, "_made", "x", set_in="__init__")) is None
    assert _problem(Internal(_Old, "gone", "x")) == "no longer exists"
    assert _problem(Internal(_Old, "step", "x", parameters=("self",))) == (
        "now takes (self, reason), not (self)"
    )
    assert _problem(Internal(_Old, "flag", "x", parameters=("self",))) == (
        "is no longer a method (it is bool)"
    )
    assert _problem(Internal(_Old, "_other", "x", set_in="__init__")) == (
        "is no longer set in __init__()"
    )
    assert _problem(Internal(_Old, "flag", "x", used_in="__init__")) == (
        "is no longer used by __init__()"
    )


def test_a_problem_names_the_internal_and_the_twisted_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = Internal(_Old, "gone", "is read: something (data/splice.py)")
    monkeypatch.setattr(twisted_internals, "INTERNALS", (gone,))
    [problem] = twisted_internals.problems()
    assert re.match(r"Twisted \d+\.\d+", problem), problem
    assert f"{__name__}._Old.gone no longer exists" in problem
    assert "data/splice.py" in problem and "twisted_internals.py" in problem


# -- the TLS hooks ----------------------------------------------------------------------------


class _Recording(TLSMemoryBIOHooks):
    """Twisted's behaviour, noting which of its private steps reached the hooks."""

    calls: list[str]

    def tls_write(self, data: object) -> None:
        self.calls.append("tls_write")
        super().tls_write(data)

    def flush_send_bio(self) -> None:
        self.calls.append("flush_send_bio")
        super().flush_send_bio()

    def shutdown_tls(self) -> None:
        self.calls.append("shutdown_tls")
        super().shutdown_tls()

    def tls_shutdown_finished(self, reason: Failure | None) -> None:
        self.calls.append("tls_shutdown_finished")
        super().tls_shutdown_finished(reason)


class _Collector(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def test_twisted_still_calls_the_tls_steps_the_hooks_replace(pki: Pki) -> None:
    identity = PrivateCertificate.loadPEM(pki.server_cert.read_text() + pki.server_key.read_text())
    server_options = CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original
    )
    client_options = optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(pki.ca_cert.read_bytes())
    )
    server_app, client_app = _Collector(), _Collector()
    server_factory = TLSMemoryBIOFactory(
        server_options, False, Factory.forProtocol(lambda: server_app)
    )
    server_factory.protocol = _Recording
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(lambda: client_app)
    )
    server = server_factory.buildProtocol(None)
    assert isinstance(server, _Recording)
    server.calls = []
    client = client_factory.buildProtocol(None)
    pump = connect(
        server, FakeTransport(server, isServer=True), client, FakeTransport(client, False)
    )
    assert server.handshake_done and server.tls_connection is not None
    assert "flush_send_bio" in server.calls  # the handshake's flights
    server_app.transport.write(b"x" * 100_000)  # type: ignore[union-attr]
    pump.flush()
    assert client_app.data == b"x" * 100_000
    assert "tls_write" in server.calls
    assert not server.tls_lost
    client_app.transport.loseConnection()  # type: ignore[union-attr]
    pump.flush()
    # The client's close_notify: Twisted answers it and ends TLS through the hooks.
    assert "shutdown_tls" in server.calls and "tls_shutdown_finished" in server.calls
    assert server_app.lost and client_app.lost
    assert server.tls_lost


# -- the write buffer -------------------------------------------------------------------------


def test_pending_output_takes_both_of_twisteds_buffers() -> None:
    descriptor = abstract.FileDescriptor(reactor=MemoryReactor())
    descriptor.connected = True
    descriptor.dataBuffer = b"0123456789"
    descriptor.offset = 4  # "0123" already sent
    descriptor.write(b"abc")  # goes to the second buffer, joined on the next doWrite
    descriptor.write(b"de")
    assert pending_output(descriptor) == 6 + 5  # type: ignore[arg-type]
    assert take_pending_output(descriptor) == b"456789abcde"  # type: ignore[arg-type]
    assert pending_output(descriptor) == 0  # type: ignore[arg-type]
    descriptor.write(b"f")
    assert take_pending_output(descriptor) == b"f"  # type: ignore[arg-type]


# -- quiet listeners --------------------------------------------------------------------------


def _lines_of_a_listener(port_class: type[tcp.Port]) -> list[str]:
    """The log lines a listener of *port_class* writes from its start to its close."""
    from twisted.internet import reactor  # not run: the close is called directly

    factory = ServerFactory()
    factory.noisy = False
    with capturedLogs() as events:
        port = port_class(0, factory, 1, "127.0.0.1", reactor)
        port.startListening()
        port.connectionLost(Failure(ConnectionDone()))
    return [text for text in map(formatEvent, events) if text]


def test_a_quiet_port_logs_no_line_where_twisted_logs_two() -> None:
    loud = _lines_of_a_listener(tcp.Port)
    assert len(loud) == 2 and "starting on" in loud[0] and "Closed" in loud[1], loud
    assert _lines_of_a_listener(QuietPort) == []


# -- nowhere else -----------------------------------------------------------------------------

#: Uses outside the fences not moved yet (none: a new one must be moved, not listed here).
NOT_MOVED_YET: set[tuple[str, str]] = set()

_TWISTED_PRIVATE = re.compile(r"^_[a-z]+[A-Z]\w*$")  # Twisted's names: _flushSendBIO...
_OPENSSL_PRIVATE = {"_ssl", "_util"}


def _private_uses(path: Path) -> set[tuple[int, str]]:
    """Private Twisted/pyOpenSSL names in *path*: attributes, overrides, getattr, imports."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names = [node.name]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            names = [node.args[1].value]
        elif isinstance(node, ast.ImportFrom) and node.module not in (None, "__future__"):
            names = [part for part in node.module.split(".") if part.startswith("_")]
        for name in names:
            if _TWISTED_PRIVATE.match(name) or name in _OPENSSL_PRIVATE:
                found.add((getattr(node, "lineno", 0), name))
    return found


def test_no_private_twisted_or_openssl_name_outside_the_fences() -> None:
    outside: list[str] = []
    allowed_seen: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in FENCES:
            continue
        for line, name in sorted(_private_uses(path)):
            if (relative, name) in NOT_MOVED_YET:
                allowed_seen.add((relative, name))
            else:
                outside.append(f"ftpsproxy/{relative}:{line}: {name}")
    assert not outside, (
        "private Twisted/pyOpenSSL names outside net/twisted_internals.py and "
        "tls/openssl_internals.py (add a helper there, declared in INTERNALS):\n"
        + "\n".join(outside)
    )
    assert allowed_seen == NOT_MOVED_YET, (
        f"moved at last: remove {sorted(NOT_MOVED_YET - allowed_seen)} from NOT_MOVED_YET"
    )
