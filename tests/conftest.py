"""Shared fixtures: a throwaway PKI, pyftpdlib backends and the proxy as a twistd process."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki, make_pki
from tests.support.proxy import ProxyProcess


class MakeProxy(Protocol):
    def __call__(
        self,
        *args: str,
        ports: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ProxyProcess: ...


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
    for proxy in reversed(started):
        code = proxy.stop()
        print(f"--- proxy {proxy.workdir.name} exit code {code} ---\n{proxy.log_text()}")
