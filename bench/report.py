"""Turns raw measurements into the results tables: JSON, Markdown and (optionally) a PNG."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.common import GIB, MIB, Target


def stats(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "samples": [round(v, digits) for v in values],
    }


def where(attribute: str, value: object) -> Callable[[Any], bool]:
    """A record filter: ``record.attribute == value``."""

    def matches(record: Any) -> bool:
        return bool(getattr(record, attribute) == value)

    return matches


def _ratios(target: Target, medians: dict[str, float]) -> dict[str, float | None]:
    """Median of ``target`` over the median of each of its baselines measured here."""
    out: dict[str, float | None] = {}
    for column, key in target.baselines:
        base = medians.get(key)
        mine = medians.get(target.key)
        out[column] = round(mine / base, 2) if base and mine is not None else None
    return out


def summarize_metric(
    targets: Iterable[Target],
    records: Sequence[Any],
    value: Callable[[Any], float],
    select: Callable[[Any], bool] = lambda r: True,
    digits: int = 1,
) -> dict[str, dict[str, Any]]:
    """Per configuration: stats of ``value`` over the selected records, and ratios."""
    rows: dict[str, dict[str, Any]] = {}
    medians: dict[str, float] = {}
    chosen = list(targets)
    for target in chosen:
        values = [value(r) for r in records if r.config == target.key and select(r)]
        if values:
            rows[target.key] = stats(values, digits)
            medians[target.key] = statistics.median(values)
    for target in chosen:
        if target.key in rows:
            rows[target.key]["ratios"] = _ratios(target, medians)
    return rows


def cpu_per_gib(records: Sequence[Any], key: str, direction: str) -> float | None:
    values = [
        r.proxy_cpu_s / (r.bytes / GIB)
        for r in records
        if r.config == key and r.direction == direction and r.proxy_cpu_s is not None
    ]
    return round(statistics.median(values), 2) if values else None


# -- Markdown -----------------------------------------------------------------------------


def _cell(row: dict[str, Any] | None, fmt: str = "{:.1f}") -> str:
    if row is None:
        return "—"
    return f"{fmt.format(row['median'])} ({fmt.format(row['min'])}–{fmt.format(row['max'])})"


def _ratio(row: dict[str, Any] | None, column: str) -> str:
    if row is None:
        return "—"
    value = row.get("ratios", {}).get(column)
    return "—" if value is None else f"{value:.2f}×"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    aligns = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    labels: dict[str, str] = {t["key"]: t["label"] for t in report["configurations"]}
    lines = ["# ftpsproxy benchmark", ""]
    if meta.get("dirty", False):
        git = meta.get("git", {})
        if git.get("dirty") is None:
            why = "the checkout's git state could not be read"
        else:
            why = "uncommitted changes to " + ", ".join(c[3:] for c in git.get("changes", []))
        lines += [
            f"> **DIRTY TREE: these results cannot be tied to commit {git.get('commit', '?')}.** "
            f"bench/run.py ran with --allow-dirty: {why}.",
            "",
        ]
    lines += [
        f"{meta['date']} · commit {meta['commit']} · backend **{meta['backend']}** · "
        f"{meta['mod_proxy']} ({meta['mod_proxy_mode']}) · {meta['ftpsproxy']} · "
        f"{meta['curl']} · {meta['openssl']} · Python {meta['python']} · "
        f"payload {meta['payload_mib']} MiB · {meta['rounds']} round(s), interleaved · "
        f"load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}",
        "",
        f"**This machine has {meta['cpus']} CPU core(s), shared by the client (curl / Python), "
        "the proxy and the backend, all on loopback: compare the ratios, not the absolute "
        "numbers.** Medians with (min–max) over the rounds.",
    ]
    for note in meta.get("notes", []):
        lines += ["", f"- {note}"]

    throughput = report["results"].get("throughput")
    if throughput:
        lines += [
            "",
            f"## Single-stream RETR / STOR of {meta['payload_mib']} MiB (curl, MiB/s)",
            "",
        ]
        rows = []
        for key, row in throughput.items():
            cpu = row.get("proxy_cpu_s_per_gib", {})
            rows.append(
                [
                    labels[key],
                    _cell(row.get("RETR")),
                    _ratio(row.get("RETR"), "direct"),
                    _ratio(row.get("RETR"), "mod_proxy"),
                    _cell(row.get("STOR")),
                    _ratio(row.get("STOR"), "direct"),
                    _ratio(row.get("STOR"), "mod_proxy"),
                    " / ".join(
                        "—" if cpu.get(d) is None else f"{cpu[d]}" for d in ("RETR", "STOR")
                    ),
                ]
            )
        lines += _table(
            [
                "configuration",
                "RETR",
                "×direct",
                "×mod_proxy",
                "STOR",
                "×direct",
                "×mod_proxy",
                "proxy CPU s/GiB R/S",
            ],
            rows,
        )
        lines += [
            "",
            "MiB/s = bytes / curl `time_total` (connect, TLS, login and the final 226 "
            "included). ×direct: vs the direct connection of the same kind (FTPS or plain); "
            "×mod_proxy: vs mod_proxy in the same configuration. Timed downloads go to "
            "/dev/null and are checked by size (one untimed download per configuration, "
            "before the rounds, by SHA-256); every upload by size and SHA-256 on the "
            "backend's disk.",
        ]

    sessions = report["results"].get("sessions")
    if sessions:
        lines += ["", "## Sessions per second (TLS login + LIST + QUIT)", ""]
        rows = []
        for key, row in sessions.items():
            seq, conc = row.get("sequential"), row.get("concurrent")
            rows.append(
                [
                    labels[key],
                    _cell(seq),
                    _ratio(seq, "direct"),
                    _ratio(seq, "mod_proxy"),
                    _cell(conc),
                    _ratio(conc, "direct"),
                    _ratio(conc, "mod_proxy"),
                    _ratio(conc, "workers=1"),
                    "—" if row.get("proxy_cores") is None else f"{row['proxy_cores']}",
                    str(row.get("failed", 0)),
                ]
            )
        lines += _table(
            [
                "configuration",
                "sequential /s",
                "×direct",
                "×mod_proxy",
                f"{meta['session_concurrency']} concurrent /s",
                "×direct",
                "×mod_proxy",
                "×workers=1",
                "proxy cores",
                "failed",
            ],
            rows,
        )
        lines += [
            "",
            f"Clients loop for {meta['session_seconds']} s per measurement (Python ftplib, "
            "TLS session resumed on the data connection); every LIST must name the payload. "
            "Proxy cores: ftpsproxy's CPU time (all its processes) / wall time, concurrent "
            "runs, median.",
        ]

    concurrent = report["results"].get("concurrent")
    if concurrent:
        lines += [
            "",
            f"## {meta['concurrent_clients']} concurrent downloads of "
            f"{meta['concurrent_mib']} MiB (curl, aggregate MiB/s)",
            "",
        ]
        rows = [
            [
                labels[key],
                _cell(row),
                _ratio(row, "direct"),
                _ratio(row, "mod_proxy"),
                _ratio(row, "workers=1"),
                "—" if row.get("proxy_cpu_s") is None else f"{row['proxy_cpu_s']}",
                str(row.get("failed", 0)),
            ]
            for key, row in concurrent.items()
        ]
        lines += _table(
            [
                "configuration",
                "aggregate MiB/s",
                "×direct",
                "×mod_proxy",
                "×workers=1",
                "proxy CPU s",
                "failed",
            ],
            rows,
        )
        lines += [
            "",
            "Aggregate = all bytes / (first start to last finish); each download checked by size.",
        ]

    latency = report["results"].get("latency")
    if latency:
        lines += ["", "## Control latency: NOOP round trip on a logged-in TLS session (µs)", ""]
        rows = [
            [
                labels[key],
                _cell(row["p50"], "{:.0f}"),
                _cell(row["p99"], "{:.0f}"),
                "—" if row.get("p50_minus_direct") is None else f"{row['p50_minus_direct']:+.0f}",
                "—" if row.get("p99_minus_direct") is None else f"{row['p99_minus_direct']:+.0f}",
            ]
            for key, row in latency.items()
        ]
        lines += _table(["configuration", "p50", "p99", "p50 − direct", "p99 − direct"], rows)
        lines += [
            "",
            f"{meta['noops']} NOOPs per session per round; both proxies relay NOOP to the backend.",
        ]

    memory_lines: list[str] = []
    for idle in report["results"].get("idle", []):
        memory_lines.append(
            f"- **{idle['sessions']} idle TLS sessions** through {labels[idle['config']]}: "
            f"**{idle['rss_mib']:.1f} MiB** RSS ({idle['processes']} process(es); "
            f"{idle['baseline_rss_mib']:.1f} MiB before, {idle['per_session_kib']:.0f} KiB per "
            f"session; PSS {idle['pss_mib']:.1f} MiB); opened in {idle['open_seconds']:.1f} s"
            + (f"; {idle['failed']} failed to log in." if idle.get("failed") else ".")
        )
    slow = report["results"].get("slow_reader")
    if slow:
        memory_lines.append(
            f"- **Slow reader** through {labels[slow['config']]} (fresh proxy, RETR of "
            f"{slow['bytes'] / MIB:.0f} MiB, curl --limit-rate {slow['rate']}, "
            f"{slow['seconds']:.1f} s): peak RSS **{slow['peak_rss_mib']:.1f} MiB** (VmHWM; "
            f"{slow['baseline_rss_mib']:.1f} MiB before; sampled max "
            f"{slow['peak_sampled_rss_mib']:.1f} MiB); verified by size and SHA-256."
        )
    if memory_lines:
        lines += ["", "## Memory", "", *memory_lines]

    goals = report.get("goals")
    if goals:
        lines += ["", "## Targets from issue 6", ""]
        lines += _table(
            ["target", "measured", "goal", "met"],
            [[g["what"], g["measured"], g["goal"], g["met"]] for g in goals],
        )

    profile = report.get("profile")
    if profile:
        lines += ["", "## Proxy profile (py-spy, untimed extra transfers)"]
        for name, summary in profile.items():
            if not isinstance(summary, dict) or not summary.get("self"):
                lines += ["", f"{name}: {summary}"]
                continue
            lines += [
                "",
                f"{name} ({summary['samples']} samples, {summary['mib_per_s_while_sampled']} "
                "MiB/s while sampled) — self time:",
                "",
            ]
            lines += [f"- {share:5.1f}%  {frame}" for frame, share in summary["self"]]
    return "\n".join(lines) + "\n"


def render_png(report: dict[str, Any], path: Path) -> bool:
    """A bar chart of the throughput medians, only if matplotlib happens to be installed."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    throughput = report["results"].get("throughput")
    if not throughput:
        return False
    labels = {t["key"]: t["label"] for t in report["configurations"]}
    keys = list(throughput)
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.4
    for offset, direction in ((-width / 2, "RETR"), (width / 2, "STOR")):
        values = [throughput[k].get(direction, {}).get("median", 0) for k in keys]
        ax.bar([i + offset for i in range(len(keys))], values, width, label=direction)
    ax.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=20, ha="right")
    ax.set_ylabel("MiB/s (median)")
    ax.set_title(
        f"ftpsproxy benchmark, {report['meta']['date']} ({report['meta']['cpus']} cores shared)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
