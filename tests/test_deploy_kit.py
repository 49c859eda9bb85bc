"""The monitoring kit in deploy/: Prometheus config and rules, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ftpsproxy.observe.metrics import Metrics
from tests.support.clients import require_tool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _promtool(*args: str) -> None:
    require_tool("promtool")
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "ftpsproxy-rules.yml"),
        ("test", "rules", "ftpsproxy-rules.test.yml"),
    ],
)
def test_promtool_accepts_the_kit(args: tuple[str, ...]) -> None:
    _promtool(*args)


def _known_series() -> set[str]:
    names = set()
    for collector in Metrics().registry.collect():
        for sample in collector.samples:
            names.add(sample.name)
        names.add(collector.name)
        names.add(collector.name + "_total")
        names.add(collector.name + "_bucket")
    return names


def test_rules_and_dashboard_name_only_real_series() -> None:
    known = _known_series() | {"up"}
    text = (DEPLOY / "prometheus" / "ftpsproxy-rules.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "ftpsproxy-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for source in [text, *exprs]:
        for name in re.findall(r"\b(ftpsproxy_[a-z_]+)", source):
            assert name in known, name
    assert len(dashboard["panels"]) >= 6
