"""End to end: real clients (ftplib, curl, lftp) through the proxy to a real pyftpdlib backend.

Every transfer is checked by sha256 on the far side; every test runs the proxy
as a real ``twistd ftpsproxy`` process on loopback.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import re
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import (
    ImplicitFTP_TLS,
    ReusingFTP_TLS,
    client_context,
    make_random_file,
    require_tool,
    run_curl,
    run_lftp,
    sha256_file,
)
from tests.support.ports import free_port, free_port_range
from tests.support.proxy import ProxyError
from tests.support.waiting import wait_until

BIG = 32 * 1024 * 1024


@dataclass
class Proxied:
    backend: PyftpdBackend
    pki: Pki
    port: int
    implicit_port: int
    metrics_port: int
    passive: tuple[int, int]
    proxy: object

    def ftp_tls(self) -> ftplib.FTP_TLS:
        ftp = ftplib.FTP_TLS(context=client_context(self.pki.ca_cert), timeout=30)
        ftp.connect("127.0.0.1", self.port)
        ftp.login(self.backend.user, self.backend.password)
        ftp.prot_p()
        return ftp

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples


def start_proxy(
    make_proxy: MakeProxy,
    backend: PyftpdBackend,
    pki: Pki,
    *extra: str,
    passive_count: int = 10,
) -> Proxied:
    for attempt in range(3):
        # Free ports are picked before the proxy binds them: another process may take
        # one in between.  A start that failed that way is retried with new ports.
        port, implicit_port, metrics_port = free_port(), free_port(), free_port()
        low, high = free_port_range(passive_count)
        try:
            proxy = make_proxy(
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--listen-implicit", f"tcp:{implicit_port}:interface=127.0.0.1",
                "--certificate", str(pki.server_cert), "--private-key", str(pki.server_key),
                "--backend", backend.url,
                "--passive-ports", f"{low}-{high}", "--public-address", "127.0.0.1",
                "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1",
                *extra,
                ports=[port, implicit_port, metrics_port],
            )  # fmt: skip
        except ProxyError as error:
            if "address already in use" not in str(error) or attempt == 2:
                raise
            continue
        return Proxied(backend, pki, port, implicit_port, metrics_port, (low, high), proxy)
    raise AssertionError("unreachable")


@pytest.fixture
def proxied(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki) -> Proxied:
    return start_proxy(make_proxy, backend, pki)


@pytest.fixture
def big_file(backend: PyftpdBackend) -> tuple[str, str]:
    """A 32 MiB random file on the backend: (name, sha256)."""
    return "big.bin", make_random_file(backend.path("big.bin"), BIG)


def _retr(ftp: ftplib.FTP, name: str) -> bytes:
    buffer = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buffer.write, blocksize=256 * 1024)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- ftplib -----------------------------------------------------------------------------------


class EpsvFTP_TLS(ftplib.FTP_TLS):
    """ftplib uses EPSV only on IPv6; this one always does."""

    def makepasv(self) -> tuple[str, int]:
        peer = self.sock.getpeername()
        return peer[0], ftplib.parse229(self.sendcmd("EPSV"), peer)[1]


@pytest.mark.parametrize("client_class", [ftplib.FTP_TLS, EpsvFTP_TLS])
def test_ftplib_explicit_tls_retr_stor_list(
    proxied: Proxied, big_file: tuple[str, str], client_class: type[ftplib.FTP_TLS]
) -> None:
    name, digest = big_file
    ftp = client_class(context=client_context(proxied.pki.ca_cert), timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    ftp.prot_p()
    assert _sha(_retr(ftp, name)) == digest
    data = _retr(ftp, name)
    ftp.storbinary("STOR copy.bin", io.BytesIO(data), blocksize=256 * 1024)
    assert sha256_file(proxied.backend.path("copy.bin")) == digest
    assert sorted(ftp.nlst()) == ["big.bin", "copy.bin"]
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert len(lines) == 2 and any(line.endswith("copy.bin") for line in lines)
    ftp.quit()


def test_ftplib_implicit_tls(proxied: Proxied, big_file: tuple[str, str]) -> None:
    name, digest = big_file
    ftp = ImplicitFTP_TLS(context=client_context(proxied.pki.ca_cert), timeout=30)
    ftp.connect("127.0.0.1", proxied.implicit_port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    ftp.prot_p()
    assert _sha(_retr(ftp, name)) == digest
    ftp.storbinary("STOR up.bin", io.BytesIO(b"implicit" * 1000))
    assert proxied.backend.path("up.bin").read_bytes() == b"implicit" * 1000
    ftp.quit()


def test_ftplib_plain_ftp(proxied: Proxied, big_file: tuple[str, str]) -> None:
    name, digest = big_file
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    assert _sha(_retr(ftp, name)) == digest
    ftp.storbinary("STOR plain.bin", io.BytesIO(b"p" * 12345))
    assert proxied.backend.path("plain.bin").read_bytes() == b"p" * 12345
    ftp.quit()


def test_passive_ports_stay_inside_the_range(proxied: Proxied) -> None:
    ftp = proxied.ftp_tls()
    low, high = proxied.passive
    seen = set()
    for _ in range(5):
        host, port = ftp.makepasv()
        assert host == "127.0.0.1" and low <= port <= high
        seen.add(port)
        reply = ftp.sendcmd("EPSV")
        port = int(re.search(r"\|\|\|(\d+)\|", reply).group(1))  # type: ignore[union-attr]
        assert low <= port <= high
        seen.add(port)
    assert len(seen) > 1
    ftp.quit()


# -- curl and lftp ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["explicit", "implicit", "plain"])
@pytest.mark.parametrize("epsv", [True, False])
def test_curl_download_and_upload(
    proxied: Proxied, big_file: tuple[str, str], tmp_path: Path, mode: str, epsv: bool
) -> None:
    require_tool("curl")
    name, digest = big_file
    auth = f"{proxied.backend.user}:{proxied.backend.password}"
    if mode == "implicit":
        base = ["--cacert", str(proxied.pki.ca_cert)]
        url = f"ftps://{auth}@127.0.0.1:{proxied.implicit_port}/"
    elif mode == "explicit":
        base = ["--ssl-reqd", "--cacert", str(proxied.pki.ca_cert)]
        url = f"ftp://{auth}@127.0.0.1:{proxied.port}/"
    else:
        base = []
        url = f"ftp://{auth}@127.0.0.1:{proxied.port}/"
    if not epsv:
        base.append("--disable-epsv")
    out = tmp_path / "out.bin"
    result = run_curl([*base, "-o", str(out), url + name])
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest
    result = run_curl([*base, "-T", str(out), url + "uploaded.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_file(proxied.backend.path("uploaded.bin")) == digest
    result = run_curl([*base, "-l", url])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["big.bin", "uploaded.bin"]


def test_lftp_tls_get_put_and_mirror(
    proxied: Proxied, big_file: tuple[str, str], tmp_path: Path
) -> None:
    require_tool("lftp")
    name, digest = big_file
    tree = tmp_path / "tree"
    for index in range(20):
        (tree / f"d{index % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{index % 3}" / f"f{index}.txt").write_text(f"file {index}\n" * index)
    local = tmp_path / "got.bin"
    result = run_lftp(
        f"set ftp:ssl-force true\nset ftp:ssl-protect-data true\n"
        f"set ssl:ca-file {proxied.pki.ca_cert}\n"
        f"open -u {proxied.backend.user},{proxied.backend.password} "
        f"ftp://127.0.0.1:{proxied.port}\n"
        f"get {name} -o {local}\n"
        f"put {local} -o back.bin\n"
        f"mirror -R {tree} tree\n"
        f"mirror tree {tmp_path / 'tree-back'}\n"
        "set ftp:prefer-epsv no\n"
        f"get {name} -o {local}.pasv\n"
        "bye\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_file(local) == digest == sha256_file(Path(f"{local}.pasv"))
    assert sha256_file(proxied.backend.path("back.bin")) == digest
    for path in tree.rglob("*.txt"):
        relative = path.relative_to(tree)
        assert (proxied.backend.root / "tree" / relative).read_bytes() == path.read_bytes()
        assert (tmp_path / "tree-back" / relative).read_bytes() == path.read_bytes()


# -- failure paths ----------------------------------------------------------------------------


def test_exhausted_passive_range_gives_425_and_recovers(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    # A share above the range: the range itself runs out, not one address's share of it.
    proxied = start_proxy(
        make_proxy, backend, pki, "--max-passive-ports-per-ip", "3", passive_count=2
    )
    holders = [proxied.ftp_tls() for _ in range(2)]
    for ftp in holders:
        ftp.makepasv()  # holds a port: no data connection, no transfer
    third = proxied.ftp_tls()
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        third.makepasv()
    assert proxied.metrics()["ftpsproxy_passive_ports_exhausted_total{}"] == 1
    third.voidcmd("NOOP")  # the session goes on
    holders[0].quit()
    wait_until(lambda: proxied.metrics()["ftpsproxy_passive_ports_in_use{}"] == 1)
    assert third.nlst() == []
    holders[1].quit()
    third.quit()
    wait_until(lambda: proxied.metrics()["ftpsproxy_passive_ports_in_use{}"] == 0)


def test_one_address_gets_its_share_of_the_passive_range_and_others_still_transfer(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    digest = make_random_file(backend.path("share.bin"), 4 * 1024 * 1024)
    ports, share = 30, 3  # the default share: a tenth of the range
    proxied = start_proxy(
        make_proxy, backend, pki, "--max-sessions-per-ip", str(ports + 10), passive_count=ports
    )
    holders = [proxied.ftp_tls() for _ in range(ports)]  # all from 127.0.0.1
    replies = []
    for ftp in holders:
        try:
            ftp.makepasv()  # holds a port: no data connection, no transfer
            replies.append("227")
        except ftplib.error_temp as error:
            replies.append(str(error)[:3])
    assert replies == ["227"] * share + ["425"] * (ports - share)
    holders[0].makepasv()  # a holder asking again gets a port in place of its own
    samples = proxied.metrics()
    assert samples["ftpsproxy_data_connections_refused_total{reason=per_ip_share}"] == ports - share
    assert samples["ftpsproxy_passive_ports_exhausted_total{}"] == 0
    assert samples["ftpsproxy_passive_ports_in_use{}"] == share
    log = proxied.proxy.log_text()  # type: ignore[attr-defined]
    assert log.count("refused a passive port to 127.0.0.1: it holds 3 (its share is 3)") == 27

    # Another address is unaffected: a port, and a whole transfer.
    other = ftplib.FTP_TLS(
        context=client_context(pki.ca_cert), timeout=30, source_address=("127.0.0.2", 0)
    )
    other.connect("127.0.0.1", proxied.port)
    assert other.sock.getsockname()[0] == "127.0.0.2"
    other.login(backend.user, backend.password)
    other.prot_p()
    assert _sha(_retr(other, "share.bin")) == digest
    other.quit()
    for ftp in holders:
        ftp.quit()
    wait_until(lambda: proxied.metrics()["ftpsproxy_passive_ports_in_use{}"] == 0)


def test_unreachable_backend_gives_421(make_proxy: MakeProxy, pki: Pki, tmp_path: Path) -> None:
    dead = PyftpdBackend(tmp_path / "dead")
    dead.port = free_port()  # nothing listens there
    port, low_high = free_port(), free_port_range(2)
    make_proxy(
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--backend", f"ftp://127.0.0.1:{dead.port}",
        "--passive-ports", f"{low_high[0]}-{low_high[1]}",
        ports=[port],
    )  # fmt: skip
    ftp = ftplib.FTP(timeout=30)
    assert ftp.connect("127.0.0.1", port).startswith("220")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd("USER demo")
    assert ftp.sock.recv(1) == b""  # the proxy closed the connection


def test_require_tls_refusals(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki) -> None:
    proxied = start_proxy(make_proxy, backend, pki, "--require-tls")
    clear = ftplib.FTP(timeout=30)
    clear.connect("127.0.0.1", proxied.port)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        clear.login(backend.user, backend.password)
    clear.close()
    ftp = proxied.ftp_tls()
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.prot_c()
    ftp.quit()
    unprotected = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=30)
    unprotected.connect("127.0.0.1", proxied.port)
    unprotected.login(backend.user, backend.password)  # no PROT P
    with pytest.raises(ftplib.error_perm, match=r"^521"):
        unprotected.nlst()
    unprotected.quit()


def test_auth_tls_pipelined_commands_are_not_executed(proxied: Proxied) -> None:
    """CVE-2011-0411 class: a USER injected in clear behind AUTH TLS must be dropped."""
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"AUTH TLS\r\nUSER injected\r\n")
        assert reader.readline().startswith(b"234")
        context = client_context(proxied.pki.ca_cert)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"NOOP\r\n")
            reply = tls.recv(4096)
            assert reply == b"200 NOOP ok.\r\n"
    assert "injected" not in proxied.backend.log_text()


def test_data_connection_from_foreign_address_is_refused(proxied: Proxied) -> None:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    _, port = ftp.makepasv()
    with socket.socket() as thief:
        thief.bind(("127.0.0.2", 0))
        thief.settimeout(10)
        thief.connect(("127.0.0.1", port))
        assert thief.recv(1) == b""  # closed at once
    key = "ftpsproxy_data_connections_refused_total{reason=foreign_address}"
    assert proxied.metrics()[key] == 1
    # The rightful client still gets its data connection on the same port.
    ftp.sendcmd("TYPE I")
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    ftp.sendcmd("NLST")
    assert conn.recv(100) == b""
    conn.close()
    assert ftp.voidresp().startswith("226")
    ftp.quit()


def test_tls_garbage_and_plain_ftp_to_implicit_port_do_not_hurt(proxied: Proxied) -> None:
    with socket.create_connection(("127.0.0.1", proxied.implicit_port), timeout=10) as raw:
        raw.sendall(b"USER demo\r\n")
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as raw:
        raw.recv(100)
        raw.sendall(b"AUTH TLS\r\n")
        raw.recv(100)
        raw.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
    ftp = proxied.ftp_tls()
    assert ftp.nlst() == []
    ftp.quit()
    samples = proxied.metrics()
    failures = [v for k, v in samples.items() if k.startswith("ftpsproxy_tls_handshake_failures")]
    assert sum(failures) >= 2


# -- metrics and logs -------------------------------------------------------------------------


def test_metrics_count_exact_bytes_and_sessions(
    proxied: Proxied, big_file: tuple[str, str]
) -> None:
    name, _ = big_file
    ftp = proxied.ftp_tls()
    _retr(ftp, name)
    ftp.storbinary("STOR small.bin", io.BytesIO(b"s" * 1000))
    ftp.quit()
    wait_until(
        lambda: (
            proxied.metrics().get(
                f"ftpsproxy_sessions_active{{listener=tcp:{proxied.port}:interface=127.0.0.1,"
                "mode=explicit}"
            )
            == 0
        )
    )
    samples = proxied.metrics()
    assert samples["ftpsproxy_transfer_bytes_total{direction=download}"] == BIG
    assert samples["ftpsproxy_transfer_bytes_total{direction=upload}"] == 1000
    assert samples["ftpsproxy_transfers_total{direction=download,result=complete}"] == 1
    listener = f"tcp:{proxied.port}:interface=127.0.0.1"
    assert samples[f"ftpsproxy_sessions_total{{listener={listener},mode=explicit}}"] == 1
    assert samples["ftpsproxy_passive_ports_in_use{}"] == 0


def test_session_log_lines_and_no_password(proxied: Proxied) -> None:
    ftp = proxied.ftp_tls()
    ftp.nlst()
    ftp.quit()
    proxy = proxied.proxy
    match = proxy.wait_log(r"session \d+ end client=127\.0\.0\.1 user=demo")  # type: ignore[attr-defined]
    assert "bytes_down=" in match.string
    assert proxied.backend.password not in proxy.log_text()  # type: ignore[attr-defined]


class _ReuseRecordingFTP_TLS(ReusingFTP_TLS):
    """Records, per data connection, whether the TLS session was resumed."""

    reused: list[bool]

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = super().ntransfercmd(cmd, rest)
        self.reused.append(bool(getattr(conn, "session_reused", False)))
        return conn, size


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_data_connections_resume_the_control_tls_session(
    proxied: Proxied, maximum: ssl.TLSVersion
) -> None:
    """One server context for control and data: clients that resume (curl, lftp) can."""
    ftp = _ReuseRecordingFTP_TLS(
        context=client_context(proxied.pki.ca_cert, maximum_version=maximum), timeout=30
    )
    ftp.reused = []
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    ftp.prot_p()
    for index in range(3):
        ftp.storbinary(f"STOR f{index}", io.BytesIO(b"r" * 1000))
        assert _retr(ftp, f"f{index}") == b"r" * 1000
    ftp.quit()
    assert ftp.reused == [True] * 6


def test_curl_active_mode(proxied: Proxied, big_file: tuple[str, str], tmp_path: Path) -> None:
    """PORT/EPRT from the client: the proxy connects out to the client.

    Plain FTP only: Debian's curl 7.88 never starts the TLS handshake on an accepted
    active-mode data connection, whatever the server (seen directly against pyftpdlib
    too); ftplib covers active mode with TLS below.
    """
    require_tool("curl")
    name, digest = big_file
    url = f"ftp://{proxied.backend.user}:{proxied.backend.password}@127.0.0.1:{proxied.port}/"
    for active in (["-P", "127.0.0.1"], ["-P", "127.0.0.1", "--disable-eprt"]):
        out = tmp_path / "active.bin"
        result = run_curl([*active, "-o", str(out), url + name])
        assert result.returncode == 0, result.stderr
        assert sha256_file(out) == digest
        result = run_curl([*active, "-T", str(out), url + "active-up.bin"])
        assert result.returncode == 0, result.stderr
        assert sha256_file(proxied.backend.path("active-up.bin")) == digest


def test_ftplib_active_mode(proxied: Proxied, big_file: tuple[str, str]) -> None:
    """Active mode with PROT P: the proxy connects out and still acts as the TLS server."""
    name, digest = big_file
    ftp = proxied.ftp_tls()
    ftp.set_pasv(False)
    assert _sha(_retr(ftp, name)) == digest
    ftp.storbinary("STOR act.bin", io.BytesIO(b"a" * 54321))
    assert proxied.backend.path("act.bin").read_bytes() == b"a" * 54321
    assert sorted(ftp.nlst()) == ["act.bin", "big.bin"]
    ftp.quit()
    assert proxied.metrics()["ftpsproxy_passive_ports_in_use{}"] == 0


def test_rest_appe_stou_and_abort(proxied: Proxied, big_file: tuple[str, str]) -> None:
    name, _ = big_file
    whole = proxied.backend.path(name).read_bytes()
    ftp = ftplib.FTP(timeout=30)  # plain control: ftplib.abort() sends Telnet IP + Synch
    ftp.connect("127.0.0.1", proxied.port)
    ftp.login(proxied.backend.user, proxied.backend.password)
    ftp.voidcmd("TYPE I")
    for offset in (1, 4096, 12_345_677, BIG - 1):
        buffer = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", buffer.write, rest=offset)
        assert buffer.getvalue() == whole[offset:]
    ftp.storbinary("STOR part.bin", io.BytesIO(whole[:1000]))
    ftp.storbinary("APPE part.bin", io.BytesIO(whole[1000:5000]))
    assert proxied.backend.path("part.bin").read_bytes() == whole[:5000]
    ftp.storbinary("STOR resumed.bin", io.BytesIO(whole[:3000]))
    ftp.storbinary("STOR resumed.bin", io.BytesIO(whole[3000:9000]), rest=3000)
    assert proxied.backend.path("resumed.bin").read_bytes() == whole[:9000]
    conn = ftp.transfercmd("STOU")
    conn.sendall(b"unique")
    conn.close()
    assert ftp.voidresp().startswith("226")
    # ABOR in the middle of a download: the session stays usable, nothing leaks.
    conn = ftp.transfercmd(f"RETR {name}")
    conn.recv(65536)
    reply = ftp.abort()  # sent as TCP urgent data: the proxy keeps it in the stream
    conn.close()
    assert reply.startswith("426")  # the transfer's reply, then ABOR's own (RFC 959)
    assert ftp.voidresp().startswith(("225", "226"))
    assert "big.bin" in ftp.nlst()
    ftp.quit()
    wait_until(lambda: proxied.metrics()["ftpsproxy_passive_ports_in_use{}"] == 0)
    wait_until(lambda: proxied.metrics()["ftpsproxy_transfers_active{}"] == 0)
