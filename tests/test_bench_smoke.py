"""The benchmark still runs end to end (a smoke run: it asserts no speed, only that it works).

``bench/run.py --quick`` measures every part with small sizes and one round; this checks
that it writes results.md and results.json with a row for every configuration, that
every transfer and session it counted was verified, and that the results name the git
state they come from. Under CI=true every configuration must have run (mod_proxy, vsftpd);
elsewhere the test checks what could run and then skips, naming what could not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run
from tests.support.ci import unavailable
from tests.support.clients import require_tool

REPO = Path(__file__).resolve().parent.parent

FTPSPROXY_ROWS = {"fp-tls-plain", "fp-tls-tls", "fp-plain-plain"}
# --workers 2 and --data-path copy: options of this proxy, so their rows are always there.
OPTION_ROWS = {"fp-tls-plain-w2", "fp-plain-plain-copy"}
MOD_PROXY_ROWS = {"mp-tls-plain", "mp-tls-tls"}
DIRECT_ROWS = {"direct-plain", "direct-ftps"}


def _run_quick(results_dir: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    # --allow-dirty: the suite also runs on work in progress; the results then say so.
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--allow-dirty"]
    result = subprocess.run(
        [*command, "--results-dir", str(results_dir), "--save", "smoke"],
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
    git_before = bench_run.git_state(REPO)
    result, report = _run_quick(tmp_path)
    meta, results, raw = report["meta"], report["results"], report["raw"]
    markdown = (tmp_path / "results.md").read_text()

    # The git state at the start, and a dirty tree said loudly.
    assert meta["git"]["commit"] == git_before["commit"]
    assert meta["git"]["dirty"] == git_before["dirty"]
    assert meta["dirty"] == (not git_before["clean"])
    assert f"commit {git_before['describe']}" in markdown
    assert ("**DIRTY TREE" in markdown) == meta["dirty"]
    day = meta["date"][:10]
    assert (tmp_path / f"{day}-smoke.md").read_text() == markdown
    assert json.loads((tmp_path / f"{day}-smoke.json").read_text()) == report

    # Every configuration this machine can run has its rows.
    configured = {c["key"] for c in report["configurations"]}
    expected = DIRECT_ROWS | FTPSPROXY_ROWS | OPTION_ROWS
    mod_proxy_ran = "not run" not in meta["mod_proxy"]
    if mod_proxy_ran:
        expected |= MOD_PROXY_ROWS
    assert meta["workers_option"] and "copy" in meta["data_path_option"]
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
    checks = {"RETR": "size", "STOR": "size+sha256"}  # RETR's bytes: the untimed check
    assert raw["transfers"]
    assert all(t["verified"] == checks[t["direction"]] for t in raw["transfers"])
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
    assert "an untimed download matches the payload's SHA-256" in result.stdout

    # The Markdown has the tables, the core count and the targets.
    labels = {c["key"]: c["label"] for c in report["configurations"]}
    for key in expected:
        assert f"| {labels[key]} |" in markdown
    assert f"This machine has {meta['cpus']} CPU core(s)" in markdown
    assert "## Targets from issue 6" in markdown
    assert report["goals"]

    # What did not run here was not checked: a skip with the reason, a failure under CI.
    missing = [n for n in meta["notes"] if "not measured" in n or "cannot run here" in n]
    if not mod_proxy_ran and not missing:
        missing = [f"mod_proxy rows {sorted(MOD_PROXY_ROWS)} ({meta['mod_proxy']})"]
    if missing:
        unavailable("the benchmark ran without: " + "; ".join(missing))


def test_benchmark_refuses_a_dirty_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dirty = {
        "commit": "0" * 40,
        "describe": "0000000-dirty",
        "dirty": True,
        "changes": [" M ftpsproxy/data/relay.py"],
        "clean": False,
        "problem": "the checkout has uncommitted changes to 1 tracked file(s): "
        "ftpsproxy/data/relay.py",
    }
    monkeypatch.setattr(bench_run, "git_state", lambda repo=REPO: dirty)
    assert bench_run.main(["--quick", "--results-dir", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert "uncommitted changes" in error and "ftpsproxy/data/relay.py" in error
    assert "--allow-dirty" in error
    assert not (tmp_path / "results").exists()  # refused before anything ran


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=30)


def test_git_state_counts_changes_to_tracked_files(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_tool("git")
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "a")
    state = bench_run.git_state(tmp_path)
    assert state["clean"] and state["dirty"] is False and len(state["commit"]) == 40
    (tmp_path / "untracked.txt").write_text("u\n")
    assert bench_run.git_state(tmp_path)["clean"]  # untracked files are not the code run
    (tmp_path / "a.txt").write_text("changed\n")
    state = bench_run.git_state(tmp_path)
    assert not state["clean"] and state["dirty"] is True
    assert state["changes"] == [" M a.txt"] and "a.txt" in state["problem"]
    assert state["describe"].endswith("-dirty")
    outside = bench_run.git_state(tmp_path_factory.mktemp("not-a-checkout"))
    assert not outside["clean"] and outside["dirty"] is None
    assert "cannot tell" in outside["problem"]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("bench/results/results.json", True),
        ("bench/results/results.md", True),
        ("bench/results/logs/ftpsproxy.log", True),
        ("bench/results/profile-fp-tls-plain-RETR.txt", True),
        ("bench/results/2026-12-05-full-2core.json", False),
        ("bench/results/2026-12-05-full-2core.md", False),
        ("bench/results/2026-12-05-full-2core.png", True),
    ],
)
def test_only_dated_results_can_be_committed(path: str, ignored: bool) -> None:
    git = require_tool("git")
    done = subprocess.run(
        [git, "-C", str(REPO), "check-ignore", "--quiet", "--no-index", path],
        check=False,
        timeout=30,
    )
    assert done.returncode in (0, 1), done
    assert (done.returncode == 0) == ignored
