"""Packaging and start-up: what a sysadmin sees after ``pip install .`` and on a bad config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.certs import Pki
from tests.support.proxy import twistd_command

PIP_INSTALL = (sys.executable, "-m", "pip", "install", "--quiet", "--no-deps")
REPO = Path(__file__).resolve().parent.parent
START = ("-n", "--pidfile=", "ftpsproxy", "--listen", "tcp:0:interface=127.0.0.1")
START += ("--backend", "ftp://127.0.0.1:21")
OPTIONS = (
    "--listen", "--listen-implicit", "--certificate", "--private-key", "--backend",
    "--passive-ports", "--public-address", "--metrics", "--config", "--require-tls",
)  # fmt: skip


def _twistd(args: list[str], *, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [*twistd_command(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as ``pip install .`` lays it out, in a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [*PIP_INSTALL, "--target", str(target), str(REPO)],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return target


def test_install_never_ships_twisted_package_markers(installed: Path) -> None:
    assert (installed / "twisted" / "plugins" / "ftpsproxy_plugin.py").is_file()
    assert not (installed / "twisted" / "__init__.py").exists()
    assert not (installed / "twisted" / "plugins" / "__init__.py").exists()


def test_twistd_lists_and_documents_the_plugin(installed: Path, tmp_path: Path) -> None:
    listing = _twistd(["--help"], pythonpath=installed, cwd=tmp_path)
    assert "ftpsproxy" in listing.stdout
    helptext = _twistd(["ftpsproxy", "--help"], pythonpath=installed, cwd=tmp_path).stdout
    for option in OPTIONS:
        assert option in helptext, option


def test_unreadable_certificate_is_a_one_line_startup_error(tmp_path: Path) -> None:
    missing = ["--certificate", str(tmp_path / "missing.pem")]
    missing += ["--private-key", str(tmp_path / "missing.key")]
    result = _twistd(
        [*START, *missing],
        pythonpath=REPO,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert f"certificate {tmp_path / 'missing.pem'}: cannot read" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_key_not_matching_certificate_names_the_key(tmp_path: Path, pki: Pki) -> None:
    result = _twistd(
        [*START, "--certificate", str(pki.ca_cert), "--private-key", str(pki.server_key)],
        pythonpath=REPO,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert f"private key {pki.server_key}: does not match" in result.stderr + result.stdout


def test_bad_option_value_is_a_usage_error(tmp_path: Path) -> None:
    result = _twistd(
        ["ftpsproxy", "--listen", "tcp:2121", "--backend", "ftp://h:21", "--passive-ports", "9-8"],
        pythonpath=REPO,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "passive-ports" in result.stderr + result.stdout
