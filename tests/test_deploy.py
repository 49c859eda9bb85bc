"""The service kit in deploy/: install.sh into a throwaway root, the unit, firewall,
logrotate and certbot files, each checked by the tool that will read it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftpsproxy import __version__
from tests.support.certs import Pki
from tests.support.ci import unavailable
from tests.support.clients import require_tool

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"
VENV = "opt/ftpsproxy/venv"
#: The scripts the kit ships or runs, for shellcheck.
SCRIPTS = ("deploy/install.sh", "deploy/certbot/ftpsproxy-reload.sh", "deploy/demo.sh")
SCRIPTS += ("deploy/setup-venv.sh", "tests/run.sh", "deploy/container/build.sh")


@dataclass(frozen=True)
class Installed:
    root: Path
    output: str


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        command, capture_output=True, text=True, timeout=300, check=False, **kwargs
    )


def _as_unprivileged(command: list[str]) -> list[str]:
    """*command* as the user nobody when we are root (as CI is), else as ourselves."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


def _throwaway_root() -> Path:
    """A target root every user may enter (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="ftpsproxy-root-"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def installed(pki: Pki) -> Iterator[Installed]:
    """install.sh run for real into a temporary root: venv, pip, plugin cache and all."""
    root = _throwaway_root()
    try:
        pair = ["--certificate", str(pki.server_cert), "--private-key", str(pki.server_key)]
        result = _run(["bash", str(INSTALL), "--root", str(root), *pair])
        assert result.returncode == 0, result.stdout + result.stderr
        yield Installed(root, result.stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_lays_out_the_service_with_its_modes(installed: Installed, pki: Pki) -> None:
    root = installed.root
    expected = {
        "etc/ftpsproxy": 0o750,
        "etc/ftpsproxy/ftpsproxy.toml": 0o640,
        "etc/ftpsproxy/key.pem": 0o640,
        "etc/ftpsproxy/cert.pem": 0o644,
        "etc/systemd/system/ftpsproxy.service": 0o644,
        "etc/logrotate.d/ftpsproxy": 0o644,
        "opt/ftpsproxy/share/nftables/ftpsproxy.nft": 0o644,
        "opt/ftpsproxy/share/certbot/ftpsproxy-reload.sh": 0o755,
        VENV: 0o755,
    }
    assert {path: _mode(root / path) for path in expected} == expected
    assert (root / "etc/ftpsproxy/key.pem").read_bytes() == pki.server_key.read_bytes()
    toml = (root / "etc/ftpsproxy/ftpsproxy.toml").read_bytes()
    assert toml == (DEPLOY / "ftpsproxy.toml").read_bytes()
    # Running as root into a root that is not /: no account is made, and it says so.
    assert "skipping useradd and chown/chgrp" in installed.output


def test_venv_runs_from_opt_and_its_plugin_cache_is_fresh(installed: Installed) -> None:
    venv = installed.root / VENV
    assert (venv / "bin/twistd").read_text().splitlines()[0] == "#!/opt/ftpsproxy/venv/bin/python"
    plugins = next((venv / "lib").glob("python3*/site-packages/twisted/plugins"))
    cache = plugins / "dropin.cache"
    assert cache.is_file(), "install.sh did not make the Twisted plugin cache"
    made = hashlib.sha256(cache.read_bytes()).hexdigest()

    # The venv's python runs in place (pyvenv.cfg lies beside it), and so its twistd script.
    python = str(venv / "bin/python")
    twistd = [python, str(venv / "bin/twistd"), "ftpsproxy", "--version"]
    version = _run(_as_unprivileged(twistd))
    assert version.stdout.strip() == f"ftpsproxy {__version__}", version.stdout + version.stderr
    # Twisted rewrites a stale cache when it may; as its owner it finds nothing to redo.
    refresh = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
    assert _run([python, "-c", refresh]).returncode == 0
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == made, "the cache was stale"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "ftpsproxy.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_systemd_make_the_directories_it_uses() -> None:
    """Nothing else creates /var/log/ftpsproxy: a ReadWritePaths= of it fails the start."""
    unit = _unit_settings()
    assert "ReadWritePaths" not in unit
    example = (DEPLOY / "ftpsproxy.toml").read_text()
    xferlog = re.search(r'^# xferlog = "(.+)"$', example, re.MULTILINE)
    assert xferlog is not None
    assert Path(xferlog[1]).parent == Path("/var/log") / unit["LogsDirectory"][0]
    config = re.search(r"--config (\S+)", unit["ExecStart"][0])
    assert config is not None
    assert Path(config[1]).parent == Path("/etc") / unit["ConfigurationDirectory"][0]
    assert unit["User"] == ["ftpsproxy"] and unit["ExecStart"][0].startswith(f"/{VENV}/bin/")


def test_systemd_analyze_verifies_the_unit_against_the_installed_root(
    installed: Installed,
) -> None:
    analyze = require_tool("systemd-analyze")
    host_units = Path("/usr/lib/systemd/system")
    if not (host_units / "sysinit.target").is_file():
        unavailable("no systemd units in /usr/lib/systemd/system (Debian package systemd)")
    root = installed.root
    # What the operating system brings (systemd's own units, /bin/kill for ExecReload)
    # next to what install.sh brought; verify resolves every path below --root.
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    result = _run([analyze, "verify", f"--root={root}", "ftpsproxy.service"])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_install_without_root_skips_the_account_and_says_so() -> None:
    root = _throwaway_root()
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "nobody")
        result = _run(_as_unprivileged(["bash", str(INSTALL), "--root", str(root), "--no-venv"]))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "not root: skipping useradd and chown/chgrp" in result.stdout
        assert _mode(root / "etc/ftpsproxy/ftpsproxy.toml") == 0o640
        assert (root / "etc/systemd/system/ftpsproxy.service").is_file()
        assert not (root / VENV).exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_nft_accepts_the_firewall_example() -> None:
    nft = require_tool("nft")
    result = _run([nft, "-c", "-f", str(DEPLOY / "nftables/ftpsproxy.nft")])
    if "Operation not permitted" in result.stderr:
        unavailable("nft -c needs CAP_NET_ADMIN (it asks the kernel), which this run lacks")
    assert result.returncode == 0, result.stderr


def test_firewall_example_opens_the_ports_of_the_example_config() -> None:
    config = tomllib.loads((DEPLOY / "ftpsproxy.toml").read_text())
    rules = (DEPLOY / "nftables/ftpsproxy.nft").read_text()
    defines = dict(re.findall(r"^define (\w+) = (\S+)$", rules, re.MULTILINE))
    assert defines["ftp_passive_ports"] == config["passive-ports"]
    assert f"tcp:{defines['ftp_control_port']}:" in config["listen"][0]
    assert f"tcp:{defines['ftps_implicit_port']}:" in config["listen-implicit"][0]
    assert "cannot see inside\n# TLS" in rules  # why the fixed range: conntrack's FTP helper


def _recording_systemctl(directory: Path) -> Path:
    """A ``systemctl`` that records its arguments and says the service is active."""
    directory.mkdir()
    calls = directory / "calls"
    script = directory / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    script.chmod(0o755)
    return calls


def test_logrotate_reads_the_snippet(tmp_path: Path) -> None:
    logrotate = require_tool("logrotate")
    snippet = DEPLOY / "logrotate/ftpsproxy"
    result = _run([logrotate, "--debug", "--state", str(tmp_path / "state"), str(snippet)])
    assert result.returncode == 0, result.stderr
    assert "rotating pattern: /var/log/ftpsproxy/xferlog" in result.stderr
    assert "error" not in result.stderr.lower()


def test_logrotate_rotates_the_xferlog_and_reloads_the_service(tmp_path: Path) -> None:
    logrotate = require_tool("logrotate")
    calls = _recording_systemctl(tmp_path / "bin")
    xferlog = tmp_path / "xferlog"
    xferlog.write_text("Sun Dec  6 06:00:00 2026 1 127.0.0.1 5 /hello.txt b _ o r demo ftp 0 * c\n")
    snippet = (DEPLOY / "logrotate/ftpsproxy").read_text()
    config = tmp_path / "logrotate.conf"
    config.write_text(snippet.replace("/var/log/ftpsproxy/xferlog", str(xferlog)))
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    state = str(tmp_path / "state")
    result = _run([logrotate, "--force", "--state", state, str(config)], env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "xferlog.1").read_text().startswith("Sun Dec  6")
    assert xferlog.read_text() == "" and _mode(xferlog) == 0o640
    assert calls.read_text().splitlines() == [
        "is-active --quiet ftpsproxy.service",
        "reload ftpsproxy.service",
    ]


def _run_certbot_hook(tmp_path: Path, pki: Pki, **extra: str) -> Path:
    if os.geteuid() != 0:
        unavailable("the certbot hook installs the key as root:ftpsproxy: needs root")
    lineage = tmp_path / "live/ftp.example.org"
    lineage.mkdir(parents=True)
    shutil.copy(pki.server_key, lineage / "privkey.pem")
    shutil.copy(pki.server_cert, lineage / "fullchain.pem")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    calls = _recording_systemctl(tmp_path / "bin")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "RENEWED_LINEAGE": str(lineage),
        "RENEWED_DOMAINS": "ftp.example.org www.example.org",
        "FTPSPROXY_CONFIG_DIR": str(config_dir),
        "FTPSPROXY_GROUP": "root",  # no ftpsproxy group on a test machine
        **extra,
    }
    result = _run(["bash", str(DEPLOY / "certbot/ftpsproxy-reload.sh")], env=env)
    assert result.returncode == 0, result.stderr
    return calls


def test_certbot_hook_installs_the_renewed_pair_and_reloads(tmp_path: Path, pki: Pki) -> None:
    calls = _run_certbot_hook(tmp_path, pki, FTPSPROXY_DOMAIN="ftp.example.org")
    key, cert = tmp_path / "etc/key.pem", tmp_path / "etc/cert.pem"
    assert key.read_bytes() == pki.server_key.read_bytes() and _mode(key) == 0o640
    assert cert.read_bytes() == pki.server_cert.read_bytes() and _mode(cert) == 0o644
    assert sorted(path.name for path in (tmp_path / "etc").iterdir()) == ["cert.pem", "key.pem"]
    assert calls.read_text().splitlines() == [
        "is-active --quiet ftpsproxy.service",
        "reload ftpsproxy.service",
    ]


def test_certbot_hook_ignores_other_certificates(tmp_path: Path, pki: Pki) -> None:
    calls = _run_certbot_hook(tmp_path, pki, FTPSPROXY_DOMAIN="ftp.example.net")
    assert list((tmp_path / "etc").iterdir()) == [] and not calls.exists()


def test_shell_scripts_are_shellcheck_clean() -> None:
    shellcheck = require_tool("shellcheck")
    result = _run([shellcheck, *SCRIPTS], cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_readme_links_only_to_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(((?:deploy|bench|tests|ftpsproxy)/[^)#]*)\)", readme)
    assert targets and [target for target in targets if not (REPO / target).exists()] == []
