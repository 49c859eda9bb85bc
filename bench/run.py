"""Benchmark of ftpsproxy against direct connections and ProFTPD mod_proxy (issue 6).

Run from the checkout with the project's virtualenv (as root, for vsftpd and ProFTPD)::

    .venv/bin/python bench/run.py                  # everything, 1 GiB, 3 rounds (~11 min)
    .venv/bin/python bench/run.py --quick          # small sizes, 1 round (< 1 min, smoke run)
    .venv/bin/python bench/run.py --only throughput,sessions --rounds 5 --size 256M

All on 127.0.0.1: a backend (vsftpd 3.0.3 from Debian, plain and explicit FTPS on the
same root; pyftpdlib when vsftpd cannot run), ProFTPD mod_proxy in front of it (TLS
frontend, plain or TLS backend) and ftpsproxy in the same configurations plus plain ->
plain. Each part measures every configuration once per round, rounds interleaved; the
tables show medians and min-max and the ratios to the direct connection and to mod_proxy.
Parts (``--only``): throughput (single-stream RETR/STOR, curl), sessions (TLS login +
LIST + QUIT per second, sequential and concurrent), concurrent (many parallel downloads,
aggregate MiB/s), latency (NOOP round trips), idle (proxy RSS with many idle TLS
sessions), slow-reader (proxy peak RSS relaying to a rate-limited client). Every
transfer is verified. Results: ``<results-dir>/results.md`` and ``results.json`` (and
``results.png`` if matplotlib is importable); logs in ``<results-dir>/logs/``; with
``--save NAME`` also ``<results-dir>/YYYY-MM-DD-NAME.md`` and ``.json``, the files meant
to be committed.

The git state of the checkout (commit, and whether tracked files differ from it) is
taken at the start and recorded in the results; a dirty tree is refused unless
``--allow-dirty`` is given, and then the results say so in bold.

See bench/README.md for what each figure means and the latest results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import backends, modproxy, proxy, report, sessions, transfers
from bench.common import (
    BENCH_DIR,
    MIB,
    REPO,
    BenchError,
    Processes,
    Target,
    check_ports_free,
    make_payload,
    parse_rate,
    parse_size,
    raise_on_sigterm,
    say,
)
from bench.profiling import profile_proxy
from tests.support.certs import make_pki

_SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

PARTS = ("throughput", "sessions", "concurrent", "latency", "idle", "slow-reader")

# Passive ranges, below Linux's ephemeral range (32768-60999) so that outgoing
# connections never hold one of their ports; 100 ports each for 50 parallel transfers.
PASSIVE = {
    "ftpsproxy": (30100, 30199),
    "modproxy-plain": (30200, 30299),
    "backend-plain": (30300, 30399),
    "backend-tls": (30400, 30499),
    "ftpsproxy-tls": (30500, 30599),
    "ftpsproxy-workers": (30600, 30699),
    "ftpsproxy-copy": (30700, 30799),
    "modproxy-tls": (30800, 30899),
    "ftpsproxy-fresh": (30900, 30999),
    "ftpsproxy-pool": (31000, 31099),
}


@dataclass
class Setup:
    """What run() started: the environment for transfers and every configuration."""

    env: transfers.Env
    backend: backends.Backend
    targets: dict[str, Target] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mod_proxy_mode: str = "not run"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ftpsproxy against direct connections and ProFTPD mod_proxy.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (< 1 min)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of: {','.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--size", default=None, help="single-stream payload, e.g. 1G (default)")
    parser.add_argument("--size-mib", type=int, default=None, help="the same in MiB (old option)")
    parser.add_argument("--backend", choices=("auto", "vsftpd", "pyftpdlib"), default="auto")
    parser.add_argument("--no-mod-proxy", action="store_true", help="skip ProFTPD mod_proxy")
    parser.add_argument("--concurrent-clients", type=int, default=None, help="default 50")
    parser.add_argument("--concurrent-size", default=None, help="per client (default 64M)")
    parser.add_argument("--session-seconds", type=float, default=None, help="default 4")
    parser.add_argument("--session-concurrency", type=int, default=None, help="default 16")
    parser.add_argument("--idle-sessions", type=int, default=None, help="default 1000")
    parser.add_argument("--noops", type=int, default=None, help="NOOPs per session (2000)")
    parser.add_argument("--slow-rate", default="20M", help="slow reader's curl --limit-rate")
    parser.add_argument("--profile", action="store_true", help="py-spy the proxy (untimed)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where results.md, results.json and logs/ go (default bench/results)",
    )
    parser.add_argument(
        "--save",
        metavar="NAME",
        default=None,
        help="also write YYYY-MM-DD-NAME.md and .json to the results directory (to commit)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run with uncommitted changes to tracked files (the results are marked DIRTY)",
    )
    parser.add_argument("--scratch", type=Path, default=None, help="scratch parent (/dev/shm)")
    parser.add_argument("--keep-scratch", action="store_true", help="do not delete the scratch")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.size_mib is not None:
        args.size = f"{args.size_mib}M"
    args.size_bytes = parse_size(args.size or ("16M" if quick else "1G"))
    args.rounds = args.rounds or (1 if quick else 3)
    args.concurrent_clients = args.concurrent_clients or (8 if quick else 50)
    args.concurrent_bytes = parse_size(args.concurrent_size or ("4M" if quick else "64M"))
    args.session_seconds = args.session_seconds or (0.5 if quick else 4.0)
    args.session_concurrency = args.session_concurrency or (4 if quick else 16)
    args.idle_sessions = args.idle_sessions or (40 if quick else 1000)
    args.noops = args.noops or (200 if quick else 2000)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")
    if args.size_bytes < MIB or args.rounds < 1:
        parser.error("--size must be at least 1M and --rounds at least 1")
    if args.save is not None and not _SAVE_NAME.fullmatch(args.save):
        parser.error("--save NAME: letters, digits, '-' and '_' only (it becomes a file name)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    git = git_state(REPO)
    if not git["clean"]:
        if not args.allow_dirty:
            print(
                f"bench: {git['problem']}: results from it could not be reproduced from "
                f"commit {git['commit']}.\nCommit or stash first, or pass --allow-dirty "
                "(the results are then marked DIRTY).",
                file=sys.stderr,
            )
            return 2
        say(f"WARNING: {git['problem']}; --allow-dirty: the results are marked DIRTY")
    if shutil.which("curl") is None:
        print("bench: curl is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    results_dir: Path = args.results_dir.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    needed = 3 * args.size_bytes + args.concurrent_bytes + 256 * MIB
    base = args.scratch or _scratch_base(needed, results_dir)
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ftpsproxy-bench-", dir=base))
    scratch.chmod(0o755)  # the backend's unprivileged user must reach the served root
    procs = Processes()
    try:
        result = run(args, scratch, results_dir, logs, procs, git)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_scratch:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    markdown = report.render_markdown(result)
    (results_dir / "results.md").write_text(markdown)
    (results_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    png = report.render_png(result, results_dir / "results.png")
    written = ["results.md", "results.json", *(["results.png"] if png else [])]
    if args.save is not None:
        day = result["meta"]["date"][:10]
        for suffix, text in ((".md", markdown), (".json", json.dumps(result, indent=2) + "\n")):
            name = f"{day}-{args.save}{suffix}"
            (results_dir / name).write_text(text)
            written.append(name)
    print()
    print(markdown)
    print(f"written to {results_dir}: {', '.join(written)}")
    return 0


def _scratch_base(needed: int, results_dir: Path) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > needed:
        return shm
    return results_dir


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _command_version(argv: list[str], words: int = 2) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except OSError:
        return "?"
    return " ".join(done.stdout.decode(errors="replace").split()[:words])


def _git(repo: Path, *args: str) -> str | None:
    """``git -C repo ARGS``'s output, None if git is missing or fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode(errors="replace") if done.returncode == 0 else None


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (untracked ones don't).

    ``clean`` is False when they differ or when git cannot tell (no git, not a checkout):
    either way the results could not be tied to a commit. ``problem`` says which.
    """
    commit = (_git(repo, "rev-parse", "HEAD") or "").strip()
    describe = (_git(repo, "describe", "--always", "--dirty") or "").strip()
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    state: dict[str, Any] = {
        "commit": commit or "unknown",
        "describe": describe or "unknown",
        "dirty": None,
        "changes": [],
        "clean": False,
        "problem": "",
    }
    if not commit or status is None:
        state["problem"] = f"cannot tell the git state of {repo} (no git, or not a checkout)"
        return state
    changes = [line for line in status.splitlines() if line.strip()]
    state.update(dirty=bool(changes), changes=changes, clean=not changes)
    if changes:
        state["problem"] = (
            f"the checkout has uncommitted changes to {len(changes)} tracked file(s): "
            + ", ".join(line[3:] for line in changes[:5])
            + (" …" if len(changes) > 5 else "")
        )
    return state


# -- setting up -------------------------------------------------------------------------------


def start_everything(
    args: argparse.Namespace, scratch: Path, logs: Path, procs: Processes
) -> Setup:
    root, out_dir = scratch / "root", scratch / "out"
    root.mkdir()
    out_dir.mkdir()
    pki = make_pki(scratch / "pki")
    say(f"scratch {scratch}; writing {args.size_bytes // MIB} MiB payload")
    payload_sha256 = make_payload(root / transfers.PAYLOAD_NAME, args.size_bytes)
    make_payload(root / transfers.CONCURRENT_NAME, args.concurrent_bytes)
    (root / transfers.SMOKE_NAME).write_bytes(b"ftpsproxy bench smoke file\n" * 100)
    notes: list[str] = []

    reason = backends.vsftpd_unavailable()
    if args.backend == "vsftpd" and reason:
        raise BenchError(reason)
    if args.backend != "pyftpdlib" and reason is None:
        say("starting vsftpd (plain FTP and explicit FTPS on the same root)")
        backend = backends.start_vsftpd(
            procs, scratch / "servers", root, pki, PASSIVE["backend-plain"], PASSIVE["backend-tls"]
        )
    else:
        if reason and args.backend == "auto":
            notes.append(f"vsftpd cannot run here ({reason}): pyftpdlib is the backend")
        say("starting pyftpdlib (plain FTP and explicit FTPS on the same root)")
        for name in ("backend-plain", "backend-tls"):
            check_ports_free(*PASSIVE[name])
        backend = backends.start_pyftpdlib(
            procs, logs, root, pki, PASSIVE["backend-plain"], PASSIVE["backend-tls"]
        )
    env = transfers.Env(
        root=root,
        out_dir=out_dir,
        cacert=pki.ca_cert,
        user=backend.user,
        password=backend.password,
        payload_size=args.size_bytes,
        payload_sha256=payload_sha256,
        concurrent_size=args.concurrent_bytes,
        curl_timeout=max(60.0, args.size_bytes / MIB / 4),  # fails below ~4 MiB/s
    )
    setup = Setup(env=env, backend=backend, notes=notes)
    t = setup.targets
    t["direct-plain"] = Target("direct-plain", "direct plain", backend.plain_port, False, "direct")
    t["direct-ftps"] = Target("direct-ftps", "direct FTPS", backend.tls_port, True, "direct")

    mp_reason = "--no-mod-proxy" if args.no_mod_proxy else modproxy.unavailable_reason()
    if mp_reason is None:
        say("starting ProFTPD mod_proxy (TLS→plain, TLS→TLS)")
        for key, label, tls, passive in (
            ("mp-tls-plain", "mod_proxy TLS→plain", False, "modproxy-plain"),
            ("mp-tls-tls", "mod_proxy TLS→TLS", True, "modproxy-tls"),
        ):
            check_ports_free(*PASSIVE[passive])
            instance = modproxy.ModProxy(
                key,
                scratch / key,
                backend_port=backend.tls_port if tls else backend.plain_port,
                backend_tls=tls,
                pki=pki,
                passive=PASSIVE[passive],
                inetd=True,
            )
            instance.start(procs)
            t[key] = Target(
                key,
                label,
                instance.port,
                True,
                "mod_proxy",
                instance.pid,
                (("direct", "direct-ftps"),),
            )
            setup.mod_proxy_mode = instance.mode
        if not modproxy.socket_activate_binary():
            notes.append(
                "systemd-socket-activate is missing: mod_proxy runs as a ProFTPD daemon, which "
                "pauses ~0.4 s after each session; its session rate is NOT comparable"
            )
    else:
        notes.append(f"ProFTPD mod_proxy not measured: {mp_reason}")

    say("starting ftpsproxy")
    data_paths = proxy.data_paths()
    splice = ["--data-path", "splice"] if data_paths else []
    fp, fp_port = proxy.start(
        procs, "ftpsproxy", backend_url=backend.url(tls=False), pki=pki,
        passive=PASSIVE["ftpsproxy"], logs=logs, extra=splice,
    )  # fmt: skip
    t["fp-tls-plain"] = Target(
        "fp-tls-plain", "ftpsproxy TLS→plain", fp_port, True, "ftpsproxy", fp.pid,
        (("direct", "direct-ftps"), ("mod_proxy", "mp-tls-plain")),
    )  # fmt: skip
    fp_tls, fp_tls_port = proxy.start(
        procs, "ftpsproxy-tls", backend_url=backend.url(tls=True), pki=pki,
        passive=PASSIVE["ftpsproxy-tls"], logs=logs,
    )  # fmt: skip
    t["fp-tls-tls"] = Target(
        "fp-tls-tls", "ftpsproxy TLS→TLS", fp_tls_port, True, "ftpsproxy", fp_tls.pid,
        (("direct", "direct-ftps"), ("mod_proxy", "mp-tls-tls")),
    )  # fmt: skip
    plain_label = "ftpsproxy plain→plain" + (" (splice)" if data_paths else "")
    t["fp-plain-plain"] = Target(
        "fp-plain-plain", plain_label, fp_port, False, "ftpsproxy", fp.pid,
        (("direct", "direct-plain"),),
    )  # fmt: skip
    if data_paths:
        fp_copy, fp_copy_port = proxy.start(
            procs, "ftpsproxy-copy", backend_url=backend.url(tls=False), pki=pki,
            passive=PASSIVE["ftpsproxy-copy"], logs=logs, extra=["--data-path", "copy"],
        )  # fmt: skip
        t["fp-plain-plain-copy"] = Target(
            "fp-plain-plain-copy", "ftpsproxy plain→plain (copy)", fp_copy_port, False,
            "ftpsproxy", fp_copy.pid, (("direct", "direct-plain"), ("splice", "fp-plain-plain")),
        )  # fmt: skip
    else:
        notes.append("`twistd ftpsproxy --help` has no --data-path splice|copy: not compared")
    if proxy.supports_pools():
        fp_pool, fp_pool_port = proxy.start(
            procs, "ftpsproxy-pool", backend_url=backend.url(tls=False), pki=pki,
            passive=PASSIVE["ftpsproxy-pool"], logs=logs, extra=splice, pool=3,
        )  # fmt: skip
        t["fp-tls-plain-pool3"] = Target(
            "fp-tls-plain-pool3", "ftpsproxy TLS→plain, pool of 3", fp_pool_port, True,
            "ftpsproxy", fp_pool.pid,
            (("direct", "direct-ftps"), ("one backend", "fp-tls-plain")),
        )  # fmt: skip
    else:
        notes.append("`twistd ftpsproxy --help` has no --balance: the pool row is skipped")
    if proxy.supports_workers():
        fp_w, fp_w_port = proxy.start(
            procs, "ftpsproxy-workers", backend_url=backend.url(tls=False), pki=pki,
            passive=PASSIVE["ftpsproxy-workers"], logs=logs, extra=[*splice, "--workers", "2"],
        )  # fmt: skip
        t["fp-tls-plain-w2"] = Target(
            "fp-tls-plain-w2", "ftpsproxy TLS→plain, workers=2", fp_w_port, True, "ftpsproxy",
            fp_w.pid,
            (("direct", "direct-ftps"), ("mod_proxy", "mp-tls-plain"),
             ("workers=1", "fp-tls-plain")),
        )  # fmt: skip
    else:
        notes.append("`twistd ftpsproxy --help` has no --workers: the workers=2 rows are skipped")
    for note in notes:
        say(f"note: {note}")
    transfers.smoke_check(env, list(t.values()))
    return setup


# -- the parts --------------------------------------------------------------------------------


def _pick(setup: Setup, *keys: str) -> list[Target]:
    return [setup.targets[k] for k in keys if k in setup.targets]


def part_throughput(args: argparse.Namespace, setup: Setup, raw: dict[str, Any]) -> Any:
    chosen = _pick(
        setup, "direct-plain", "direct-ftps", "mp-tls-plain", "mp-tls-tls", "fp-tls-plain",
        "fp-tls-tls", "fp-plain-plain", "fp-plain-plain-copy",
    )  # fmt: skip
    done: list[transfers.Transfer] = []
    for target in chosen:  # the timed downloads go to /dev/null: check the bytes here
        transfers.verify_download(setup.env, target)
        say(f"{target.label}: an untimed download matches the payload's SHA-256")
    for round_no in range(1, args.rounds + 1):
        for direction in ("RETR", "STOR"):
            for target in chosen:
                try:
                    result = transfers.transfer(setup.env, target, direction, round_no)
                except BenchError as error:
                    if target.kind != "mod_proxy":
                        raise
                    # mod_proxy's shared SQLite tables sometimes lock a session out: retry once.
                    say(f"round {round_no} {direction} {target.label}: {error}; retrying once")
                    raw.setdefault("retries", []).append(f"{target.key} {direction}: {error}")
                    result = transfers.transfer(setup.env, target, direction, round_no)
                done.append(result)
                cpu = "" if result.proxy_cpu_s is None else f", proxy CPU {result.proxy_cpu_s:.2f}s"
                say(
                    f"round {round_no} {direction} {target.label:<30} {result.mib_per_s:7.1f} "
                    f"MiB/s ({result.seconds:.2f}s{cpu}) verified {result.verified}"
                )
    raw["transfers"] = [asdict(d) for d in done]
    rows: dict[str, dict[str, Any]] = {t.key: {} for t in chosen}
    for direction in ("RETR", "STOR"):
        summary = report.summarize_metric(
            chosen, done, lambda r: r.mib_per_s, report.where("direction", direction)
        )
        for key, stats in summary.items():
            rows[key][direction] = stats
    for target in chosen:
        rows[target.key]["proxy_cpu_s_per_gib"] = {
            d: report.cpu_per_gib(done, target.key, d) for d in ("RETR", "STOR")
        }
    return rows


def part_sessions(args: argparse.Namespace, setup: Setup, raw: dict[str, Any]) -> Any:
    chosen = _pick(
        setup, "direct-ftps", "mp-tls-plain", "mp-tls-tls", "fp-tls-plain", "fp-tls-tls",
        "fp-tls-plain-pool3", "fp-tls-plain-w2",
    )  # fmt: skip
    done: list[sessions.SessionRate] = []
    for round_no in range(1, args.rounds + 1):
        for concurrency in (1, args.session_concurrency):
            for target in chosen:
                result = sessions.session_rate(
                    target,
                    user=setup.env.user,
                    password=setup.env.password,
                    cafile=setup.env.cacert,
                    expect=transfers.PAYLOAD_NAME,
                    concurrency=concurrency,
                    seconds=args.session_seconds,
                    round_no=round_no,
                    processes=min(4, concurrency),
                )
                done.append(result)
                say(
                    f"round {round_no} sessions ×{concurrency:<3} {target.label:<30} "
                    f"{result.per_second:7.1f}/s ({result.sessions} verified, "
                    f"{result.failed} failed{': ' + result.errors[0] if result.errors else ''})"
                )
    raw["sessions"] = [asdict(d) for d in done]
    rows: dict[str, dict[str, Any]] = {t.key: {} for t in chosen}
    for name, level in (("sequential", 1), ("concurrent", args.session_concurrency)):
        summary = report.summarize_metric(
            chosen, done, lambda r: r.per_second, report.where("concurrency", level)
        )
        for key, stats in summary.items():
            rows[key][name] = stats
    for target in chosen:
        rows[target.key]["failed"] = sum(r.failed for r in done if r.config == target.key)
        # How much of the machine ftpsproxy used at the concurrent level (1.0 = one core).
        busy = [
            r.proxy_cpu_s / r.seconds
            for r in done
            if r.config == target.key
            and r.concurrency == args.session_concurrency
            and r.proxy_cpu_s is not None
            and r.seconds > 0
        ]
        rows[target.key]["proxy_cores"] = round(statistics.median(busy), 2) if busy else None
    return rows


def part_concurrent(args: argparse.Namespace, setup: Setup, raw: dict[str, Any]) -> Any:
    chosen = _pick(setup, "direct-ftps", "mp-tls-plain", "fp-tls-plain", "fp-tls-plain-w2")
    done: list[transfers.Concurrent] = []
    for round_no in range(1, args.rounds + 1):
        for target in chosen:
            result = transfers.concurrent_downloads(
                setup.env,
                target,
                args.concurrent_clients,
                round_no,
                tolerate_failures=target.kind == "mod_proxy",
            )
            done.append(result)
            say(
                f"round {round_no} {args.concurrent_clients} downloads {target.label:<30} "
                f"{result.mib_per_s:7.1f} MiB/s aggregate ({result.seconds:.1f}s) verified size"
                + (f", {result.failed} FAILED: {result.errors[0]}" if result.failed else "")
            )
    raw["concurrent"] = [asdict(d) for d in done]
    rows = report.summarize_metric(chosen, done, lambda r: r.mib_per_s)
    for key, row in rows.items():
        cpu = [r.proxy_cpu_s for r in done if r.config == key and r.proxy_cpu_s is not None]
        row["proxy_cpu_s"] = round(statistics.median(cpu), 1) if cpu else None
        row["failed"] = sum(r.failed for r in done if r.config == key)
    return rows


def part_latency(args: argparse.Namespace, setup: Setup, raw: dict[str, Any]) -> Any:
    chosen = _pick(setup, "direct-ftps", "mp-tls-plain", "mp-tls-tls", "fp-tls-plain", "fp-tls-tls")
    done: list[sessions.Latency] = []
    for round_no in range(1, args.rounds + 1):
        for target in chosen:
            result = sessions.noop_latency(
                target,
                user=setup.env.user,
                password=setup.env.password,
                cafile=setup.env.cacert,
                count=args.noops,
                round_no=round_no,
            )
            done.append(result)
            say(
                f"round {round_no} NOOP {target.label:<30} p50 {result.p50_us:7.0f} µs "
                f"p99 {result.p99_us:7.0f} µs"
            )
    raw["latency"] = [asdict(d) for d in done]
    rows: dict[str, dict[str, Any]] = {}
    for target in chosen:
        mine = [r for r in done if r.config == target.key]
        rows[target.key] = {
            "p50": report.stats([r.p50_us for r in mine], 0),
            "p99": report.stats([r.p99_us for r in mine], 0),
        }
    direct = rows.get("direct-ftps")
    for key, row in rows.items():
        if direct is not None and key != "direct-ftps":
            row["p50_minus_direct"] = round(row["p50"]["median"] - direct["p50"]["median"])
            row["p99_minus_direct"] = round(row["p99"]["median"] - direct["p99"]["median"])
    return rows


def _fresh_proxy(setup: Setup, procs: Processes, logs: Path, name: str) -> Target:
    pki_dir = setup.env.cacert.parent
    from tests.support.certs import Pki

    pki = Pki(
        directory=pki_dir,
        key_type="rsa",
        ca_cert=setup.env.cacert,
        ca_key=pki_dir / "ca.key",
        server_cert=pki_dir / "server.pem",
        server_key=pki_dir / "server.key",
        server_combined=pki_dir / "server-combined.pem",
    )
    proc, port = proxy.start(
        procs, name, backend_url=setup.backend.url(tls=False), pki=pki,
        passive=PASSIVE["ftpsproxy-fresh"], logs=logs,
    )  # fmt: skip
    target = Target("fp-tls-plain-fresh", "a fresh ftpsproxy TLS→plain", port, True,
                    "ftpsproxy", proc.pid)  # fmt: skip
    setup.targets[target.key] = target
    return target


def part_idle(
    args: argparse.Namespace, setup: Setup, procs: Processes, logs: Path
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    target = _fresh_proxy(setup, procs, logs, "ftpsproxy-idle")
    say(f"idle: {args.idle_sessions} TLS sessions through {target.label}")
    idle = sessions.idle_sessions(
        target, count=args.idle_sessions, user=setup.env.user, password=setup.env.password,
        cafile=setup.env.cacert,
    )  # fmt: skip
    say(
        f"idle: {idle.rss_mib:.1f} MiB RSS with {idle.sessions} sessions "
        f"({idle.per_session_kib:.0f} KiB each)"
    )
    results.append(asdict(idle))
    _stop_target(procs, target)
    mp = setup.targets.get("mp-tls-plain")
    if mp is not None and mp.proxy_pid is not None:
        count = min(args.idle_sessions, 10 if args.quick else 100)
        say(f"idle: {count} TLS sessions through {mp.label} (one process each)")
        idle = sessions.idle_sessions(
            mp, count=count, user=setup.env.user, password=setup.env.password,
            cafile=setup.env.cacert, parallel=10, tolerate_failures=True,
        )  # fmt: skip
        failed = f" ({idle.failed} of {count} failed to open)" if idle.failed else ""
        say(f"idle: mod_proxy {idle.pss_mib:.1f} MiB PSS with {idle.sessions} sessions{failed}")
        results.append(asdict(idle))
    return results


def _stop_target(procs: Processes, target: Target) -> None:
    for _, (_, proc) in list(procs._running.items()):
        if proc.pid == target.proxy_pid:
            procs.stop(proc)


def part_slow_reader(
    args: argparse.Namespace, setup: Setup, procs: Processes, logs: Path
) -> dict[str, Any]:
    target = _fresh_proxy(setup, procs, logs, "ftpsproxy-slow-reader")
    rate = parse_rate(args.slow_rate)
    say(
        f"slow reader: {args.size_bytes // MIB} MiB through {target.label} at "
        f"{args.slow_rate}/s (~{args.size_bytes / rate:.0f} s)"
    )
    memory = transfers.slow_reader(setup.env, target, args.slow_rate, rate)
    say(f"slow reader: proxy peak RSS {memory.peak_rss_mib:.1f} MiB, verified {memory.verified}")
    _stop_target(procs, target)
    return asdict(memory)


def goals(results: dict[str, Any], idle_target: int) -> list[dict[str, str]]:
    """The targets of issue 6, checked against this run's medians."""
    out: list[dict[str, str]] = []

    def add(
        what: str, value: float | None, goal: str, met: bool | None, fmt: str = "{:.2f}×"
    ) -> None:
        shown = "—" if value is None else fmt.format(value)
        out.append({"what": what, "measured": shown, "goal": goal,
                    "met": "—" if met is None else ("yes" if met else "**no**")})  # fmt: skip

    throughput = results.get("throughput", {})
    for key, name in (("fp-tls-plain", "TLS→plain"), ("fp-tls-tls", "TLS→TLS")):
        for direction in ("RETR", "STOR"):
            ratio = throughput.get(key, {}).get(direction, {}).get("ratios", {}).get("mod_proxy")
            add(f"{direction} ftpsproxy {name} vs mod_proxy", ratio, "≥ 1.0× (milestone ≥ 0.6×)",
                None if ratio is None else ratio >= 1.0)  # fmt: skip
    for direction in ("RETR", "STOR"):
        ratio = (
            throughput.get("fp-plain-plain", {}).get(direction, {}).get("ratios", {}).get("direct")
        )
        add(f"{direction} ftpsproxy plain→plain vs direct plain", ratio, "≥ 0.9×",
            None if ratio is None else ratio >= 0.9)  # fmt: skip
    for level in ("sequential", "concurrent"):
        ratio = (
            results.get("sessions", {})
            .get("fp-tls-plain", {})
            .get(level, {})
            .get("ratios", {})
            .get("mod_proxy")
        )
        add(f"sessions/s ({level}) ftpsproxy TLS→plain vs mod_proxy", ratio, "≥ 1.0×",
            None if ratio is None else ratio >= 1.0)  # fmt: skip
    slow = results.get("slow_reader")
    if slow:
        add("peak RSS, slow reader", slow["peak_rss_mib"], "< 100 MiB", slow["peak_rss_mib"] < 100,
            "{:.1f} MiB")  # fmt: skip
    for idle in results.get("idle", []):
        if idle["config"].startswith("fp"):
            add(f"RSS with {idle['sessions']} idle TLS sessions", idle["rss_mib"],
                f"< 300 MiB (for {idle_target})", idle["rss_mib"] < 300, "{:.1f} MiB")  # fmt: skip
    return out


def run(
    args: argparse.Namespace,
    scratch: Path,
    results_dir: Path,
    logs: Path,
    procs: Processes,
    git: dict[str, Any],
) -> dict[str, Any]:
    started = time.monotonic()
    load_start = _loadavg()
    setup = start_everything(args, scratch, logs, procs)
    raw: dict[str, Any] = {}
    results: dict[str, Any] = {}
    if "throughput" in args.parts:
        results["throughput"] = part_throughput(args, setup, raw)
    profile: dict[str, Any] | None = None
    if args.profile:
        say("profiling ftpsproxy with py-spy (extra RETR and STOR, untimed)")
        profile = {}
        for key in ("fp-tls-plain", "fp-tls-tls"):
            profile.update(profile_proxy(setup.env, setup.targets[key], results_dir))
    if "sessions" in args.parts:
        results["sessions"] = part_sessions(args, setup, raw)
    if "concurrent" in args.parts:
        results["concurrent"] = part_concurrent(args, setup, raw)
    if "latency" in args.parts:
        results["latency"] = part_latency(args, setup, raw)
    if "idle" in args.parts:
        results["idle"] = part_idle(args, setup, procs, logs)
    if "slow-reader" in args.parts:
        results["slow_reader"] = part_slow_reader(args, setup, procs, logs)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git["describe"],
        "git": {k: git[k] for k in ("commit", "describe", "dirty", "changes")},
        "dirty": not git["clean"],
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "backend": setup.backend.version,
        "mod_proxy": modproxy.version()
        if "mp-tls-plain" in setup.targets
        else "mod_proxy: not run",
        "mod_proxy_mode": setup.mod_proxy_mode,
        "ftpsproxy": proxy.version(),
        "workers_option": proxy.supports_workers(),
        "data_path_option": list(proxy.data_paths()),
        "curl": _command_version(["curl", "--version"]),
        "openssl": ssl.OPENSSL_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "payload_mib": args.size_bytes // MIB,
        "rounds": args.rounds,
        "parts": args.parts,
        "session_seconds": args.session_seconds,
        "session_concurrency": args.session_concurrency,
        "concurrent_clients": args.concurrent_clients,
        "concurrent_mib": args.concurrent_bytes // MIB,
        "idle_sessions": args.idle_sessions,
        "noops": args.noops,
        "notes": setup.notes,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out: dict[str, Any] = {
        "meta": meta,
        "configurations": [asdict(t) for t in setup.targets.values()],
        "results": results,
        "goals": goals(results, args.idle_sessions),
        "raw": raw,
    }
    if profile is not None:
        out["profile"] = profile
    return out


if __name__ == "__main__":
    sys.exit(main())
