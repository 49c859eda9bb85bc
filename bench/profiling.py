"""Sampling the proxy with py-spy during an untimed transfer (``--profile``).

py-spy is not a project dependency: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Target
from bench.transfers import Env, transfer


def find_py_spy() -> Path | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return candidate
    found = shutil.which("py-spy")
    return Path(found) if found else None


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (dir/file.py)``, so lines of one function merge."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if where else name


def summarize_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self": share(self_counts), "inclusive": share(inclusive)}


def profile_proxy(env: Env, target: Target, results_dir: Path) -> dict[str, Any]:
    """Sample the proxy during one untimed RETR and one STOR through ``target``."""
    py_spy = find_py_spy()
    if py_spy is None:
        return {"error": "py-spy not found (.venv/bin/pip install py-spy)"}
    assert target.proxy_pid is not None
    profiles: dict[str, Any] = {}
    for direction in ("RETR", "STOR"):
        raw = results_dir / f"profile-{target.key}-{direction.lower()}.txt"
        raw.unlink(missing_ok=True)
        argv = [str(py_spy), "record", "--pid", str(target.proxy_pid), "--format", "raw"]
        argv += ["--output", str(raw), "--rate", "200", "--nonblocking"]
        log = results_dir / "logs" / "py-spy.log"
        with log.open("ab") as log_file:
            spy = subprocess.Popen(argv, stdout=log_file, stderr=log_file)
        try:
            time.sleep(1.0)  # let py-spy attach
            result = transfer(env, target, direction, 0)
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
        summary: dict[str, Any] = summarize_profile(raw) if raw.exists() else {"samples": 0}
        summary["mib_per_s_while_sampled"] = round(result.mib_per_s, 1)
        summary["raw"] = str(raw)
        profiles[f"{target.label} {direction}"] = summary
    return profiles
