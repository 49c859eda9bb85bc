"""Two ftpsproxy instances behind a real HAProxy, on a small network of namespaces.

The HAProxy configuration is the one ``deploy/haproxy/gen_haproxy_cfg.py`` writes, so
what users deploy is what runs here. The network, addresses from documentation ranges
only (they exist nowhere but inside these namespaces)::

    cli 203.0.113.10 ──── 203.0.113.1 lb 198.51.100.1 ─┬─ 198.51.100.10 p0
                          (HAProxy; routes, so cli can  ├─ 198.51.100.11 p1
                           also reach p0/p1 directly)   └─ 198.51.100.20 be (receiver
                                                           + pyftpdlib)

Each proxy trusts only 198.51.100.1 for PROXY headers, announces 203.0.113.1 in ``227``
and owns half of the passive range (``--instance i/2``), which HAProxy forwards to it
alone with ``send-proxy-v2``. Clients are threads that joined the cli namespace.

The proxies send a PROXY v2 header to their backend too (``--backend-proxy-protocol v2``):
on the backend host a second HAProxy (``bind … accept-proxy``, one log line per
connection with the client it read) takes it and forwards the control connection to
pyftpdlib on the same address. Data connections carry no header and go from the proxies
straight to pyftpdlib's passive ports on 198.51.100.20, the address it announces (the
local address of its control connection, which the receiver made to 198.51.100.20).
"""

from __future__ import annotations

import csv
import ftplib
import hashlib
import io
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftpsproxy.settings.values import PortRange
from tests.support._proc import REPO_ROOT, ManagedProcess, env_with_repo_path
from tests.support.backend import DEFAULT_PASSWORD, DEFAULT_USER, PyftpdBackend
from tests.support.balancer import closed_without_reply, v2_header
from tests.support.certs import Pki
from tests.support.ci import require
from tests.support.clients import ImplicitFTP_TLS, PausedDownload, client_context
from tests.support.netns import Netns, link, listening_ports, require_netns
from tests.support.proxy import CLEAN_EXIT_CODES, ProxyProcess
from tests.support.proxy_receiver import HAProxyReceiver
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

CLIENT = "203.0.113.10"
PUBLIC = "203.0.113.1"
LB_INSIDE = "198.51.100.1"
INSTANCES = ("198.51.100.10", "198.51.100.11")
BACKEND = "198.51.100.20"
CONTROL_PORT, IMPLICIT_PORT, METRICS_PORT = 2121, 2990, 9102
#: The PROXY protocol receiver's port on the backend host (pyftpdlib picks its own).
RECEIVER_PORT = 2021
PASSIVE = PortRange(30000, 30099)
SLICES = PASSIVE.split(len(INSTANCES))
GENERATOR = REPO_ROOT / "deploy" / "haproxy" / "gen_haproxy_cfg.py"
EXAMPLE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
EXAMPLE_ARGS = (
    "--public-address 203.0.113.7 --instance 10.0.0.11 --instance 10.0.0.12 --instance 10.0.0.13"
).split()
#: HAProxy in the test: down after 2 failed /readyz 0.5 s apart, up after 2 good; maxconn
#: within the file descriptors a test process may have.
CHECK_ARGS = ("--check-interval", "500ms", "--fall", "2", "--rise", "2", "--maxconn", "2000")
#: Time HAProxy may take to notice a change of /readyz: fall * inter, plus slack.
CHECK_DEADLINE = 5.0
SESSION_TIMEOUT = 20.0


# -- the processes -------------------------------------------------------------------


class NetnsProxy(ProxyProcess):
    """The real ``twistd ftpsproxy`` under ``ip netns exec``; listening read in its netns."""

    def __init__(self, ns: Netns, args: list[str], workdir: Path) -> None:
        self.ns = ns
        super().__init__(args, workdir)

    def command(self) -> list[str]:
        return [*self.ns.exec_prefix(), *super().command()]

    def is_listening(self, port: int, host: str = "") -> bool:
        return port in listening_ports(self.pid)


class NetnsBackend(PyftpdBackend):
    """pyftpdlib listening on the backend host's documentation address.

    Its control connections come from the receiver (198.51.100.20), its data connections
    from the proxies: it must take data connections from an address other than the
    control connection's (``permit_foreign_addresses``), as any server behind a TCP-mode
    PROXY protocol receiver that does not itself read the header."""

    def __init__(self, ns: Netns, root: Path) -> None:
        self.ns = ns
        super().__init__(root, host=BACKEND, extra_args=["--verbose", "--permit-foreign-addresses"])

    def command(self) -> list[str]:
        return [*self.ns.exec_prefix(), *super().command()]


class NetnsReceiver(HAProxyReceiver):
    """HAProxy with ``accept-proxy`` on the backend host, in front of pyftpdlib there:
    its log has one line per connection with the client address the header named."""

    def __init__(self, ns: Netns, directory: Path, backend: NetnsBackend) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, backend.address, host=BACKEND)
        self.ns = ns
        self.port = RECEIVER_PORT

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}"

    def start(self) -> NetnsReceiver:
        config = self.directory / "haproxy.cfg"
        config.write_text(self.config())
        command = [*self.ns.exec_prefix(), "haproxy", "-db", "-f", str(config)]
        self._launch(command, cwd=self.directory, env=env_with_repo_path())
        wait_until(
            lambda: self._alive() and self.port in listening_ports(self.pid),
            10,
            "the PROXY protocol receiver listening",
        )
        return self

    def _alive(self) -> bool:
        assert self.is_running(), f"the receiver exited:\n{self.log_text()}"
        return True

    def connections(self) -> list[Received]:
        """Each connection the receiver logged (at its end), in that order."""
        found = []
        for line in self.lines():
            match = re.fullmatch(
                r"conn client=(\S+):\d+ frontend=(\S+) authority=\S+ unique_id=(\S+)", line
            )
            assert match is not None, line
            found.append(Received(match[1], match[2], None if match[3] == "-" else match[3]))
        return found

    def sessions(self) -> list[Received]:
        """The connections whose header named a session (a v2 ``LOCAL`` probe's names
        none: HAProxy logs the connection's own addresses and no unique id)."""
        return [each for each in self.connections() if each.session is not None]


@dataclass(frozen=True)
class Received:
    """One line of the receiver's log: *client* and *frontend* as the header gave them
    (a ``LOCAL`` probe's: the connection's own), *session* the unique id TLV."""

    client: str
    frontend: str
    session: str | None


class HAProxy(ManagedProcess):
    """Debian's haproxy in the foreground (``-db``), with an admin socket for its view."""

    name = "haproxy"
    stop_grace = 5.0

    def __init__(self, ns: Netns, config: Path, stats: Path) -> None:
        self.ns, self.config, self.stats = ns, config, stats
        super().__init__(config.with_suffix(".log"))

    def start(self) -> HAProxy:
        command = [*self.ns.exec_prefix(), "haproxy", "-db", "-f", str(self.config)]
        self._launch(command, cwd=self.config.parent, env=env_with_repo_path())
        wait_until(
            lambda: self._alive() and {CONTROL_PORT, IMPLICIT_PORT} <= listening_ports(self.pid),
            10,
            "haproxy listening",
        )
        return self

    def _alive(self) -> bool:
        assert self.is_running(), f"haproxy exited:\n{self.log_text()}"
        return True

    def command_socket(self, command: str) -> str:
        """One command on the admin socket (a path: reachable from any namespace)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, backend: str, server: str) -> str:
        """The server's status in a backend as HAProxy sees it (UP, DOWN, "UP 1/2"...)."""
        text = self.command_socket("show stat").lstrip("# ")
        for row in csv.DictReader(io.StringIO(text)):
            if row["pxname"] == backend and row["svname"] == server:
                return row["status"]
        raise AssertionError(f"no {backend}/{server} in show stat")

    def wait_status(self, index: int, wanted: str, timeout: float = CHECK_DEADLINE) -> float:
        """Wait until instance *index* is *wanted* in both control backends; seconds taken."""

        def reached() -> bool:
            return all(
                self.status(backend, f"ftpsproxy{index}") == wanted
                for backend in ("ftp_control", "ftps_implicit")
            )

        return wait_until(reached, timeout, f"haproxy sees ftpsproxy{index} {wanted}")


# -- the lab -------------------------------------------------------------------------


@dataclass
class Lab:
    """The namespaces and processes; instances are restarted by :meth:`ensure_running`."""

    workdir: Path
    pki: Pki
    cli: Netns
    lb: Netns
    hosts: list[Netns]
    backend: NetnsBackend
    receiver: NetnsReceiver
    haproxy: HAProxy
    proxies: list[NetnsProxy] = field(default_factory=list)
    started: int = 0

    def proxy_args(self, index: int) -> list[str]:
        address = INSTANCES[index]
        return [
            "--listen", f"tcp:{CONTROL_PORT}:interface={address}",
            "--listen-implicit", f"tcp:{IMPLICIT_PORT}:interface={address}",
            "--certificate", str(self.pki.server_cert),
            "--private-key", str(self.pki.server_key),
            "--backend", self.receiver.url, "--backend-proxy-protocol", "v2",
            "--passive-ports", f"{PASSIVE.low}-{PASSIVE.high}",
            "--instance", f"{index}/{len(INSTANCES)}",
            "--public-address", PUBLIC,
            "--proxy-protocol", "--proxy-protocol-from", f"{LB_INSIDE}/32",
            "--proxy-protocol-data",
            "--metrics", f"tcp:{METRICS_PORT}:interface={address}",
            "--xferlog", str(self.workdir / f"p{index}.xferlog"),
            # Every client comes from one address here: lift the per-address caps.
            "--max-sessions-per-ip", "500",
            "--max-passive-ports-per-ip", "50",
            "--drain-timeout", "30",
            "--health-interval", "1",
        ]  # fmt: skip

    def start_proxy(self, index: int) -> NetnsProxy:
        self.started += 1
        proxy = NetnsProxy(
            self.hosts[index], self.proxy_args(index), self.workdir / f"p{index}.{self.started}"
        )
        proxy.start()
        proxy.wait_listening([CONTROL_PORT, IMPLICIT_PORT, METRICS_PORT])
        return proxy

    def ensure_running(self) -> None:
        """Both instances up and in HAProxy's rotation (a test before may have killed one)."""
        for index, proxy in enumerate(self.proxies):
            if not proxy.is_running():
                proxy.stop()
                self.proxies[index] = self.start_proxy(index)
        for index in range(len(INSTANCES)):
            self.haproxy.wait_status(index, "UP", timeout=15)

    def http(self, index: int, path: str) -> tuple[int, str]:
        """GET *path* from instance *index*'s metrics site, from inside its host."""

        def get() -> tuple[int, str]:
            url = f"http://{INSTANCES[index]}:{METRICS_PORT}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        return self.hosts[index].call(get)

    def sessions(self, index: int) -> int:
        """Instance *index*'s ``ftpsproxy_sessions_total``, all listeners."""
        _, text = self.http(index, "/metrics")
        return int(metric(text, "ftpsproxy_sessions_total"))


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of *name* whose label text contains *labels*."""
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or (sample.startswith(name + "{") and labels in sample):
            total += float(value)
    return total


def generate_config(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_with_repo_path(),
        check=True,
    )
    return done.stdout


def build_network(cli: Netns, lb: Netns, hosts: list[Netns]) -> None:
    for ns in (cli, lb, *hosts):
        ns.create()
    link(cli, "eth0", lb, "eth0")
    cli.ip("addr", "add", f"{CLIENT}/24", "dev", "eth0")
    lb.ip("addr", "add", f"{PUBLIC}/24", "dev", "eth0")
    lb.ip("link", "add", "br0", "type", "bridge")
    lb.ip("addr", "add", f"{LB_INSIDE}/24", "dev", "br0")
    lb.ip("link", "set", "br0", "up")
    for number, (host, address) in enumerate(zip(hosts, [*INSTANCES, BACKEND], strict=True)):
        port = f"dmz{number}"
        link(host, "eth0", lb, port)
        lb.ip("link", "set", port, "master", "br0")
        lb.ip("link", "set", port, "up")
        host.ip("addr", "add", f"{address}/24", "dev", "eth0")
    for ns in (cli, lb, *hosts):
        ns.ip("link", "set", "eth0", "up")
    cli.ip("route", "add", "default", "via", PUBLIC)
    for host in hosts:
        host.ip("route", "add", "default", "via", LB_INSIDE)
    lb.sysctl("net.ipv4.ip_forward", "1")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Lab]:
    """Namespaces, backend, two instances and HAProxy; all of it gone afterwards, also
    when the set-up or a test fails (processes stopped by PID, then the namespaces)."""
    require_netns()
    require(_haproxy() is not None, "haproxy not installed (Debian package haproxy)")
    workdir = tmp_path_factory.mktemp("scaleout")
    prefix = f"fpx{os.getpid()}"
    cli, lb = Netns(f"{prefix}-cli"), Netns(f"{prefix}-lb")
    hosts = [Netns(f"{prefix}-p{i}") for i in range(len(INSTANCES))] + [Netns(f"{prefix}-be")]
    processes: list[ManagedProcess] = []
    lab: Lab | None = None
    try:
        build_network(cli, lb, hosts)
        backend = NetnsBackend(hosts[-1], workdir / "files")
        processes.append(backend)
        backend.start()
        receiver = NetnsReceiver(hosts[-1], workdir / "receiver", backend)
        processes.append(receiver)
        receiver.start()
        config = workdir / "haproxy.cfg"
        stats = workdir / "haproxy.sock"
        args = [
            "--public-address", PUBLIC,
            *(arg for address in INSTANCES for arg in ("--instance", address)),
            "--control-port", str(CONTROL_PORT), "--implicit-port", str(IMPLICIT_PORT),
            "--passive-ports", f"{PASSIVE.low}-{PASSIVE.high}",
            "--metrics-port", str(METRICS_PORT), "--stats-socket", str(stats),
            *CHECK_ARGS,
        ]  # fmt: skip
        config.write_text(generate_config(*args))
        haproxy = HAProxy(lb, config, stats)
        lab = Lab(workdir, pki, cli, lb, hosts[:-1], backend, receiver, haproxy)
        for index in range(len(INSTANCES)):
            lab.proxies.append(lab.start_proxy(index))
        processes.append(haproxy)
        haproxy.start()
        lab.ensure_running()
        yield lab
    finally:
        if lab is not None:
            processes += lab.proxies
        for process in reversed(processes):
            process.stop(grace=5)
        for ns in (cli, lb, *hosts):
            ns.delete()


def _haproxy() -> str | None:
    return shutil.which("haproxy")


# -- clients -------------------------------------------------------------------------


class _PortsSeen:
    """Remembers the passive ports a session was given: they say which instance served it."""

    ports: list[int]

    def makepasv(self) -> tuple[str, int]:
        host, port = ftplib.FTP.makepasv(self)  # type: ignore[arg-type]
        self.ports.append(port)
        return host, port


class ExplicitClient(_PortsSeen, ftplib.FTP_TLS):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context, timeout=SESSION_TIMEOUT)
        self.ports = []


class ImplicitClient(_PortsSeen, ImplicitFTP_TLS):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context, timeout=SESSION_TIMEOUT)
        self.ports = []


def owner(port: int) -> int:
    """The instance whose slice holds *port*."""
    for index, ports in enumerate(SLICES):
        if ports.low <= port <= ports.high:
            return index
    raise AssertionError(f"passive port {port} is in no instance's slice")


@dataclass
class Outcome:
    number: int
    started: float
    ended: float = 0.0
    error: str = ""
    ports: list[int] = field(default_factory=list)

    @property
    def instance(self) -> int:
        owners = {owner(port) for port in self.ports}
        assert len(owners) == 1, f"session {self.number}: passive ports {self.ports}"
        return owners.pop()


def connect(lab: Lab, number: int) -> ftplib.FTP_TLS:
    """A logged-in FTPS session through HAProxy: explicit on even numbers, implicit on odd."""
    context = client_context(lab.pki.ca_cert, check_hostname=False)
    client: ftplib.FTP_TLS
    if number % 2:
        client = ImplicitClient(context)
        client.connect(PUBLIC, IMPLICIT_PORT)
    else:
        client = ExplicitClient(context)
        client.connect(PUBLIC, CONTROL_PORT)
    client.login(DEFAULT_USER, DEFAULT_PASSWORD)
    client.prot_p()
    return client


def upload_and_download(lab: Lab, number: int, payload: bytes) -> Outcome:
    """One session: upload *payload*, download it back, compare sha256. Never retries."""
    outcome = Outcome(number, time.time())
    try:
        client = connect(lab, number)
        try:
            client.storbinary(f"STOR s{number}.bin", io.BytesIO(payload))
            back = io.BytesIO()
            client.retrbinary(f"RETR s{number}.bin", back.write)
            if hashlib.sha256(back.getvalue()).digest() != hashlib.sha256(payload).digest():
                outcome.error = "downloaded bytes differ"
            client.quit()
        finally:
            outcome.ports = list(client.ports)  # type: ignore[attr-defined]
            client.close()
    except (OSError, EOFError, ftplib.Error) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.ended = time.time()
    return outcome


def payload_for(number: int, size: int = 256 * 1024) -> bytes:
    """Session *number*'s upload: its own bytes, the same each time they are asked for."""
    return random.Random(number).randbytes(size + number % 97)


def run_sessions(
    lab: Lab,
    numbers: range,
    workers: int,
    during: Callable[[list[Future[Outcome]]], None] = lambda futures: None,
) -> list[Outcome]:
    """Sessions *numbers* from the client host, *workers* at once; *during* runs while
    they do (it may kill an instance)."""
    with lab.cli.executor(workers) as pool:
        futures = [pool.submit(upload_and_download, lab, n, payload_for(n)) for n in numbers]
        during(futures)
        return [future.result(timeout=120) for future in futures]


def by_instance(outcomes: list[Outcome]) -> dict[int, int]:
    counts = dict.fromkeys(range(len(INSTANCES)), 0)
    for outcome in outcomes:
        counts[outcome.instance] += 1
    return counts


# -- the tests -----------------------------------------------------------------------


def test_the_example_config_is_generated_and_valid(tmp_path: Path) -> None:
    """The shipped example is what the generator writes (so it never drifts from the
    split ``--instance`` uses), and HAProxy accepts it."""
    require(_haproxy() is not None, "haproxy not installed (Debian package haproxy)")
    assert EXAMPLE.read_text() == generate_config(*EXAMPLE_ARGS)
    assert re.findall(r"bind \S+:(\d+-\d+)", EXAMPLE.read_text()) == [
        f"{s.low}-{s.high}" for s in PASSIVE.split(3)
    ]
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(EXAMPLE)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_200_sessions_spread_over_both_instances_with_the_client_address(lab: Lab) -> None:
    lab.ensure_running()
    before = [lab.sessions(i) for i in range(len(INSTANCES))]
    ids_before = [len(session_ids(proxy)) for proxy in lab.proxies]
    received_before = len(lab.receiver.sessions())
    started = time.monotonic()
    outcomes = run_sessions(lab, range(200), workers=10)
    took = time.monotonic() - started
    failed = [o for o in outcomes if o.error]
    assert not failed, failed[:5]

    # Spread: leastconn over equal instances; each got a fair share (sessions seen
    # through their passive ports, and counted by each instance itself).
    counts = by_instance(outcomes)
    served = [lab.sessions(i) - before[i] for i in range(len(INSTANCES))]
    print(f"200 sessions in {took:.1f} s; per instance (passive ports) {counts}, /metrics {served}")
    assert served == [counts[i] for i in range(len(INSTANCES))]
    assert min(counts.values()) >= 50, counts

    # Every byte: what the backend stored is what each client sent.
    for outcome in outcomes:
        stored = lab.backend.path(f"s{outcome.number}.bin").read_bytes()
        assert stored == payload_for(outcome.number), outcome.number

    # The client's address, not HAProxy's, in each instance's log and xferlog: the
    # PROXY header on the control connection made it the session's address (without
    # send-proxy-v2 these logs would say 198.51.100.1, or every session would be refused).
    for index, proxy in enumerate(lab.proxies):
        log = proxy.log_text()
        starts = re.findall(r"session \S+ start client=(\S+)", log)
        assert len(starts) >= served[index]
        assert set(starts) == {CLIENT}, set(starts)
        assert not re.search(r"\b198\.51\.100\.1\b(?!/32)", log)  # HAProxy's address
        xferlog = (lab.workdir / f"p{index}.xferlog").read_text().splitlines()
        assert len(xferlog) >= 2 * served[index]
        assert all(line.split()[6] == CLIENT for line in xferlog), xferlog[:3]
    # The backend side: the receiver read the client's address from the v2 header the
    # instances sent on each session's backend control connection, and the session id
    # of the instance's log. Without --backend-proxy-protocol it reads no client: its
    # accept-proxy refuses a connection without a header.
    new_ids = sorted(
        i for p, n in zip(lab.proxies, ids_before, strict=True) for i in session_ids(p)[n:]
    )
    assert len(new_ids) == sum(served) == 200
    wait_until(
        lambda: len(lab.receiver.sessions()) - received_before >= len(new_ids),
        10,
        "the receiver's log lines of the 200 sessions",
        error=lambda: AssertionError(
            f"the receiver logged {len(lab.receiver.sessions()) - received_before} of"
            f" {len(new_ids)} sessions:\n{lab.receiver.log_text()[-2000:]}"
        ),
    )
    received = lab.receiver.sessions()[received_before:]
    clients = Counter(each.client for each in received)
    frontends = Counter(each.frontend for each in received)
    probes = Counter(each.client for each in lab.receiver.connections() if each.session is None)
    print(f"receiver: {len(received)} sessions, clients {dict(clients)}, to {dict(frontends)}")
    print(f"receiver: LOCAL probes so far (no client behind them), from {dict(probes)}")
    assert sorted(str(each.session) for each in received) == new_ids
    assert clients == {CLIENT: 200}, received[:5]
    # Where the client connected (HAProxy's public side), not an instance's address.
    assert frontends == {f"{PUBLIC}:{CONTROL_PORT}": 100, f"{PUBLIC}:{IMPLICIT_PORT}": 100}
    # Only the health probes' LOCAL headers leave the instances' own addresses there.
    assert set(probes) <= set(INSTANCES), probes
    # pyftpdlib itself gets its control connections from the receiver, never HAProxy's.
    assert f"{LB_INSIDE}:" not in lab.backend.log_text()


def session_ids(proxy: NetnsProxy) -> list[str]:
    """The ids of the sessions in *proxy*'s log, in the order they started."""
    return re.findall(r"session (\S+) start client=", proxy.log_text())


def test_a_forged_header_sent_directly_to_an_instance_is_refused(lab: Lab) -> None:
    """From the client host straight to an instance (routed past HAProxy): a PROXY header
    from anyone but HAProxy is refused, on the control ports and on a pending passive
    port, even one that names the session's own client."""
    lab.ensure_running()
    refused = [refusals(lab, i) for i in range(len(INSTANCES))]

    def forge(instance: int, port: int, claimed: str) -> bool:
        header = v2_header(claimed, PUBLIC, 40000, port)
        with socket.create_connection((INSTANCES[instance], port), 5) as sock:
            assert sock.getsockname()[0] == CLIENT
            sock.sendall(header)
            return closed_without_reply(sock)

    for port in (CONTROL_PORT, IMPLICIT_PORT):
        assert lab.cli.call(lambda port=port: forge(0, port, "192.0.2.66")), f"{port} answered"

    # A passive port is listened on only while a PASV is pending: take one through
    # HAProxy, then try to take the data connection directly.
    def hijack() -> tuple[int, bool, bytes]:
        client = connect(lab, 0)
        try:
            client.sendcmd("TYPE I")
            _, port = client.makepasv()
            instance = owner(port)
            refused = forge(instance, port, CLIENT)
            # The session is unharmed: a transfer through HAProxy still works.
            back = io.BytesIO()
            client.retrbinary("RETR s0.bin", back.write)
            client.quit()
            return instance, refused, back.getvalue()
        finally:
            client.close()

    instance, passive_refused, data = lab.cli.call(hijack)
    assert passive_refused, "the passive port answered a forged header"
    assert data == payload_for(0)
    expected = [refused[0] + 2, refused[1]]
    expected[instance] += 1
    assert [refusals(lab, i) for i in range(len(INSTANCES))] == expected
    assert "192.0.2.66" not in lab.proxies[0].log_text()


def refusals(lab: Lab, index: int) -> float:
    _, text = lab.http(index, "/metrics")
    return metric(text, "ftpsproxy_proxy_header_refusals_total")


def test_sigterm_drains_an_instance_and_haproxy_stops_sending_it_sessions(lab: Lab) -> None:
    lab.ensure_running()
    big = os.urandom(8 * 1024 * 1024)
    lab.backend.path("big.bin").write_bytes(big)
    # Four downloads held open (the client stops reading after 1 MiB): the instance
    # serving any of them has a running transfer when it gets SIGTERM.
    finals: list[str] = []

    def begin(number: int) -> tuple[ftplib.FTP_TLS, PausedDownload]:
        client = connect(lab, number)
        client.voidcmd("TYPE I")  # ftplib's transfercmd leaves ASCII mode on
        download = PausedDownload(
            client.transfercmd("RETR big.bin"),
            1024 * 1024,
            lambda: finals.append(client.voidresp()),
        )
        download.start()
        return client, download

    with lab.cli.executor(4) as pool:
        held = [f.result(30) for f in [pool.submit(begin, n) for n in range(4)]]
    for _, download in held:
        download.wait_paused()
    owners = [owner(client.ports[0]) for client, _ in held]  # type: ignore[attr-defined]
    target = max(set(owners), key=owners.count)
    other = 1 - target
    proxy = lab.proxies[target]

    os.kill(proxy.pid, signal.SIGTERM)
    t_term = time.monotonic()
    wait_until(lambda: lab.http(target, "/readyz")[0] == 503, 5, "/readyz 503")
    status, body = lab.http(target, "/readyz")
    assert status == 503 and "draining" in body, (status, body)
    took_down = lab.haproxy.wait_status(target, "DOWN")
    print(
        f"instance {target} (holding {owners.count(target)} of 4 downloads) DOWN in HAProxy "
        f"{time.monotonic() - t_term:.1f} s after SIGTERM (wait {took_down:.1f} s)"
    )
    assert proxy.is_running(), "the instance ended before its transfers did"
    sessions_at_drain = lab.sessions(target)

    # New sessions while it drains all go to the other instance and succeed.
    outcomes = run_sessions(lab, range(1000, 1020), workers=4)
    assert not [o for o in outcomes if o.error]
    assert by_instance(outcomes) == {target: 0, other: 20}
    assert lab.sessions(target) == sessions_at_drain

    # The held downloads finish, every byte and a 226, on both instances.
    for download, instance in zip((d for _, d in held), owners, strict=True):
        download.finish(timeout=60)
        assert (download.received, instance) == (len(big), instance), finals
        assert download.digest.digest() == hashlib.sha256(big).digest()
    assert len(finals) == 4 and all(f.startswith("226") for f in finals), finals
    for client, _ in held:
        client.close()
    wait_until(lambda: not proxy.is_running(), 35, "the drained instance to exit")
    assert proxy.returncode in CLEAN_EXIT_CODES, proxy.log_text()[-2000:]


def test_sigkill_of_an_instance_mid_run_new_sessions_succeed_on_the_other(lab: Lab) -> None:
    """No client retries: a connect HAProxy makes to the dead instance before its check
    notices is refused at once (the host is up, the port closed), and ``retries`` with
    ``option redispatch 1`` sends it to the other instance. Without that option the
    sessions begun in that window fail (tried: with ``retries 3`` alone, 6 of the 53 begun
    before HAProxy saw it DOWN ended in EOF after 3 s of retries to the dead instance)."""
    lab.ensure_running()
    marks: dict[str, float] = {}
    victim = 0
    redispatched_before = redispatches(lab.haproxy)

    def kill_midway(futures: list[Future[Outcome]]) -> None:
        wait_until(lambda: sum(f.done() for f in futures) >= 40, 60, "40 sessions done")
        proxy = lab.proxies[victim]
        marks["signal"] = time.time()
        os.kill(proxy.pid, signal.SIGKILL)
        # Until the process is gone its listening sockets still complete handshakes
        # (the kernel's backlog); HAProxy forwards those and they are then reset. So
        # "after the kill" starts when the process has really exited.
        wait_until(lambda: proxy.returncode is not None, 5, "the instance gone", interval=0.005)
        marks["kill"] = time.time()
        lab.haproxy.wait_status(victim, "DOWN")
        marks["down"] = time.time()

    outcomes = run_sessions(lab, range(2000, 2200), workers=8, during=kill_midway)
    after = [o for o in outcomes if o.started > marks["kill"]]
    in_window = [o for o in after if o.started < marks["down"]]
    before_failed = [o for o in outcomes if o.started <= marks["kill"] and o.error]
    print(
        f"SIGKILL: exited {1000 * (marks['kill'] - marks['signal']):.0f} ms after the signal, "
        f"HAProxy saw it DOWN {marks['down'] - marks['kill']:.1f} s later; "
        f"{len(after)} sessions began after the kill ({len(in_window)} before DOWN), "
        f"{sum(bool(o.error) for o in after)} failed; {len(before_failed)} in flight failed; "
        f"HAProxy redispatched {redispatches(lab.haproxy) - redispatched_before} connects"
    )
    # Every session begun after the kill succeeded, on the survivor, without a retry.
    assert len(after) >= 100
    assert not [o for o in after if o.error], [o for o in after if o.error][:5]
    assert all(o.instance == 1 - victim for o in after)
    # Only sessions running on the killed instance failed: at most one per worker, plus
    # those begun while it was dying (between the signal and its exit: milliseconds).
    dying = [o for o in outcomes if marks["signal"] <= o.started <= marks["kill"]]
    assert len(before_failed) <= 8 + len(dying)
    assert all(owner(port) == victim for o in before_failed for port in o.ports)


def redispatches(haproxy: HAProxy) -> int:
    """Connects HAProxy moved to another server after a failure (``wredis``)."""
    text = haproxy.command_socket("show stat").lstrip("# ")
    return sum(
        int(row["wredis"] or 0)
        for row in csv.DictReader(io.StringIO(text))
        if row["svname"] == "BACKEND"
    )
