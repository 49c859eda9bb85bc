"""A self-contained demo: the proxy with a self-signed certificate in front of pyftpdlib.

``python -m ftpsproxy.ops.demo`` starts an embedded pyftpdlib backend on loopback,
then ``twistd -n ftpsproxy`` in front of it, prints the client command lines to
try, and stops both on Ctrl-C.  Needs the ``demo`` extra (pyftpdlib).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "demo", "demo"
#: Below Linux's default ephemeral ports (32768-60999), so the proxy has no warning to give.
PASSIVE_PORTS = "30000-30019"


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1/::1, valid for 30 days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def ports_in_use(ports: dict[str, int]) -> list[str]:
    """The demo's listening ports that are taken on 127.0.0.1, as ``--option PORT``.

    Checked before anything starts, so that a taken port is named rather than found out
    from a child's exit; ``SO_REUSEADDR`` as Twisted and pyftpdlib bind, so a port left
    in TIME_WAIT is not reported.
    """
    taken: list[str] = []
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if port in seen:
            taken.append(f"{option} {port} (also given as {seen[port]})")
            continue
        seen[port] = option
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"{option} {port}")
    return taken


def _wait_for_backend(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until pyftpdlib accepts connections (it logs nothing here: its output is discarded)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: the pyftpdlib backend exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: the pyftpdlib backend did not listen on port {port}")


def _wait_until_ready(metrics_port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the proxy's ``/readyz`` answers 200: every listener bound, the backend up.

    Asks the metrics site, never an FTP port: a probe connection there would be a
    session in the proxy's log before the first real client's.
    """
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: ftpsproxy exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: ftpsproxy was not ready within 20 s ({url})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2121, help="explicit FTPS / plain FTP port")
    parser.add_argument("--implicit-port", type=int, default=9900, help="implicit FTPS port")
    parser.add_argument("--backend-port", type=int, default=2100)
    parser.add_argument("--passive-ports", default=PASSIVE_PORTS)
    parser.add_argument("--metrics-port", type=int, default=9102)
    args = parser.parse_args(argv)
    taken = ports_in_use(
        {
            "--port": args.port,
            "--implicit-port": args.implicit_port,
            "--backend-port": args.backend_port,
            "--metrics-port": args.metrics_port,
        }
    )
    if taken:
        print(
            f"demo: port in use: {', '.join(taken)}; stop what holds it or choose another "
            "port with that option",
            file=sys.stderr,
        )
        return 1

    # SIGTERM stops the demo as Ctrl-C does: through the finally below, children included.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    scratch = Path(tempfile.mkdtemp(prefix="ftpsproxy-demo-"))
    root = scratch / "files"
    root.mkdir()
    (root / "hello.txt").write_text("Hello through ftpsproxy!\n")
    (root / "random.bin").write_bytes(os.urandom(4 << 20))
    cert, key = make_self_signed(scratch)

    backend_args = ["-i", "127.0.0.1", "-p", str(args.backend_port), "-u", USER, "-P", PASSWORD]
    backend = subprocess.Popen(
        [sys.executable, "-m", "pyftpdlib", *backend_args, "-d", str(root), "-w"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    repo = Path(__file__).resolve().parent.parent.parent
    paths = [str(repo), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    proxy_args = [
        "--listen", f"tcp:{args.port}:interface=127.0.0.1",
        "--listen-implicit", f"tcp:{args.implicit_port}:interface=127.0.0.1",
        "--certificate", str(cert), "--private-key", str(key),
        "--backend", f"ftp://127.0.0.1:{args.backend_port}",
        "--passive-ports", args.passive_ports, "--public-address", "127.0.0.1",
        "--metrics", f"tcp:{args.metrics_port}:interface=127.0.0.1",
    ]  # fmt: skip
    # twisted.scripts.twistd has no __main__ guard: "-m" would run nothing.
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    if shutil.which("twistd", path=str(Path(sys.executable).parent)):
        twistd = [str(Path(sys.executable).parent / "twistd")]
    proxy: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_backend(args.backend_port, backend)
        proxy = subprocess.Popen(
            [*twistd, "-n", "--pidfile=", "--logfile=-", "ftpsproxy", *proxy_args], env=env
        )
        _wait_until_ready(args.metrics_port, proxy)
        url = f"{USER}:{PASSWORD}@127.0.0.1"
        print(
            f"""
ftpsproxy demo is running (files in {root}).
  proxy:   twistd -n ftpsproxy {" ".join(proxy_args)}
  backend: pyftpdlib on 127.0.0.1:{args.backend_port} (plain FTP, user {USER}/{PASSWORD})

Try:
  curl --ssl-reqd --cacert {cert} ftp://{url}:{args.port}/hello.txt
  curl --cacert {cert} ftps://{url}:{args.implicit_port}/random.bin -o /tmp/random.bin
  curl --ssl-reqd --cacert {cert} -T /etc/os-release ftp://{url}:{args.port}/uploaded.txt
  lftp -e 'set ssl:ca-file {cert}; ls; get hello.txt -o /tmp/hello.txt; bye' \\
       -u {USER},{PASSWORD} ftp://127.0.0.1:{args.port}
  curl http://127.0.0.1:{args.metrics_port}/metrics

Press Ctrl-C to stop.
""",
            flush=True,
        )
        while proxy.poll() is None and backend.poll() is None:
            time.sleep(0.5)
        which = "ftpsproxy" if proxy.poll() is not None else "the pyftpdlib backend"
        print(f"demo: {which} exited (is port {args.backend_port} or {args.port} in use?)")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proxy is not None:
            _stop(proxy)
        _stop(backend)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
