"""Clients in other languages for the interop tests: rclone (Go) and Commons Net (Java).

Both are Debian packages that ``tests/run.sh`` installs: ``rclone``, and
``libcommons-net-java`` with a JDK (``default-jdk-headless``) for ``javac``/``java``.
Without them the tests skip, or fail under CI=true (:func:`ci.unavailable`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from tests.support.ci import unavailable
from tests.support.clients import require_tool, run_tool

#: FTP connection modes of the frontend both clients speak.
MODES: Final = ("plain", "explicit", "implicit")

#: Fail on the first error: rclone retries a failed transfer 3 times and each low-level
#: operation 10 times by default, which could turn a truncated upload into a pass.
RCLONE_FLAGS: Final = (
    "--config", "/dev/null",
    "--low-level-retries", "1",
    "--retries", "1",
    "--contimeout", "20s",
    "--timeout", "60s",
)  # fmt: skip

COMMONS_NET_JAR: Final = Path("/usr/share/java/commons-net.jar")
JAVA_SOURCE: Final = Path(__file__).resolve().parent / "java" / "FtpsTransfer.java"
JAVA_MAIN: Final = "FtpsTransfer"


# -- rclone ------------------------------------------------------------------------------


def rclone_remote(host: str, port: int, mode: str, user: str, password: str) -> str:
    """An rclone connection-string remote (``:ftp,...:``): no config file needed."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    rclone = require_tool("rclone")
    obscured = subprocess.run(
        [rclone, "obscure", password],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    options = [f"host={host}", f"port={port}", f"user={user}", f"pass={obscured}"]
    if mode == "explicit":
        options += ["explicit_tls=true", "no_check_certificate=true"]
    elif mode == "implicit":
        options += ["tls=true", "no_check_certificate=true"]
    return ":ftp," + ",".join(options) + ":"


def run_rclone(args: Sequence[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``rclone RCLONE_FLAGS ARGS``."""
    return run_tool([require_tool("rclone"), *RCLONE_FLAGS, *args], timeout)


# -- Java (Apache Commons Net) -----------------------------------------------------------


def compile_java_client(dest: Path) -> Path:
    """Compile ``FtpsTransfer.java`` into ``dest``; returns the class path to run it with."""
    if not COMMONS_NET_JAR.is_file():
        unavailable(f"{COMMONS_NET_JAR} not found (Debian package libcommons-net-java)")
    javac = require_tool("javac")
    result = run_tool(
        [javac, "-cp", str(COMMONS_NET_JAR), "-d", str(dest), str(JAVA_SOURCE)], timeout=180
    )
    if result.returncode != 0:
        raise RuntimeError(f"javac failed:\n{result.stdout}{result.stderr}")
    return dest


def run_java_client(
    classes: Path,
    host: str,
    port: int,
    mode: str,
    user: str,
    password: str,
    direction: str,
    local: Path,
    remote: str,
    *,
    tls_protocol: str | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """One ``put`` or ``get`` with ``FtpsTransfer``; ``tls_protocol`` e.g. ``"TLSv1.2"``."""
    java = require_tool("java")
    classpath = f"{classes}:{COMMONS_NET_JAR}"
    args = [host, str(port), mode, user, password, direction, str(local), remote]
    if tls_protocol is not None:
        args.append(tls_protocol)
    return run_tool([java, "-cp", classpath, JAVA_MAIN, *args], timeout)
