"""Shared fixtures: a throwaway PKI, pyftpdlib backends and the proxy as a twistd process."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki, make_pki
from tests.support.ci import require
from tests.support.ports import has_ipv6_loopback
from tests.support.proxy import ProxyProcess


class MakeProxy(Protocol):
    def __call__(
        self,
        *args: str,
        ports: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ProxyProcess: ...


@pytest.fixture
def ipv6_loopback() -> None:
    """Skip a test that needs ``::1`` on a machine without it, but fail it under CI=true."""
    require(has_ipv6_loopback(), "no IPv6 loopback (::1) on this machine")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA and localhost server certificate for the whole run (keys cost time)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[Callable[..., PyftpdBackend]]:
    """Factory for running pyftpdlib backends (each with its own root); stops them all."""
    started: list[PyftpdBackend] = []
    counter = itertools.count(1)

    def _make(**kwargs: Any) -> PyftpdBackend:
        root = kwargs.pop("root", None) or tmp_path / f"backend{next(counter)}-root"
        backend = PyftpdBackend(root, **kwargs)
        started.append(backend)
        return backend.start()

    yield _make
    for backend in reversed(started):
        backend.stop()


@pytest.fixture
def backend(make_backend: Callable[..., PyftpdBackend]) -> PyftpdBackend:
    """A running plain-FTP pyftpdlib backend, user ``demo`` / ``s3cret-test-pw``."""
    return make_backend()


@pytest.fixture
def tls_backend(make_backend: Callable[..., PyftpdBackend], pki: Pki) -> PyftpdBackend:
    """A running explicit-FTPS pyftpdlib backend that requires TLS (cert from ``pki``)."""
    return make_backend(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_required=True)


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[MakeProxy]:
    """Factory: ``make_proxy(*twistd_args, ports=[...])`` -> a started proxy.

    With ``wait`` (the default) it returns once the proxy listens on every port in
    ``ports``, so pass the proxy's own listening ports there. Every proxy is stopped at
    teardown and its log printed (pytest shows it when the test fails).
    """
    started: list[ProxyProcess] = []
    counter = itertools.count(1)

    def _make(
        *args: str,
        ports: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ProxyProcess:
        proxy = ProxyProcess(args, tmp_path / f"proxy{next(counter)}", env=env)
        started.append(proxy)
        proxy.start()
        if wait:
            if not ports:
                raise ValueError("make_proxy(wait=True) needs the proxy's listening ports")
            proxy.wait_listening(ports)
        return proxy

    yield _make
    broken = []
    for proxy in reversed(started):
        code = proxy.stop()
        log = proxy.log_text()
        print(f"--- proxy {proxy.workdir.name} exit code {code} ---\n{log}")
        # Only a proxy whose bind was meant to fail (a lost port race start_proxy
        # retried, a port taken on purpose) may have a traceback: the bind error's.
        if proxy.has_unhandled_errors():
            broken.append(proxy.workdir.name)
    # Bad input must get an FTP reply and a log line, never an unhandled exception.
    assert not broken, f"unhandled exceptions in the log of {broken}"


# --- real FTP servers (vsftpd, ProFTPD, Pure-FTPd) as backends --------------------------
# Imported here, not at the top, so this section stays one self-contained block.
from tests.support import servers as _servers  # noqa: E402
from tests.support.servers import (  # noqa: E402
    SERVER_KINDS,
    TEST_PASSWORD,
    TEST_USER,
    FtpServer,
    RealFtpServer,
)

#: Backend kinds, for ``@pytest.mark.parametrize("kind", server_kinds)`` with
#: ``make_ftp_server(kind)``: ``["pyftpdlib", "vsftpd", "proftpd", "pure-ftpd"]``.
server_kinds: list[str] = list(SERVER_KINDS)


class MakeRealServer(Protocol):
    def __call__(
        self,
        kind: str,
        *,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool | None = None,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
    ) -> RealFtpServer: ...


class MakeFtpServer(Protocol):
    def __call__(
        self,
        kind: str,
        *,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool | None = None,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
    ) -> FtpServer: ...


@pytest.fixture
def make_real_server(tmp_path: Path, pki: Pki) -> Iterator[MakeRealServer]:
    """Factory: ``make_real_server("vsftpd" | "proftpd" | "pure-ftpd", ...)`` -> started.

    Defaults: explicit FTPS required on control and data with the session ``pki``'s
    certificate, TLS 1.2-1.3, TLS session reuse required on data connections where the
    server can require it (``require_reuse=None``: vsftpd and ProFTPD yes, Pure-FTPd
    cannot). Login ``server.user``/``server.password`` (``ftptest``/``s3cret-test-pw``).
    Skips when the server is not installed (fails under CI=true). All are stopped at
    teardown and their logs printed (pytest shows them when the test fails).
    """
    started: list[RealFtpServer] = []
    counter = itertools.count(1)

    def _make(
        kind: str,
        *,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool | None = None,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
    ) -> RealFtpServer:
        _servers.require_server(kind)
        cls = _servers.server_class(kind)
        if require_reuse is None:
            require_reuse = tls and cls.supports_reuse_requirement
        server = cls(
            tmp_path / f"{kind}{next(counter)}",
            pki=pki if tls else None,
            tls=tls,
            implicit=implicit,
            require_reuse=require_reuse,
            tls13=tls13,
            passive_ports=passive_ports,
        )
        started.append(server)
        return server.start()

    yield _make
    for server in reversed(started):
        code = server.stop()
        print(f"--- {server.kind} {server.workdir.name} exit code {code} ---\n{server.log_text()}")


@pytest.fixture
def make_ftp_server(
    make_real_server: MakeRealServer, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> MakeFtpServer:
    """Factory over every kind in ``server_kinds``, the same arguments as ``make_real_server``.

    ``"pyftpdlib"`` is the pyftpdlib backend with the same login; it has no TLS version
    cap and never requires session reuse (asking for either raises ValueError).
    """

    def _make(
        kind: str,
        *,
        tls: bool = True,
        implicit: bool = False,
        require_reuse: bool | None = None,
        tls13: bool = True,
        passive_ports: tuple[int, int] | None = None,
    ) -> FtpServer:
        if kind != "pyftpdlib":
            return make_real_server(
                kind,
                tls=tls,
                implicit=implicit,
                require_reuse=require_reuse,
                tls13=tls13,
                passive_ports=passive_ports,
            )
        if require_reuse or not tls13:
            raise ValueError("pyftpdlib cannot require session reuse or cap TLS at 1.2")
        return make_backend(
            user=TEST_USER,
            password=TEST_PASSWORD,
            tls_cert=pki.server_cert if tls else None,
            tls_key=pki.server_key if tls else None,
            tls_required=tls,
            implicit=implicit,
            passive_ports=passive_ports,
        )

    return _make


@pytest.fixture
def vsftpd(make_real_server: MakeRealServer) -> RealFtpServer:
    """vsftpd requiring explicit FTPS and TLS session reuse."""
    return make_real_server("vsftpd")


@pytest.fixture
def proftpd(make_real_server: MakeRealServer) -> RealFtpServer:
    """ProFTPD (mod_tls) requiring explicit FTPS and TLS session reuse."""
    return make_real_server("proftpd")


@pytest.fixture
def pure_ftpd(make_real_server: MakeRealServer) -> RealFtpServer:
    """Pure-FTPd requiring explicit FTPS (``-Y 3``); it never requires session reuse."""
    return make_real_server("pure-ftpd")
