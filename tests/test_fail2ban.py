"""The fail2ban kit in deploy/fail2ban/ matches the failed logins a real proxy logs.

A failed login is logged once, at warning level, with the client's address, so fail2ban
(or a SIEM) can act on it; ``fail2ban-regex`` (Debian's ``fail2ban``, installed by
``tests/run.sh``) reads the proxy's own log with the shipped filter.
"""

from __future__ import annotations

import ftplib
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import require_tool
from tests.test_e2e_core import start_proxy

FILTER = Path(__file__).parent.parent / "deploy" / "fail2ban" / "filter.d" / "ftpsproxy.conf"
JAIL = Path(__file__).parent.parent / "deploy" / "fail2ban" / "jail.d" / "ftpsproxy.conf"


def _fail_login(port: int, source: str) -> None:
    ftp = ftplib.FTP(timeout=10, source_address=(source, 0))
    ftp.connect("127.0.0.1", port)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login("mallory", "wrong")
    ftp.close()


def test_fail2ban_filter_matches_each_failed_login_with_its_address(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    fail2ban_regex = require_tool("fail2ban-regex")
    proxied = start_proxy(make_proxy, backend, pki, "--login-failure-delay", "0")
    for _ in range(3):
        _fail_login(proxied.port, "127.0.0.7")
    ftp = proxied.ftp_tls()  # a good login is not matched
    ftp.quit()
    proxy = proxied.proxy
    proxy.wait_log(r"session \d+ failed login client=127\.0\.0\.7 user=mallory")  # type: ignore[attr-defined]
    log = tmp_path / "ftpsproxy.log"
    log.write_text(proxy.log_text())  # type: ignore[attr-defined]
    lines = [line for line in log.read_text().splitlines() if "failed login" in line]
    assert len(lines) == 3, lines
    result = subprocess.run(
        [fail2ban_regex, "--print-all-matched", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    matched = re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", result.stdout)
    assert matched is not None and int(matched.group(1)) == 3, result.stdout
    assert "127.0.0.7" in result.stdout
    assert "[ftpsproxy]" in JAIL.read_text() and "filter   = ftpsproxy" in JAIL.read_text()
