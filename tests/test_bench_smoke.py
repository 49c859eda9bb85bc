"""The benchmark still runs end to end (a smoke run: it asserts no speed, only that it works).

``bench/run.py --quick`` measures every part with small sizes and one round; this checks
that it writes results.md and results.json with a row for every configuration it could
run here, and that every transfer and session it counted was verified.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.clients import require_tool

REPO = Path(__file__).resolve().parent.parent

FTPSPROXY_ROWS = {"fp-tls-plain", "fp-tls-tls", "fp-plain-plain"}
MOD_PROXY_ROWS = {"mp-tls-plain", "mp-tls-tls"}
DIRECT_ROWS = {"direct-plain", "direct-ftps"}


def _run_quick(results_dir: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick"]
    result = subprocess.run(
        [*command, "--results-dir", str(results_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((results_dir / "results.json").read_text())


def test_benchmark_quick_run_writes_verified_results(tmp_path: Path) -> None:
    require_tool("curl")
    result, report = _run_quick(tmp_path)
    meta, results, raw = report["meta"], report["results"], report["raw"]
    markdown = (tmp_path / "results.md").read_text()

    # Every configuration this machine can run has its rows.
    configured = {c["key"] for c in report["configurations"]}
    expected = DIRECT_ROWS | FTPSPROXY_ROWS
    if "not run" not in meta["mod_proxy"]:
        expected |= MOD_PROXY_ROWS
    if meta["workers_option"]:
        expected |= {"fp-tls-plain-w2"}
    if meta["data_path_option"]:
        expected |= {"fp-plain-plain-copy"}
    assert expected <= configured
    assert expected - {"fp-tls-plain-w2"} <= set(results["throughput"])
    for key in expected - {"fp-tls-plain-w2"}:
        assert results["throughput"][key]["RETR"]["median"] > 0
        assert results["throughput"][key]["STOR"]["median"] > 0
    tls_rows = {k for k in expected if k != "direct-plain" and "plain-plain" not in k}
    assert tls_rows <= set(results["sessions"])
    assert {"direct-ftps", "fp-tls-plain"} <= set(results["concurrent"])
    assert {"direct-ftps", "fp-tls-plain", "fp-tls-tls"} <= set(results["latency"])
    assert results["idle"][0]["config"].startswith("fp") and results["idle"][0]["rss_mib"] > 0
    assert results["slow_reader"]["peak_rss_mib"] > 0

    # Every transfer was verified; the proxies under test failed nothing.
    assert raw["transfers"] and all(t["verified"] == "size+sha256" for t in raw["transfers"])
    assert {t["config"] for t in raw["transfers"]} >= expected - {"fp-tls-plain-w2"}
    assert results["slow_reader"]["verified"] == "size+sha256"
    for record in raw["sessions"]:
        assert record["sessions"] > 0, record
        if not record["config"].startswith("mp"):
            assert record["failed"] == 0, record
    for record in raw["concurrent"]:
        if not record["config"].startswith("mp"):
            assert record["failed"] == 0, record
    assert "verified size+sha256" in result.stdout

    # The Markdown has the tables, the core count and the targets.
    labels = {c["key"]: c["label"] for c in report["configurations"]}
    for key in expected:
        assert f"| {labels[key]} |" in markdown
    assert f"This machine has {meta['cpus']} CPU core(s)" in markdown
    assert "## Targets from issue 6" in markdown
    assert report["goals"]
