"""Data transfers with curl: single-stream RETR/STOR, many concurrent downloads, a slow reader.

Every transfer is verified after the clock stops: uploads by size and SHA-256 of the
file on the backend's disk (a backend may answer 226 to a truncated upload, so the reply
alone proves nothing), downloads by size.  Timed downloads go to ``/dev/null``: written
into tmpfs, a 1 GiB download capped the client near 1,000 MiB/s and swung up to 3x
between rounds (page allocation in the VM), so the direct plain baseline measured the
client's memory, not the network path.  The bytes of each configuration's download are
checked by SHA-256 once, untimed, before the rounds (``verify_download``).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    HOST,
    MIB,
    BenchError,
    Target,
    children_cpu_seconds,
    proc_status_kib,
    sha256_file,
    tree_cpu_seconds,
    tree_pids,
)

PAYLOAD_NAME = "payload.bin"
CONCURRENT_NAME = "concurrent.bin"
SMOKE_NAME = "smoke.txt"
RSS_POLL_INTERVAL = 0.05
_WRITE_OUT = (
    "\nBENCH %{size_download} %{size_upload} %{time_total} %{time_connect}"
    " %{time_appconnect} %{time_pretransfer} %{time_starttransfer}\n"
)


@dataclass(frozen=True)
class Env:
    """What transfers need to know about the served files and the login."""

    root: Path  # the backend's served directory (uploads are checked there)
    out_dir: Path  # where downloads go
    cacert: Path
    user: str
    password: str
    payload_size: int
    payload_sha256: str
    concurrent_size: int
    curl_timeout: float


@dataclass
class Transfer:
    config: str
    direction: str  # "RETR" or "STOR"
    round: int
    bytes: int
    seconds: float  # curl's time_total
    mib_per_s: float
    time_appconnect: float
    time_starttransfer: float
    proxy_cpu_s: float | None
    client_cpu_s: float
    verified: str  # what was checked


def curl_argv(env: Env, target: Target, remote: str, *extra: str, max_time: float = 0) -> list[str]:
    argv = ["curl", "--silent", "--show-error", "--max-time", f"{max_time or env.curl_timeout:.0f}"]
    argv += ["--write-out", _WRITE_OUT]
    if target.tls:
        argv += ["--ssl-reqd", "--cacert", str(env.cacert)]
    argv += [*extra, f"ftp://{env.user}:{env.password}@{HOST}:{target.port}/{remote}"]
    return argv


def _parse_write_out(stdout: bytes) -> list[float]:
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        if line.startswith("BENCH "):
            return [float(value) for value in line.split()[1:]]
    raise BenchError(f"no curl --write-out line in {stdout[-200:]!r}")


def run_curl(argv: list[str], timeout: float) -> list[float]:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"curl timed out after {timeout:.0f} s: {argv[-1]}") from error
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise BenchError(f"curl exit {done.returncode}: {stderr} ({argv[-1]})")
    return _parse_write_out(done.stdout)


def proxy_cpu(target: Target) -> float | None:
    if target.kind != "ftpsproxy" or target.proxy_pid is None:
        return None  # mod_proxy's per-session processes are gone before we could read them
    return tree_cpu_seconds(tree_pids(target.proxy_pid))


def transfer(env: Env, target: Target, direction: str, round_no: int) -> Transfer:
    """One timed, then verified, RETR (to /dev/null) or STOR of the payload."""
    upload_name = f"upload-{target.key}-{round_no}.bin"
    uploaded = env.root / upload_name
    uploaded.unlink(missing_ok=True)
    if direction == "RETR":
        argv = curl_argv(env, target, PAYLOAD_NAME, "--output", "/dev/null")
    else:
        argv = curl_argv(env, target, upload_name, "--upload-file", str(env.root / PAYLOAD_NAME))
    # ftpsproxy's CPU is read from /proc; mod_proxy's per-session processes are gone by
    # the time the transfer ends, so its CPU is not measured.
    cpu0 = proxy_cpu(target)
    client0 = children_cpu_seconds()
    size_down, size_up, total, _, appconnect, _, starttransfer = run_curl(
        argv, env.curl_timeout + 15
    )
    client_cpu = children_cpu_seconds() - client0
    cpu1 = proxy_cpu(target)

    where = f"{target.label} {direction} round {round_no}"
    if direction == "STOR":
        _check_file(uploaded, env, where)
    moved = size_down if direction == "RETR" else size_up
    if int(moved) != env.payload_size:
        raise BenchError(f"{where}: curl reports {moved:.0f} bytes moved")
    return Transfer(
        config=target.key,
        direction=direction,
        round=round_no,
        bytes=int(moved),
        seconds=total,
        mib_per_s=moved / total / MIB,
        time_appconnect=appconnect,
        time_starttransfer=starttransfer,
        proxy_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu_s=client_cpu,
        verified="size" if direction == "RETR" else "size+sha256",
    )


def _check_file(path: Path, env: Env, where: str) -> None:
    """*path* holds the payload, byte for byte; then it is removed."""
    size = path.stat().st_size if path.exists() else -1
    if size != env.payload_size:
        raise BenchError(f"{where}: {path.name} has {size} bytes, want {env.payload_size}")
    if sha256_file(path) != env.payload_sha256:
        raise BenchError(f"{where}: SHA-256 of {path.name} differs from the payload's")
    path.unlink()


def verify_download(env: Env, target: Target) -> None:
    """One untimed download of the payload through *target*, checked by SHA-256."""
    download = env.out_dir / "verify.bin"
    download.unlink(missing_ok=True)
    run_curl(curl_argv(env, target, PAYLOAD_NAME, "--output", str(download)), env.curl_timeout)
    _check_file(download, env, f"{target.label} RETR (untimed check)")


def smoke_check(env: Env, targets: list[Target]) -> None:
    """A tiny RETR through every configuration before the long timed part."""
    expected = (env.root / SMOKE_NAME).read_bytes()
    for target in targets:
        out = env.out_dir / "smoke.out"
        out.unlink(missing_ok=True)
        run_curl(curl_argv(env, target, SMOKE_NAME, "--output", str(out)), 60)
        if not out.exists() or out.read_bytes() != expected:
            raise BenchError(f"{target.label}: smoke download differs")
        out.unlink()


# -- many clients at once ---------------------------------------------------------------------


@dataclass
class Concurrent:
    config: str
    round: int
    clients: int
    bytes: int  # all clients together
    seconds: float  # first start to last finish
    mib_per_s: float  # aggregate
    slowest_s: float
    fastest_s: float
    proxy_cpu_s: float | None
    failed: int
    errors: list[str]
    verified: str


def concurrent_downloads(
    env: Env, target: Target, clients: int, round_no: int, *, tolerate_failures: bool = False
) -> Concurrent:
    """``clients`` curls download the same file at once (to /dev/null); aggregate MiB/s.

    Each download is checked by size (curl's byte count); curl must exit 0. With
    ``tolerate_failures`` (mod_proxy, whose per-process SQLite tables lock up under
    concurrency) failed downloads are counted instead, and the aggregate covers the rest.
    """
    argv = curl_argv(env, target, CONCURRENT_NAME, "--output", "/dev/null")
    cpu0 = proxy_cpu(target)
    started = time.monotonic()
    running = [
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(clients)
    ]
    results: list[tuple[int, bytes, bytes]] = []
    try:
        for proc in running:
            out, err = proc.communicate(timeout=env.curl_timeout + 30)
            results.append((proc.returncode, out, err))
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    seconds = time.monotonic() - started
    cpu1 = proxy_cpu(target)
    times: list[float] = []
    errors: list[str] = []
    for code, out, err in results:
        if code != 0:
            errors.append(f"curl exit {code}: {err.decode(errors='replace').strip()}")
            continue
        size_down, _, total, *_ = _parse_write_out(out)
        if int(size_down) != env.concurrent_size:
            errors.append(f"got {size_down:.0f} bytes, want {env.concurrent_size}")
            continue
        times.append(total)
    if errors and (not tolerate_failures or not times):
        raise BenchError(
            f"{target.label}: {len(errors)} concurrent download(s) failed: {errors[0]}"
        )
    moved = len(times) * env.concurrent_size
    return Concurrent(
        config=target.key,
        round=round_no,
        clients=clients,
        bytes=moved,
        seconds=round(seconds, 3),
        mib_per_s=moved / seconds / MIB,
        slowest_s=max(times),
        fastest_s=min(times),
        proxy_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        failed=len(errors),
        errors=errors[:5],
        verified="size",
    )


# -- slow reader ------------------------------------------------------------------------------


@dataclass
class SlowReader:
    config: str
    rate: str
    bytes: int
    seconds: float
    baseline_rss_mib: float
    peak_rss_mib: float  # VmHWM at the end of the transfer
    peak_sampled_rss_mib: float
    samples: int
    rss_timeline_mib: list[tuple[float, float]]  # (seconds, VmRSS) about once a second
    verified: str


def slow_reader(env: Env, target: Target, rate: str, rate_bytes: float) -> SlowReader:
    """Peak RSS of a (fresh) proxy relaying one full download to a rate-limited client."""
    assert target.proxy_pid is not None
    pid = target.proxy_pid
    download = env.out_dir / "download.bin"
    download.unlink(missing_ok=True)
    timeout = env.payload_size / rate_bytes * 2 + 60
    argv = curl_argv(
        env, target, PAYLOAD_NAME, "--limit-rate", rate, "--output", str(download), max_time=timeout
    )
    baseline = proc_status_kib(pid, "VmRSS") / 1024
    peak_sampled = baseline
    timeline: list[tuple[float, float]] = [(0.0, round(baseline, 2))]
    samples = 0
    started = time.monotonic()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as curl:
        try:
            max_samples = int(timeout / RSS_POLL_INTERVAL) + 100
            while curl.poll() is None and samples < max_samples:
                rss = sum(proc_status_kib(p, "VmRSS") for p in tree_pids(pid)) / 1024
                samples += 1
                peak_sampled = max(peak_sampled, rss)
                elapsed = time.monotonic() - started
                if elapsed - timeline[-1][0] >= 1.0:
                    timeline.append((round(elapsed, 2), round(rss, 2)))
                time.sleep(RSS_POLL_INTERVAL)
            _, stderr = curl.communicate(timeout=30)
        except BaseException:
            curl.kill()
            raise
    seconds = time.monotonic() - started
    peak = max(proc_status_kib(p, "VmHWM") for p in tree_pids(pid)) / 1024
    if curl.returncode != 0:
        raise BenchError(f"slow reader: curl exit {curl.returncode}: {stderr.decode().strip()}")
    size = download.stat().st_size if download.exists() else -1
    if size != env.payload_size or sha256_file(download) != env.payload_sha256:
        raise BenchError(f"slow reader: download corrupt ({size} bytes)")
    download.unlink()
    return SlowReader(
        config=target.key,
        rate=rate,
        bytes=size,
        seconds=round(seconds, 2),
        baseline_rss_mib=round(baseline, 2),
        peak_rss_mib=round(peak, 2),
        peak_sampled_rss_mib=round(peak_sampled, 2),
        samples=samples,
        rss_timeline_mib=timeline,
        verified="size+sha256",
    )
