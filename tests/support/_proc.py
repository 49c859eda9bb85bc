"""Process helpers shared by the backend and proxy wrappers: stop only what we started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

#: The repository root: ``python -m tests.support...`` and the twistd plugin need it.
REPO_ROOT = Path(__file__).resolve().parents[2]


def env_with_repo_path(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM our child by PID, wait ``grace`` seconds, then SIGKILL; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode
