"""The benchmark still runs end to end (a smoke run; it asserts no speed, only that it works)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.clients import require_tool

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_quick_run_verifies_every_transfer(tmp_path: Path) -> None:
    require_tool("curl")
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--no-slow-reader"]
    result = subprocess.run(
        [*command, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert "proxy FTPS→plain" in json.dumps(report, ensure_ascii=False)
    assert "verified" in result.stdout
