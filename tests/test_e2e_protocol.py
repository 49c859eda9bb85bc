"""End to end: protocol completeness through the proxy (a real ``twistd`` process) to pyftpdlib.

Trees of a thousand files with lftp ``mirror``, resumed transfers, ASCII mode, the
namespace commands, ``EPSV ALL``, IPv6 on either leg, refused verbs and hostile control
input. Bytes are checked by hash or exact comparison, replies by code and text, and the
proxy's metrics are read back after every test (no passive port, no transfer left over).
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import itertools
import os
import random
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.clients import (
    LFTP_PREAMBLE,
    client_context,
    make_random_file,
    require_tool,
    run_curl,
    run_lftp,
    sha256_file,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_until
from tests.test_e2e_core import Proxied, start_proxy

MIB = 1024 * 1024
RESUME_SIZE = 64 * MIB
IN_USE = "ftpsproxy_passive_ports_in_use{}"
ACTIVE = "ftpsproxy_transfers_active{}"


@pytest.fixture
def proxied(make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki) -> Proxied:
    return start_proxy(make_proxy, backend, pki)


# -- helpers ----------------------------------------------------------------------------------


def assert_idle(proxied: Proxied) -> dict[str, float]:
    """Wait until the proxy holds no passive port and runs no transfer; the final samples."""
    wait_until(
        lambda: proxied.metrics()[IN_USE] == 0 and proxied.metrics()[ACTIVE] == 0,
        what="passive ports and transfers back to 0",
    )
    return proxied.metrics()


def metric(samples: dict[str, float], key: str) -> float:
    return samples.get(key, 0.0)


def transfers(samples: dict[str, float], direction: str, result: str) -> float:
    return metric(samples, f"ftpsproxy_transfers_total{{direction={direction},result={result}}}")


def transfer_bytes(samples: dict[str, float], direction: str) -> float:
    return metric(samples, f"ftpsproxy_transfer_bytes_total{{direction={direction}}}")


def retr(ftp: ftplib.FTP, command: str, rest: int | None = None) -> bytes:
    buffer = io.BytesIO()
    ftp.retrbinary(command, buffer.write, blocksize=256 * 1024, rest=rest)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lftp_open(proxied: Proxied) -> str:
    """lftp settings for explicit FTPS through the proxy, verified against the test CA."""
    return (
        "set ftp:ssl-force true\n"
        "set ftp:ssl-protect-data true\n"
        f"set ssl:ca-file {proxied.pki.ca_cert}\n"
        "set file:charset UTF-8\n"
        "set ftp:charset UTF-8\n"
        f"open -u {proxied.backend.user},{proxied.backend.password} "
        f"ftp://127.0.0.1:{proxied.port}\n"
    )


def direct_ftp(backend: PyftpdBackend) -> ftplib.FTP:
    """A plain ftplib session straight to the backend, bypassing the proxy."""
    ftp = ftplib.FTP(timeout=30)
    ftp.connect(*backend.address)
    ftp.login(backend.user, backend.password)
    return ftp


def tree_listing(root: Path) -> dict[str, bytes | None]:
    """Every path under *root* (relative, exact names): file contents, None for directories."""
    listing: dict[str, bytes | None] = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        listing[relative] = None if path.is_dir() else path.read_bytes()
    return listing


# -- 1. lftp mirror of a tree of a thousand files -------------------------------------------


TREE_DIRECTORIES = [
    "alpha",
    "alpha/nested deeper",
    "beta",
    "with space",
    "Übergröße 目录",
    "deep/a/b/c",
    "empty dir",
    "ünïcödé/only empties",
]
TREE_FILES = 1_000


def make_tree(root: Path) -> dict[str, bytes | None]:
    """Files of 0-3000 bytes (every 11th empty), names with spaces and non-ASCII UTF-8."""
    rng = random.Random(20240229)
    for directory in TREE_DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    homes = [d for d in TREE_DIRECTORIES if d not in ("empty dir",)]
    for index in range(TREE_FILES):
        home = root / homes[index % len(homes)]
        if index == 0:
            name = "Übergröße 文件.txt"
        elif index % 7 == 0:
            name = f"Übergröße 文件 {index}.txt"
        elif index % 5 == 0:
            name = f"file with  spaces {index}.dat"
        else:
            name = f"f{index:04d}.bin"
        if home.name == "only empties" or index % 11 == 0:
            data = b""
        else:
            data = rng.randbytes(rng.randrange(1, 3000))
        (home / name).write_bytes(data)
    return tree_listing(root)


def test_lftp_mirror_round_trip_of_a_thousand_files(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    require_tool("lftp")
    # lftp's 4 connections, all from 127.0.0.1: more than the default share of 10 ports.
    proxied = start_proxy(make_proxy, backend, pki, "--max-passive-ports-per-ip", "10")
    source = tmp_path / "source"
    expected = make_tree(source)
    files = [name for name, data in expected.items() if data is not None]
    assert len(files) == TREE_FILES
    back = tmp_path / "back"
    result = run_lftp(
        "set mirror:parallel-transfer-count 4\n"
        "set net:connection-limit 4\n"
        + lftp_open(proxied)
        + f'mirror -R --no-perms "{source}" tree\n'
        + f'mirror --no-perms tree "{back}"\n'
        + "bye\n",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    uploaded = tree_listing(proxied.backend.root / "tree")
    assert sorted(uploaded) == sorted(expected)  # names exactly, directories included
    assert uploaded == expected
    downloaded = tree_listing(back)
    assert sorted(downloaded) == sorted(expected)
    assert downloaded == expected
    samples = assert_idle(proxied)
    total = sum(len(data) for data in expected.values() if data is not None)
    assert transfers(samples, "upload", "complete") == TREE_FILES
    # lftp creates empty files itself when mirroring down: no RETR for them.
    assert transfers(samples, "download", "complete") == len([d for d in files if expected[d]])
    for direction in ("upload", "download", "listing"):
        assert transfers(samples, direction, "failed") == 0
        assert transfers(samples, direction, "aborted") == 0
    assert transfer_bytes(samples, "upload") == total
    assert transfer_bytes(samples, "download") == total


# -- 2. resuming interrupted transfers ---------------------------------------------------------


def _run_lftp_until(script: str, progress: Callable[[], int], threshold: int) -> int:
    """Start lftp on *script*, SIGKILL it once ``progress()`` reaches *threshold* bytes.

    Returns the progress at the kill. Bounded: fails after 30 s without enough progress.
    """
    lftp = require_tool("lftp")
    with tempfile.TemporaryDirectory(prefix="lftp-") as tmp:
        script_path = Path(tmp) / "script.lftp"
        script_path.write_text(LFTP_PREAMBLE + script.strip() + "\n")
        proc = subprocess.Popen(
            [lftp, "-f", str(script_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def far_enough() -> bool:
            assert proc.poll() is None, f"lftp ended early with {proc.returncode}"
            return progress() >= threshold

        try:
            wait_until(far_enough, 30, f"{threshold} bytes transferred", interval=0.02)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    return progress()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_stable_size(path: Path) -> int:
    """The size of a file another process was writing, once it stopped growing."""
    last = -1
    deadline = time.monotonic() + 10
    while True:
        size = _size(path)
        if size == last:
            return size
        assert time.monotonic() < deadline, f"{path} still growing"
        last = size
        time.sleep(0.3)


def test_interrupted_download_and_upload_resume(proxied: Proxied, tmp_path: Path) -> None:
    """lftp killed mid-transfer, then resumed: only the missing bytes cross the proxy.

    The upload resumes with ``put -c`` (SIZE, REST, STOR): lftp's ``mirror -R --continue``
    re-sends whole files even straight to pyftpdlib, so it proves nothing about REST.
    """
    require_tool("lftp")
    proxied.backend.path("data").mkdir()
    source = proxied.backend.path("data") / "big.bin"
    digest = make_random_file(source, RESUME_SIZE)
    # An hour old: lftp's mirror continues a local file only if it is newer than the remote
    # one by more than the listing's time precision (a minute with LIST, see the FEAT test).
    hour_ago = time.time() - 3600
    os.utime(source, (hour_ago, hour_ago))
    slow = "set net:limit-rate 2M\n"

    # Download: `mirror` killed mid-way, then `mirror --continue` (REST + RETR).
    local = tmp_path / "data" / "big.bin"
    _run_lftp_until(
        slow + lftp_open(proxied) + f'mirror data "{local.parent}"\n',
        lambda: _size(local),
        2 * MIB,
    )
    partial = _size(local)
    assert 0 < partial < RESUME_SIZE
    before = assert_idle(proxied)
    result = run_lftp(
        lftp_open(proxied) + f'mirror --continue data "{local.parent}"\nbye\n', timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_file(local) == digest
    after = assert_idle(proxied)
    resumed = transfer_bytes(after, "download") - transfer_bytes(before, "download")
    assert resumed == RESUME_SIZE - partial
    assert transfers(after, "download", "complete") == transfers(before, "download", "complete") + 1

    # Upload: `put` killed mid-way, then `put -c` (SIZE, REST + STOR).
    remote = proxied.backend.path("up.bin")
    _run_lftp_until(
        slow + lftp_open(proxied) + f'put "{local}" -o up.bin\n',
        lambda: _size(remote),
        2 * MIB,
    )
    before = assert_idle(proxied)
    partial = _wait_stable_size(remote)
    assert 0 < partial < RESUME_SIZE
    result = run_lftp(lftp_open(proxied) + f'put -c "{local}" -o up.bin\nbye\n', timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256_file(remote) == digest
    after = assert_idle(proxied)
    assert transfer_bytes(after, "upload") - transfer_bytes(before, "upload") == (
        RESUME_SIZE - partial
    )
    assert transfers(after, "upload", "complete") == transfers(before, "upload", "complete") + 1
    # How the interrupted transfers were counted is not asserted here: see
    # test_transfer_cut_off_by_the_client_going_away_is_counted and
    # test_upload_cut_off_uncleanly_is_not_reported_complete.


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_transfer_cut_off_by_the_client_going_away_is_counted(
    proxied: Proxied, direction: str
) -> None:
    make_random_file(proxied.backend.path("big.bin"), 16 * MIB)
    ftp = proxied.ftp_tls()
    ftp.voidcmd("TYPE I")
    if direction == "download":
        conn = ftp.transfercmd("RETR big.bin")
        assert conn.recv(65536)
    else:
        conn = ftp.transfercmd("STOR up.bin")
        conn.sendall(b"u" * MIB)
        wait_until(lambda: _size(proxied.backend.path("up.bin")) > 0, what="upload under way")
    # The client dies: both connections closed, no ABOR, no QUIT, no close_notify. The
    # control connection first, so the session always ends before any backend reply.
    ftp.close()
    conn.close()
    proxied.proxy.wait_log(r"session \d+ end ")  # type: ignore[attr-defined]
    samples = assert_idle(proxied)
    counted = {k: v for k, v in samples.items() if k.startswith("ftpsproxy_transfers_total")}
    assert transfers(samples, direction, "complete") == 0, counted
    assert (
        transfers(samples, direction, "failed") + transfers(samples, direction, "aborted") == 1
    ), counted


@pytest.mark.parametrize("ending", ["tls-without-close-notify", "tcp-reset"])
def test_upload_cut_off_uncleanly_is_not_reported_complete(proxied: Proxied, ending: str) -> None:
    if ending == "tcp-reset":
        ftp: ftplib.FTP = ftplib.FTP(timeout=30)
        ftp.connect("127.0.0.1", proxied.port)
        ftp.login(proxied.backend.user, proxied.backend.password)
    else:
        # TLS 1.2: no session tickets after the handshake, so close() sends a plain FIN.
        context = client_context(proxied.pki.ca_cert, maximum_version=ssl.TLSVersion.TLSv1_2)
        ftp = ftplib.FTP_TLS(context=context, timeout=30)
        ftp.connect("127.0.0.1", proxied.port)
        ftp.login(proxied.backend.user, proxied.backend.password)
        ftp.prot_p()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR cut.bin")
    conn.sendall(b"c" * MIB)
    if ending == "tcp-reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # no unwrap(): no close_notify
    with pytest.raises(ftplib.error_temp, match=r"^4\d\d"):
        ftp.voidresp()
    ftp.quit()
    samples = assert_idle(proxied)
    assert transfers(samples, "upload", "complete") == 0
    assert transfers(samples, "upload", "failed") == 1


# -- 3. ftplib: active mode with REST, TYPE A, the namespace commands, UTF-8 names ------------


def test_active_mode_tls_rest_at_arbitrary_offsets(proxied: Proxied) -> None:
    size = 3 * MIB + 17
    digest = make_random_file(proxied.backend.path("src.bin"), size)
    whole = proxied.backend.path("src.bin").read_bytes()
    assert sha(whole) == digest
    ftp = proxied.ftp_tls()
    ftp.set_pasv(False)
    rng = random.Random(7)
    offsets = [0, 1, 255, 65_536, 65_537, size // 2 + 3, size - 1, size]
    offsets += [rng.randrange(size) for _ in range(3)]
    for offset in offsets:
        assert retr(ftp, "RETR src.bin", rest=offset) == whole[offset:], offset
    # STOR with REST in active mode: write the file back in three unequal pieces.
    cuts = [0, 12_345, 2 * MIB + 1, size]
    for start, end in itertools.pairwise(cuts):
        ftp.storbinary("STOR dst.bin", io.BytesIO(whole[start:end]), rest=start or None)
    assert sha256_file(proxied.backend.path("dst.bin")) == digest
    # REST then a different command: REST applies to the next transfer only.
    assert ftp.sendcmd("REST 100").startswith("350")
    assert retr(ftp, "RETR src.bin") == whole[100:]
    assert retr(ftp, "RETR src.bin") == whole
    # Past the end: the backend's 554 comes back, the prepared data channel is dropped.
    with pytest.raises(ftplib.error_perm, match=r"^554"):
        retr(ftp, "RETR src.bin", rest=size + 1)
    assert retr(ftp, "RETR src.bin", rest=size - 2) == whole[-2:]
    ftp.quit()
    samples = assert_idle(proxied)
    assert transfers(samples, "download", "complete") == len(offsets) + 3
    assert transfers(samples, "download", "failed") == 1
    assert transfers(samples, "upload", "complete") == 3
    assert transfer_bytes(samples, "upload") == size


TEXT = b"first line\nsecond\r\nthird with trailing CR\r\n\nlast without end"


def _ascii_session(ftp: ftplib.FTP, name: str) -> tuple[bytes, list[str]]:
    """Upload TEXT in TYPE A (raw bytes) and with storlines; read it back both ways."""
    ftp.voidcmd("TYPE A")
    with ftp.transfercmd(f"STOR {name}") as conn:
        conn.sendall(TEXT)
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    ftp.voidresp()
    ftp.storlines(f"STOR lines-{name}", io.BytesIO(TEXT))
    ftp.voidcmd("TYPE A")
    with ftp.transfercmd(f"RETR {name}") as conn:
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    ftp.voidresp()
    lines: list[str] = []
    ftp.retrlines(f"RETR lines-{name}", lines.append)
    return b"".join(chunks), lines


def test_type_ascii_converts_exactly_as_the_backend_does(proxied: Proxied) -> None:
    proxy_ftp = proxied.ftp_tls()
    through = _ascii_session(proxy_ftp, "proxied.txt")
    proxy_ftp.quit()
    direct = direct_ftp(proxied.backend)
    straight = _ascii_session(direct, "direct.txt")
    direct.quit()
    assert through == straight
    root = proxied.backend.root
    assert (root / "proxied.txt").read_bytes() == (root / "direct.txt").read_bytes()
    assert (root / "lines-proxied.txt").read_bytes() == (root / "lines-direct.txt").read_bytes()
    # What pyftpdlib does on POSIX: CRLF -> LF on the way in, LF -> CRLF on the way out.
    assert (root / "proxied.txt").read_bytes() == TEXT.replace(b"\r\n", b"\n")
    assert through[0] == TEXT.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert through[1] == ["first line", "second", "third with trailing CR", "", "last without end"]
    assert_idle(proxied)


def _namespace_replies(ftp: ftplib.FTP) -> list[tuple[str, str]]:
    """The namespace and informational commands: (command, whole reply) in order."""
    out: list[tuple[str, str]] = []

    def cmd(line: str) -> None:
        try:
            reply = ftp.sendcmd(line)
        except ftplib.Error as error:
            reply = str(error)
        out.append((line, reply))

    cmd("TYPE I")
    cmd("PWD")
    cmd("MKD work dir")
    cmd("CWD work dir")
    cmd("PWD")
    ftp.storbinary("STOR data.bin", io.BytesIO(b"0123456789" * 1000))
    cmd("SIZE data.bin")
    cmd("MFMT 20200102030405 data.bin")
    cmd("MDTM data.bin")
    cmd("OPTS MLST type;size;modify;unix.mode;")
    cmd("MLST data.bin")
    cmd("SITE CHMOD 600 data.bin")
    cmd("MLST data.bin")
    cmd("RNFR data.bin")
    cmd("RNTO renamed.bin")
    cmd("SIZE data.bin")
    cmd("STAT renamed.bin")
    listing = sorted((name, facts["size"], facts["type"]) for name, facts in ftp.mlsd())
    out.append(("MLSD", repr(listing)))
    cmd("CDUP")
    cmd("PWD")
    cmd("RMD work dir")  # not empty: 550
    cmd("DELE work dir/renamed.bin")
    cmd("RMD work dir")
    cmd("CWD work dir")  # gone: 550
    cmd("HELP")
    cmd("HELP RETR")
    cmd("SITE HELP")
    cmd("NOOP")
    cmd("SYST")
    return out


def test_namespace_commands_reply_as_the_backend_does(proxied: Proxied) -> None:
    ftp = proxied.ftp_tls()
    through = _namespace_replies(ftp)
    status = ftp.sendcmd("STAT")
    ftp.quit()
    direct = direct_ftp(proxied.backend)
    straight = _namespace_replies(direct)
    direct.quit()
    assert through == straight  # line for line, multi-line replies included
    codes = [(command, reply[:3]) for command, reply in through]
    assert codes == [
        ("TYPE I", "200"),
        ("PWD", "257"),
        ("MKD work dir", "257"),
        ("CWD work dir", "250"),
        ("PWD", "257"),
        ("SIZE data.bin", "213"),
        ("MFMT 20200102030405 data.bin", "213"),
        ("MDTM data.bin", "213"),
        ("OPTS MLST type;size;modify;unix.mode;", "200"),
        ("MLST data.bin", "250"),
        ("SITE CHMOD 600 data.bin", "200"),
        ("MLST data.bin", "250"),
        ("RNFR data.bin", "350"),
        ("RNTO renamed.bin", "250"),
        ("SIZE data.bin", "550"),
        ("STAT renamed.bin", "213"),
        ("MLSD", "[('"),
        ("CDUP", "250"),
        ("PWD", "257"),
        ("RMD work dir", "550"),
        ("DELE work dir/renamed.bin", "250"),
        ("RMD work dir", "250"),
        ("CWD work dir", "550"),
        ("HELP", "214"),
        ("HELP RETR", "214"),
        ("SITE HELP", "214"),
        ("NOOP", "200"),
        ("SYST", "215"),
    ]
    replies = [reply for _, reply in through]
    assert replies[4] == '257 "/work dir" is the current directory.'
    assert replies[5] == "213 10000"
    assert replies[7] == "213 20200102030405"
    assert "modify=20200102030405;" in replies[9] and "size=10000;" in replies[9]
    mode = re.compile(r"unix\.mode=0o?600;")  # pyftpdlib 2.2 writes Python's 0o600
    assert mode.search(replies[11]) and not mode.search(replies[9])
    assert replies[15].startswith("213-") and "renamed.bin" in replies[15]
    assert replies[16] == repr([("renamed.bin", "10000", "file")])
    assert replies[18] == '257 "/" is the current directory.'
    assert replies[23].startswith("214-") and "RETR" in replies[23] and "\n" in replies[23]
    assert status.startswith("211-") and status.endswith("211 End of status.")
    assert not proxied.backend.path("work dir").exists()
    assert_idle(proxied)


UTF8_NAMES = [
    "Übergröße 文件.txt",
    "with space.bin",
    "two  inner  spaces.bin",
    "trailing space .bin",
    "emoji 🎉 und ß.bin",
    "ελληνικά русский 日本語.dat",
]


def test_utf8_names_with_spaces_round_trip_exactly(proxied: Proxied) -> None:
    ftp = proxied.ftp_tls()
    assert ftp.encoding == "utf-8"
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    contents = {name: os.urandom(1000 + index) for index, name in enumerate(UTF8_NAMES)}
    for name, data in contents.items():
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    assert sorted(ftp.nlst()) == sorted(UTF8_NAMES)
    assert sorted(os.listdir(proxied.backend.root)) == sorted(UTF8_NAMES)
    for name, data in contents.items():
        assert (proxied.backend.root / name).read_bytes() == data
        assert retr(ftp, f"RETR {name}") == data
        assert ftp.size(name) == len(data)
    facts = {name: facts for name, facts in ftp.mlsd()}
    assert sorted(facts) == sorted(UTF8_NAMES)
    for name in UTF8_NAMES:
        assert ftp.delete(name).startswith("250")
    assert ftp.nlst() == []
    ftp.quit()
    assert os.listdir(proxied.backend.root) == []
    assert_idle(proxied)


# -- 4. EPSV ALL ------------------------------------------------------------------------------


def test_epsv_all_refuses_pasv_port_eprt_but_epsv_works(proxied: Proxied) -> None:
    proxied.backend.path("x.bin").write_bytes(b"x" * 100_000)
    ftp = proxied.ftp_tls()
    assert ftp.sendcmd("EPSV ALL").startswith("200")
    for line in ("PASV", "PORT 127,0,0,1,200,10", "EPRT |1|127.0.0.1|51210|"):
        with pytest.raises(ftplib.error_perm, match=r"^5\d\d"):
            ftp.sendcmd(line)
    ftp.sendcmd("TYPE I")
    reply = ftp.sendcmd("EPSV")
    assert ftp.sock is not None
    port = ftplib.parse229(reply, ftp.sock.getpeername())[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        conn = ftp.context.wrap_socket(raw, server_hostname="127.0.0.1")
        ftp.sendcmd("RETR x.bin")  # 150
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.unwrap()
    assert ftp.voidresp().startswith("226")
    assert data == b"x" * 100_000
    assert ftp.sendcmd("EPSV 1").startswith("229")  # a prepared port, then dropped
    ftp.quit()
    assert_idle(proxied)


# -- 5. IPv6 ----------------------------------------------------------------------------------


#: No IPv6 loopback skips these, or fails them under CI=true (the ``ipv6_loopback`` fixture).
needs_ipv6 = pytest.mark.usefixtures("ipv6_loopback")


def _ftplib_round_trip(ftp: ftplib.FTP_TLS, tag: str, data: bytes, digest: str) -> None:
    for passive in (True, False):
        ftp.set_pasv(passive)
        name = f"{tag}-{'pasv' if passive else 'active'}.bin"
        assert sha(retr(ftp, "RETR seed.bin")) == digest
        ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=256 * 1024)
        assert name in ftp.nlst()


@needs_ipv6
def test_ipv6_listener_with_ipv4_backend(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    port6 = free_port("::1")
    proxied = start_proxy(make_proxy, backend, pki, "--listen", f"tcp6:{port6}:interface=\\:\\:1")
    proxied.proxy.wait_listening([port6])  # type: ignore[attr-defined]
    digest = make_random_file(backend.path("seed.bin"), 2 * MIB + 5)
    data = backend.path("seed.bin").read_bytes()
    ftp = ftplib.FTP_TLS(context=client_context(pki.ca_cert), timeout=30)
    ftp.connect("::1", port6)
    assert ftp.af == socket.AF_INET6  # ftplib now sends EPSV and EPRT
    ftp.login(backend.user, backend.password)
    ftp.prot_p()
    _ftplib_round_trip(ftp, "v6", data, digest)
    for name in ("v6-pasv.bin", "v6-active.bin"):
        assert sha256_file(backend.path(name)) == digest
    with pytest.raises(ftplib.error_perm, match=r"^522"):
        ftp.sendcmd("EPSV 1")  # the connection is IPv6
    ftp.quit()
    # curl, explicit FTPS, to the bracketed literal (its certificate names ::1).
    require_tool("curl")
    url = f"ftp://{backend.user}:{backend.password}@[::1]:{port6}/"
    base = ["--ssl-reqd", "--cacert", str(pki.ca_cert)]
    out = tmp_path / "curl.bin"
    result = run_curl([*base, "-o", str(out), url + "seed.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest
    result = run_curl([*base, "-T", str(out), url + "curl-up.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_file(backend.path("curl-up.bin")) == digest
    result = run_curl([*base, "-l", url])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(
        ["seed.bin", "v6-pasv.bin", "v6-active.bin", "curl-up.bin"]
    )
    samples = assert_idle(proxied)
    listener = f"listener=tcp6:{port6}:interface=\\:\\:1,mode=explicit"
    assert samples[f"ftpsproxy_sessions_total{{{listener}}}"] == 4  # ftplib, then curl x3
    assert samples[f"ftpsproxy_sessions_active{{{listener}}}"] == 0
    assert transfers(samples, "download", "complete") == 3
    assert transfers(samples, "upload", "complete") == 3


class Pasv6FTP_TLS(ftplib.FTP_TLS):
    """Sends PASV on IPv6 too, and trusts the address in the 227 reply (RFC 959)."""

    def makepasv(self) -> tuple[str, int]:
        return ftplib.parse227(self.sendcmd("PASV"))


@needs_ipv6
def test_pasv_on_ipv6_is_refused_or_usable(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki
) -> None:
    port6 = free_port("::1")
    proxied = start_proxy(make_proxy, backend, pki, "--listen", f"tcp6:{port6}:interface=\\:\\:1")
    proxied.proxy.wait_listening([port6])  # type: ignore[attr-defined]
    backend.path("seed.bin").write_bytes(b"s" * 1000)
    ftp = Pasv6FTP_TLS(context=client_context(pki.ca_cert), timeout=10)
    ftp.connect("::1", port6)
    ftp.login(backend.user, backend.password)
    ftp.prot_p()
    try:
        data = retr(ftp, "RETR seed.bin")
    except ftplib.error_temp as error:  # 425: an honest refusal is fine
        assert str(error).startswith("425"), error
    else:
        assert data == b"s" * 1000
    finally:
        ftp.close()
    assert_idle(proxied)


@needs_ipv6
def test_ipv6_backend_behind_ipv4_listener(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    backend6 = make_backend(ipv6=True)
    assert backend6.url.startswith("ftp://[::1]:")
    proxied = start_proxy(make_proxy, backend6, pki)
    digest = make_random_file(backend6.path("seed.bin"), 2 * MIB + 5)
    data = backend6.path("seed.bin").read_bytes()
    ftp = proxied.ftp_tls()
    assert ftp.af == socket.AF_INET  # ftplib sends PASV and PORT
    _ftplib_round_trip(ftp, "v4", data, digest)
    assert sha(retr(ftp, "RETR seed.bin", rest=MIB)) == sha(data[MIB:])
    ftp.quit()
    for name in ("v4-pasv.bin", "v4-active.bin"):
        assert sha256_file(backend6.path(name)) == digest
    samples = assert_idle(proxied)
    assert transfers(samples, "download", "complete") == 3
    assert transfers(samples, "upload", "complete") == 2


def _feat_names(reply: str) -> set[str]:
    lines = reply.splitlines()
    assert lines[0].startswith("211-") and lines[-1].startswith("211 "), reply
    return {line.strip().upper() for line in lines[1:-1]}


def test_feat_lists_the_backend_features_only_after_login(proxied: Proxied) -> None:
    """Before login FEAT is the proxy's own: the backend's list would fingerprint the
    server software behind the proxy to anyone who connects."""
    direct = ftplib.FTP(timeout=10)
    direct.connect(*proxied.backend.address)
    backend_features = _feat_names(direct.sendcmd("FEAT"))
    direct.close()
    ftp = ftplib.FTP_TLS(context=client_context(proxied.pki.ca_cert), timeout=10)
    ftp.connect("127.0.0.1", proxied.port)
    ftp.auth()
    before_login = _feat_names(ftp.sendcmd("FEAT"))
    ftp.login(proxied.backend.user, proxied.backend.password)
    after_login = _feat_names(ftp.sendcmd("FEAT"))
    ftp.quit()
    wanted = {"MDTM", "SIZE", "REST STREAM", "MFMT", "TVFS"}
    assert wanted <= backend_features
    assert any(name.startswith("MLST ") for name in backend_features)
    assert wanted <= after_login  # once logged in the proxy merges the backend's list
    assert before_login == {"AUTH TLS", "AUTH SSL", "PBSZ", "PROT", "EPSV", "EPRT", "UTF8"}


# -- 6. refused and accepted verbs ------------------------------------------------------------


REFUSED = ["CCC", "REIN", "MODE Z", "CPSV", "SSCN", "SSCN ON"]


def test_refused_verbs_get_5xx_and_are_hidden_from_feat(
    make_proxy: MakeProxy, make_backend: Callable[..., PyftpdBackend], pki: Pki
) -> None:
    backend = make_backend(extra_args=["--verbose"])  # logs every command it receives
    proxied = start_proxy(make_proxy, backend, pki)
    ftp = proxied.ftp_tls()
    for line in REFUSED:
        with pytest.raises(ftplib.error_perm, match=r"^5\d\d "):
            ftp.sendcmd(line)
    early = ftplib.FTP(timeout=10)
    early.connect("127.0.0.1", proxied.port)
    before_login = early.sendcmd("FEAT").splitlines()
    early.close()
    feat = ftp.sendcmd("FEAT").splitlines()
    assert feat[0].startswith("211-") and feat[-1].startswith("211 ")
    names = [line.strip().upper() for line in feat[1:-1] + before_login[1:-1]]
    for hidden in ("CCC", "REIN", "CPSV", "SSCN"):
        assert not any(name.split()[0] == hidden for name in names), names
    assert not any(name.startswith("MODE") and "Z" in name for name in names), names
    assert "EPSV" in names and "UTF8" in names
    assert ftp.sendcmd("MODE S").startswith("200")
    assert ftp.sendcmd("STRU F").startswith("200")
    assert ftp.sendcmd("ALLO 100").startswith(("200", "202"))
    ftp.storbinary("STOR after.bin", io.BytesIO(b"still fine" * 100))
    assert retr(ftp, "RETR after.bin") == b"still fine" * 100
    ftp.quit()
    assert backend.path("after.bin").read_bytes() == b"still fine" * 100
    log = backend.log_text()
    assert "<- MODE S" in log and "<- ALLO 100" in log  # accepted ones were relayed
    for line in ("<- CCC", "<- REIN", "<- MODE Z", "<- CPSV", "<- SSCN"):
        assert line not in log, f"{line} reached the backend"
    assert_idle(proxied)


# -- 7. hostile control input -----------------------------------------------------------------


class RawControl:
    """A bare control connection: bytes out, whole replies (multi-line included) in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        first = self.reader.readline()
        assert first.endswith(b"\r\n"), first
        if first[3:4] == b"-":
            line = first
            while not (line[:3] == first[:3] and line[3:4] == b" "):
                line = self.reader.readline()
                assert line, "connection closed inside a multi-line reply"
        return first

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def raw_control(proxied: Proxied) -> Iterator[Callable[[], RawControl]]:
    opened: list[RawControl] = []

    def _open() -> RawControl:
        control = RawControl(proxied.port)
        opened.append(control)
        assert control.reply().startswith(b"220")
        return control

    yield _open
    for control in opened:
        control.close()


def _login(control: RawControl, backend: PyftpdBackend) -> None:
    control.send(f"USER {backend.user}\r\n".encode())
    assert control.reply().startswith(b"331")
    control.send(f"PASS {backend.password}\r\n".encode())
    assert control.reply().startswith(b"230")


def test_overlong_line_gets_500_and_the_connection_closes(
    proxied: Proxied, raw_control: Callable[[], RawControl]
) -> None:
    control = raw_control()
    _login(control, proxied.backend)
    control.send(b"NOOP " + b"A" * 4995)  # 5000 bytes, no line end
    assert control.reply().startswith(b"500")
    assert control.closed()
    # Before login too, and in pieces.
    control = raw_control()
    for _ in range(5):
        control.send(b"B" * 1000)
    assert control.reply().startswith(b"500")
    assert control.closed()
    assert_idle(proxied)


def test_nul_and_embedded_cr_get_500_and_the_session_goes_on(
    proxied: Proxied, raw_control: Callable[[], RawControl]
) -> None:
    control = raw_control()
    _login(control, proxied.backend)
    for bad in (b"NOOP\x00\r\n", b"CWD a\x00b\r\n", b"NO\rOP\r\n", b"DELE x\rDELE y\r\n"):
        control.send(bad)
        assert control.reply().startswith(b"500"), bad
        control.send(b"PWD\r\n")
        assert control.reply() == b'257 "/" is the current directory.\r\n'
    control.send(b"QUIT\r\n")
    assert control.reply().startswith(b"221")
    assert control.closed()
    log = proxied.backend.log_text()
    assert "DELE" not in log
    assert_idle(proxied)


def test_bare_lf_and_pipelined_commands(
    proxied: Proxied, raw_control: Callable[[], RawControl]
) -> None:
    proxied.backend.path("p.bin").write_bytes(b"p" * 4321)
    control = raw_control()
    user, password = proxied.backend.user, proxied.backend.password
    # Bare LF line ends, all in one send, login included.
    control.send(f"USER {user}\nPASS {password}\nTYPE I\nPWD\nSIZE p.bin\n".encode())
    assert control.reply().startswith(b"331")
    assert control.reply().startswith(b"230")
    assert control.reply().startswith(b"200")
    assert control.reply() == b'257 "/" is the current directory.\r\n'
    assert control.reply() == b"213 4321\r\n"
    # CRLF, pipelined: multi-line replies, an error in the middle, then a transfer set-up.
    control.send(b"MKD d\r\nCWD d\r\nFEAT\r\nSIZE nothing\r\nCDUP\r\nRMD d\r\nNOOP\r\nEPSV\r\n")
    assert control.reply().startswith(b"257")
    assert control.reply().startswith(b"250")
    assert control.reply().startswith(b"211-")
    assert control.reply().startswith(b"550")
    assert control.reply().startswith(b"250")
    assert control.reply().startswith(b"250")
    assert control.reply().startswith(b"200")
    epsv = control.reply().decode()
    assert epsv.startswith("229")
    port = ftplib.parse229(epsv.strip(), ("127.0.0.1", 0))[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as data:
        # RETR and what follows it in one send: the NOOP waits for the transfer's end.
        control.send(b"RETR p.bin\nNOOP\nQUIT\n")
        assert control.reply().startswith((b"125", b"150"))
        received = b""
        while chunk := data.recv(65536):
            received += chunk
    assert received == b"p" * 4321
    assert control.reply().startswith(b"226")
    assert control.reply().startswith(b"200")
    assert control.reply().startswith(b"221")
    assert control.closed()
    assert not proxied.backend.path("d").exists()
    samples = assert_idle(proxied)
    assert transfers(samples, "download", "complete") == 1
