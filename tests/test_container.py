"""The container image (``deploy/container``), built and run for real with podman.

``deploy/container/build.sh`` builds it offline on a Debian base bootstrapped here with
mmdebstrap (no registry is reachable), then the image runs as an operator would run it: host
network, the TOML and the certificate mounted read-only at ``/etc/ftpsproxy``, the default
command. A file goes up and down through it to a pyftpdlib backend on the host, checked by
sha256; ``podman stop`` (SIGTERM) lands mid-download, the download still completes (the
drain), and the container's exit code is 0.

The base rootfs and the dependency wheels are cached in ``FTPSPROXY_CONTAINER_CACHE``
(default ``/var/tmp/ftpsproxy-container-cache``, outside the checkout), so a repeat run
only rebuilds the project's wheel and the image's one layer (~13 s here; the first run
bootstraps the base and builds the dependency wheels: ~46 s).
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml  # the test extra's (kubernetes-validate's dependency)

from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.ci import unavailable
from tests.support.clients import PausedDownload, client_context, make_random_file, sha256_file
from tests.support.ports import free_port, free_port_range
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "deploy" / "container" / "build.sh"
IMAGE = "localhost/ftpsproxy:test"
CACHE = Path(os.environ.get("FTPSPROXY_CONTAINER_CACHE", "/var/tmp/ftpsproxy-container-cache"))
RUNC = "/usr/sbin/runc"
#: crun (podman's default runtime) refuses this machine's hybrid cgroup layout; runc works.
PODMAN = ["podman", "--runtime", RUNC, "--cgroup-manager=cgroupfs"]
#: Without explicit limits runc fails here on setrlimit.
LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
#: The first build bootstraps the base (mmdebstrap ~20 s) and builds the wheels.
BUILD_TIMEOUT = 300.0
MIB = 1024 * 1024


def _podman(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run podman with this machine's settings; its stdout (the failure names its stderr)."""
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def _require_container_tools() -> None:
    """Skip (fail under CI=true) unless this machine can build and run the image."""
    if os.geteuid() != 0:
        unavailable("the container test runs podman as root (rootless storage is not set up)")
    missing = [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]
    if not os.access(RUNC, os.X_OK):
        missing.append("runc")
    if missing:
        names = " ".join(missing)
        unavailable(f"{names} not installed (Debian: apt-get install {names})")


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built by deploy/container/build.sh (the script under test) as ``IMAGE``."""
    _require_container_tools()
    started = time.monotonic()
    env = {**os.environ, "FTPSPROXY_CACHE": str(CACHE)}
    built = subprocess.run(
        ["bash", str(BUILD_SCRIPT), IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=env,
        check=False,
    )
    print(f"build.sh: {time.monotonic() - started:.1f} s\n{built.stdout}{built.stderr}")
    assert built.returncode == 0, f"build.sh failed:\n{built.stdout}{built.stderr}"
    return IMAGE


class Container:
    """One detached ``podman run`` of the image; removed (forcibly) at the end."""

    def __init__(self, image: str, config_dir: Path, health_url: str) -> None:
        self.name = f"ftpsproxy-test-{uuid.uuid4().hex[:12]}"
        self.image = image
        self.config_dir = config_dir
        self.health_url = health_url

    def run(self, *extra: str) -> None:
        _podman(
            "run",
            "--detach",
            "--name",
            self.name,
            "--network=host",
            *LIMITS,
            # The image's HEALTHCHECK runs on demand below (`podman healthcheck run`): its
            # timer would need systemd, which this machine does not run.
            "--health-interval=disable",
            "--volume",
            f"{self.config_dir}:/etc/ftpsproxy:ro",
            "--env",
            f"FTPSPROXY_HEALTH_URL={self.health_url}",
            *extra,
            self.image,
        )

    def state(self, field: str) -> str:
        return _podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).strip()

    def logs(self) -> str:
        done = subprocess.run(
            [*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout + done.stderr

    def remove(self) -> None:
        _podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def container_setup(
    image: str, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> Iterator[tuple[Container, int, int]]:
    """A running container in front of ``backend``: (container, FTP port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    low, high = free_port_range(8)
    # The container's user (uid 10001) reads the mount: 0755/0644 copies, not the test
    # PKI's own files (pytest's tmp tree is private to root).
    config_dir = tmp_path / "etc-ftpsproxy"
    config_dir.mkdir(mode=0o755)
    config_dir.chmod(0o755)
    for source, name in ((pki.server_cert, "cert.pem"), (pki.server_key, "key.pem")):
        shutil.copyfile(source, config_dir / name)
        (config_dir / name).chmod(0o644)
    (config_dir / "ftpsproxy.toml").write_text(
        f'backend = "ftp://127.0.0.1:{backend.port}"\n'
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        'certificate = "/etc/ftpsproxy/cert.pem"\n'
        'private-key = "/etc/ftpsproxy/key.pem"\n'
        f'passive-ports = "{low}-{high}"\n'
        'public-address = "127.0.0.1"\n'
        f'metrics = "tcp:{metrics_port}:interface=127.0.0.1"\n'
        "drain-timeout = 60\n"
    )
    (config_dir / "ftpsproxy.toml").chmod(0o644)
    container = Container(image, config_dir, f"http://127.0.0.1:{metrics_port}/healthz")
    try:
        container.run()
        yield container, port, metrics_port
    finally:
        print(f"--- container {container.name} ---\n{container.logs()}")
        container.remove()


def _http_status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _ftp_tls(port: int, pki: Pki, backend: PyftpdBackend) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=30)
    ftp.connect("127.0.0.1", port)
    ftp.auth()
    ftp.login(backend.user, backend.password)
    ftp.prot_p()
    return ftp


def _stop_in_background(container: Container, grace: int) -> tuple[threading.Thread, list[str]]:
    """``podman stop`` (SIGTERM, then SIGKILL after *grace* s) in a thread: it blocks until
    the container has exited. Its output, or its error, lands in the returned list."""
    result: list[str] = []

    def stop() -> None:
        try:
            result.append(_podman("stop", "--time", str(grace), container.name, timeout=grace + 30))
        except (AssertionError, subprocess.TimeoutExpired) as error:
            result.append(f"error: {error}")

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread, result


def test_image_runs_non_root_relays_files_and_drains_to_exit_0_on_podman_stop(
    container_setup: tuple[Container, int, int], backend: PyftpdBackend, pki: Pki
) -> None:
    """Fails when the image does not build or start from the mounted config, runs as root,
    loses or changes a byte, has no working HEALTHCHECK, cuts a running download on SIGTERM,
    or exits with anything but 0 (137: SIGKILL after the grace period; 143: died of SIGTERM)."""
    container, port, metrics_port = container_setup
    ready = f"http://127.0.0.1:{metrics_port}/readyz"

    def is_ready() -> bool:
        if container.state("Status") != "running":
            raise AssertionError(f"the container stopped:\n{container.logs()}")
        return _http_status(ready)[0] == 200

    wait_until(is_ready, 60, "/readyz 200 from the container")
    assert _podman("exec", container.name, "id", "-u").strip() == "10001"
    image_config = _podman("image", "inspect", "--format", "{{json .Config}}", container.image)
    assert '"StopSignal":"SIGTERM"' in image_config.replace(" ", "")
    # The image's own HEALTHCHECK command, run inside the container: /healthz answers.
    _podman("healthcheck", "run", container.name)

    # Upload and download through the container, every byte checked on the backend's disk.
    upload = backend.root.parent / "upload.bin"
    up_digest = make_random_file(upload, 4 * MIB)
    ftp = _ftp_tls(port, pki, backend)
    with open(upload, "rb") as source:
        ftp.storbinary("STOR up.bin", source)
    assert sha256_file(backend.path("up.bin")) == up_digest
    fetched = io.BytesIO()
    ftp.retrbinary("RETR up.bin", fetched.write)
    assert len(fetched.getvalue()) == 4 * MIB
    ftp.quit()

    # podman stop mid-download: the container drains, the download completes, exit 0.
    size = 16 * MIB
    digest = make_random_file(backend.path("big.bin"), size)
    busy = _ftp_tls(port, pki, backend)
    busy.voidcmd("TYPE I")
    final: list[str] = []
    download = PausedDownload(
        busy.transfercmd("RETR big.bin"), MIB, lambda: final.append(busy.getresp())
    )
    download.start()
    assert 0 < download.wait_paused() < size
    stopper, stop_result = _stop_in_background(container, grace=90)

    def draining() -> bool:
        status, body = _http_status(ready)
        return (status == 503 and b"draining" in body) or not stopper.is_alive()

    wait_until(draining, 30, "/readyz 503 draining")
    assert stopper.is_alive(), f"the container exited before the transfer finished: {stop_result}"
    download.finish()
    assert download.received == size
    assert download.digest.hexdigest() == digest
    assert final and final[0].startswith("226"), final
    stopper.join(60)
    assert not stopper.is_alive(), "podman stop did not return"
    assert stop_result and not stop_result[0].startswith("error"), stop_result
    assert container.state("Status") == "exited"
    logs = container.logs()
    assert container.state("ExitCode") == "0", logs
    assert "SIGTERM: draining sessions" in logs
    assert "Traceback" not in logs
    # The plugin cache was written at build time: the non-root process need not write it.
    assert "Unable to write to plugin cache" not in logs


def test_the_kubernetes_pod_command_starts_the_image_with_its_slice(
    image: str, pki: Pki, tmp_path: Path
) -> None:
    """The StatefulSet's wrapper and ConfigMap (deploy/kubernetes), in the image, laid out as
    the pod's projected volume (mode 0440, group 10001): pod ftpsproxy-1 of 3 must start as
    uid 10001 and listen on its slice only (33 of 30000-30099), and SIGTERM ends it with 0.
    Fails when the config does not load in the real proxy, a file is unreadable by the
    pod's user, or the wrapper passes the wrong slice. No network: the backends in the
    ConfigMap do not exist here (so /readyz stays 503, /healthz 200)."""
    kube = REPO / "deploy" / "kubernetes"
    config = yaml.safe_load((kube / "configmap.yaml").read_text())["data"]
    sts = yaml.safe_load((kube / "statefulset.yaml").read_text())
    (container_spec,) = sts["spec"]["template"]["spec"]["containers"]
    etc = tmp_path / "etc-ftpsproxy"
    (etc / "tls").mkdir(parents=True)
    for name, text in config.items():
        (etc / name).write_text(text)
    shutil.copyfile(pki.server_cert, etc / "tls" / "tls.crt")
    shutil.copyfile(pki.server_key, etc / "tls" / "tls.key")
    for path in [etc, etc / "tls"]:
        os.chown(path, 0, 10001)
        path.chmod(0o750)
    for path in [*etc.glob("*"), *(etc / "tls").glob("*")]:
        if path.is_file():
            os.chown(path, 0, 10001)
            path.chmod(0o440)
    pod = Container(image, etc, "http://127.0.0.1:9102/healthz")
    try:
        _podman(
            "run",
            "--detach",
            "--name",
            pod.name,
            "--network=none",
            *LIMITS,
            "--health-interval=disable",
            "--user",
            "10001:10001",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--volume",
            f"{etc}:/etc/ftpsproxy:ro",
            "--env",
            "POD_NAME=ftpsproxy-1",
            "--env",
            f"REPLICAS={sts['spec']['replicas']}",
            "--entrypoint",
            container_spec["command"][0],
            image,
            *container_spec["command"][1:],
        )
        scrape = (
            "import urllib.request; "
            "url = 'http://127.0.0.1:9102/metrics'; "
            "print(urllib.request.urlopen(url, timeout=4).read().decode())"
        )

        def capacity() -> str | None:
            if pod.state("Status") != "running":
                raise AssertionError(f"the pod's container stopped:\n{pod.logs()}")
            done = subprocess.run(
                [*PODMAN, "exec", pod.name, "python3", "-c", scrape],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            for line in done.stdout.splitlines():
                if line.startswith("ftpsproxy_passive_ports_capacity "):
                    return line.split()[1]
            return None

        wait_until(capacity, 30, "the pod's /metrics")
        assert capacity() == "33.0"  # slice 1 of 3 of 30000-30099: 30034-30066
        _podman("healthcheck", "run", pod.name)
        _podman("stop", "--time", "60", pod.name, timeout=90)
        logs = pod.logs()
        assert pod.state("ExitCode") == "0", logs
        assert "Traceback" not in logs
    finally:
        print(f"--- pod container {pod.name} ---\n{pod.logs()}")
        pod.remove()
