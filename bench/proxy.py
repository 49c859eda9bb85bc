"""ftpsproxy as an operator runs it (``twistd -n ftpsproxy ...``), and what its build offers.

``--workers`` and ``--data-path`` are detected from ``twistd ftpsproxy --help``, so the
benchmark runs against builds with and without them.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    HOST,
    REPO,
    BenchError,
    Processes,
    check_ports_free,
    free_port,
    wait_for_banner,
)
from tests.support.certs import Pki


def twistd_argv() -> list[str]:
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [sys.executable, str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def proxy_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@functools.cache
def help_text() -> str:
    done = subprocess.run(
        [*twistd_argv(), "ftpsproxy", "--help"],
        capture_output=True,
        timeout=60,
        check=False,
        env=proxy_env(),
        cwd=REPO,
    )
    text = done.stdout.decode(errors="replace")
    if "--backend" not in text:
        raise BenchError(f"twistd ftpsproxy --help failed: {done.stderr.decode()[-500:]}")
    return text


def _option_help(option: str) -> str | None:
    """The help block of ``--option`` (its line and the indented continuation lines)."""
    match = re.search(
        rf"^\s+(?:-\w, )?{re.escape(option)}\b.*(?:\n\s{{20,}}\S.*)*", help_text(), re.M
    )
    return match.group() if match else None


def supports_pools() -> bool:
    """Backend pools (``[[backends]]`` and ``--balance``) exist in this checkout."""
    return _option_help("--balance") is not None


def supports_workers() -> bool:
    return _option_help("--workers") is not None


def data_paths() -> tuple[str, ...]:
    """``("splice", "copy")`` when ``--data-path splice|copy`` exists, else ``()``."""
    block = _option_help("--data-path")
    if block is None or "splice" not in block or "copy" not in block:
        return ()
    return ("splice", "copy")


@functools.cache
def version() -> str:
    done = subprocess.run(
        [*twistd_argv(), "ftpsproxy", "--version"],
        capture_output=True,
        timeout=60,
        check=False,
        env=proxy_env(),
        cwd=REPO,
    )
    return (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()[-1:][0]


def start(
    procs: Processes,
    name: str,
    *,
    backend_url: str,
    pki: Pki,
    passive: tuple[int, int],
    logs: Path,
    extra: Sequence[str] = (),
    pool: int = 0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start one proxy with an explicit-FTPS (and plain) listener; returns it and its port.

    With *pool* > 0 the backend is a pool of that many ``[[backends]]`` tables, all
    naming *backend_url*: what routing costs, with the backend's capacity unchanged.
    """
    check_ports_free(*passive)
    port = free_port()
    log = logs / f"{name}.log"
    log.unlink(missing_ok=True)
    argv = [*twistd_argv(), "-n", "--pidfile=", f"--logfile={log}", "ftpsproxy"]
    argv += ["--listen", f"tcp:{port}:interface={HOST}"]
    argv += ["--certificate", str(pki.server_cert), "--private-key", str(pki.server_key)]
    if pool:
        config = logs / f"{name}.toml"
        config.write_text(
            "".join(
                f'[[backends]]\nname = "ftp{n}"\nurl = "{backend_url}"\n\n'
                for n in range(1, pool + 1)
            )
        )
        argv += ["--config", str(config)]
    else:
        argv += ["--backend", backend_url]
    argv += ["--passive-ports", f"{passive[0]}-{passive[1]}"]
    argv += ["--public-address", HOST, "--max-sessions", "5000", "--max-sessions-per-ip", "5000"]
    argv += ["--max-passive-ports-per-ip", "5000"]  # every client runs on 127.0.0.1
    if backend_url.startswith(("ftpes:", "ftps:")):
        # The same TLS version towards the backend as mod_proxy's (ProxyTLSProtocol TLSv1.2).
        argv += ["--backend-ca", str(pki.ca_cert), "--backend-tls-max-version", "1.2"]
    argv += list(extra)
    proc = procs.start(name, argv, log=logs / f"{name}.stdio.log", env=proxy_env(), cwd=REPO)
    wait_for_banner(port, lambda: proc.poll() is None, log)
    return proc, port
