"""Start-up errors as an operator meets them: a real ``twistd ftpsproxy`` that cannot start
says why in one line on stderr, naming the option or file, prints nothing on stdout
(no ``--help``, no traceback) and exits non-zero."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support._proc import env_with_repo_path
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import twistd_command

BACKEND = ("--backend", "ftp://127.0.0.1:2100")
LISTEN = ("--listen", "tcp:2121:interface=127.0.0.1")  # never bound: every start fails first


def _twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``twistd -n ftpsproxy ARGS`` from the checkout, its log in a file of its own."""
    log = f"--logfile={tmp_path / 'proxy.log'}"
    return subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", log, "ftpsproxy", *args],
        capture_output=True,
        text=True,
        env=env_with_repo_path(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"ftpsproxy: {line}\n")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ((*LISTEN,), "backend: required (e.g. --backend ftp://127.0.0.1:2100)"),
        (
            (*BACKEND, *LISTEN, "--passive-ports", "30000-2"),
            "passive-ports: 30000-2 must be within 1024-65535, low <= high",
        ),
        (
            (*BACKEND, *LISTEN, "--public-address", "ftp.example.com"),
            "public-address: 'ftp.example.com' is not an IPv4 address",
        ),
        (
            (*BACKEND, *LISTEN, "--idle-timeout", "-5"),
            "idle-timeout: '-5' must be between 0 and 86400 seconds",
        ),
        (
            (*BACKEND, *LISTEN, "--idle-timout", "5"),
            "--idle-timout: unknown option (did you mean '--idle-timeout'?)",
        ),
        ((*BACKEND, *LISTEN, "2121"), "'2121': unexpected argument (options start with --)"),
        (
            (*BACKEND, *LISTEN, "--passive-ports", "2100-2200"),
            "passive-ports: 2100-2200 includes port 2121 of listen tcp:2121:interface=127.0.0.1",
        ),
    ],
)
def test_a_bad_command_line_is_one_line_naming_the_option(
    tmp_path: Path, args: tuple[str, ...], line: str
) -> None:
    _assert_one_line(_twistd(tmp_path, *args), line)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('lisen = ["tcp:2121"]\n', "unknown key 'lisen' (did you mean 'listen'?)"),
        ('idle-timeout = "900"\n', "idle-timeout: expected a number of seconds, got '900'"),
        ("backend = \n", "Invalid value (at line 1, column 11)"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_or_key(
    tmp_path: Path, text: str, line: str
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(text)
    result = _twistd(tmp_path, *BACKEND, *LISTEN, "--config", str(config))
    prefix = "" if line.startswith("idle-timeout") else f"config {config}: "
    _assert_one_line(result, prefix + line)


def test_a_missing_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = _twistd(tmp_path, "--config", str(missing))
    _assert_one_line(result, f"config {missing}: cannot read: No such file or directory")


def test_help_and_version_still_work(tmp_path: Path) -> None:
    helped = _twistd(tmp_path, "--help")
    assert helped.returncode == 0 and "--idle-timeout" in helped.stdout and not helped.stderr
    versioned = _twistd(tmp_path, "--version")
    assert versioned.returncode == 0 and versioned.stdout.startswith("ftpsproxy ")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port this test holds in LISTEN, so the proxy cannot bind it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["listen", "metrics"])
def test_a_port_in_use_is_one_line_naming_the_option_and_address(
    tmp_path: Path, taken_port: int, option: str, workers: str
) -> None:
    taken = f"tcp:{taken_port}:interface=127.0.0.1"
    free = f"tcp:{free_port()}:interface=127.0.0.1"
    low, high = free_port_range(4)
    listen, metrics = (taken, free) if option == "listen" else (free, taken)
    result = _twistd(
        tmp_path,
        *BACKEND,
        *("--listen", listen, "--metrics", metrics),
        *("--passive-ports", f"{low}-{high}", "--workers", workers),
    )
    _assert_one_line(result, f"{option} {taken}: address already in use")
    log = (tmp_path / "proxy.log").read_text()
    assert f"start-up failed: {option} {taken}: address already in use" in log
    assert "Traceback" not in log and "worker 0 started" not in log


def test_a_passive_range_among_the_ephemeral_ports_is_warned_about_once(
    tmp_path: Path, taken_port: int
) -> None:
    """Logged at start-up, before the listeners are bound (here one fails, ending the run)."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range")
    ephemeral = f"{first + 100}-{first + 119}"
    result = _twistd(
        tmp_path,
        *BACKEND,
        *("--listen", f"tcp:{taken_port}:interface=127.0.0.1", "--passive-ports", ephemeral),
    )
    assert result.returncode == 1
    log = (tmp_path / "proxy.log").read_text()
    assert log.count(f"passive-ports {ephemeral} lies in the kernel's ephemeral") == 1
    assert f"sysctl -w net.ipv4.ip_local_reserved_ports={ephemeral}" in log
