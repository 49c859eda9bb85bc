"""The demo (deploy/demo.sh runs ``python -m ftpsproxy.ops.demo``): honest at start-up."""

from __future__ import annotations

import ftplib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support._proc import env_with_repo_path, terminate
from tests.support.ports import free_port, free_port_range
from tests.support.waiting import wait_until

RUNNING = "ftpsproxy demo is running"


def _demo_ports() -> dict[str, str]:
    first, last = free_port_range(4)
    listeners: set[int] = set()
    for _ in range(20):  # four distinct ports; the kernel rarely repeats one
        listeners.add(free_port())
        if len(listeners) == 4:
            break
    port, implicit, backend, metrics = (str(port) for port in sorted(listeners))
    return {
        "--port": port,
        "--implicit-port": implicit,
        "--backend-port": backend,
        "--metrics-port": metrics,
        "--passive-ports": f"{first}-{last}",
    }


def _command(ports: dict[str, str]) -> list[str]:
    options = [word for option, value in ports.items() for word in (option, value)]
    return [sys.executable, "-m", "ftpsproxy.ops.demo", *options]


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A port someone else holds: listening on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock


def test_a_taken_port_is_named_and_nothing_starts(listening_socket: socket.socket) -> None:
    ports = _demo_ports()
    ports["--metrics-port"] = str(listening_socket.getsockname()[1])
    result = subprocess.run(
        _command(ports),
        capture_output=True,
        text=True,
        env=env_with_repo_path(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"port in use: --metrics-port {ports['--metrics-port']}" in result.stderr
    assert "--port" not in result.stderr.replace("--metrics-port", "")
    assert RUNNING not in result.stdout
    assert "starting up" not in result.stdout + result.stderr  # no twistd was started


def test_readiness_probe_leaves_no_session_in_the_proxy_log(tmp_path: Path) -> None:
    ports = _demo_ports()
    output = tmp_path / "demo.out"
    with open(output, "wb") as sink:
        demo = subprocess.Popen(
            _command(ports),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env_with_repo_path(),
        )
    try:

        def running() -> bool:
            if demo.poll() is not None:
                raise AssertionError(f"demo exited {demo.returncode}:\n{output.read_text()}")
            return RUNNING in output.read_text()

        wait_until(running, timeout=60, what="the demo's 'running' message")
        before = output.read_text()
        assert not re.search(r"\bsession \d+", before), before

        with ftplib.FTP() as client:
            client.connect("127.0.0.1", int(ports["--port"]), timeout=10)
            client.login("demo", "demo")
            assert "hello.txt" in client.nlst()
            client.quit()
        wait_until(lambda: " end client=" in output.read_text(), what="the session's end line")
        sessions = re.findall(r"\bsession (\d+) (start|end)\b", output.read_text())
        assert sessions == [("1", "start"), ("1", "end")]
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops its children
            try:
                demo.wait(timeout=20)
            except subprocess.TimeoutExpired:
                terminate(demo, 5)
    assert demo.returncode == 0, output.read_text()
    with socket.socket() as sock:  # the proxy is gone: its control port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(ports["--port"])))
