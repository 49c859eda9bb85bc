"""The xferlog line format (wu-ftpd / ProFTPD), and the proxy writing it."""

from __future__ import annotations

import io
import time
from pathlib import Path

from ftpsproxy.observe.xferlog import TransferRecord, format_line
from tests.conftest import MakeProxy
from tests.support.backend import PyftpdBackend
from tests.support.certs import Pki
from tests.support.waiting import wait_until
from tests.test_e2e_core import start_proxy


def test_line_has_the_fourteen_fields_in_order() -> None:
    finished = time.mktime((2026, 11, 24, 3, 4, 5, 0, 0, -1))
    line = format_line(
        TransferRecord(
            finished=finished,
            seconds=2.4,
            client="192.0.2.9",
            size=1234,
            filename="/pub/my file.bin",
            binary=True,
            upload=False,
            user="demo",
            complete=True,
        )
    )
    assert line == (
        "Tue Nov 24 03:04:05 2026 2 192.0.2.9 1234 /pub/my_file.bin b _ o r demo ftp 0 * c"
    )


def test_hostile_names_cannot_break_the_line() -> None:
    record = TransferRecord(0, 0.1, "::1", 0, "a\nb\tc d", False, True, "x y", False)
    fields = format_line(record).split(" ")
    assert len(fields) == 18  # 5 for the date, 13 more
    assert fields[8] == "a_b_c_d" and fields[13] == "x_y" and fields[-1] == "i"
    assert fields[9:12] == ["a", "_", "i"]


def test_proxy_writes_one_line_per_file_transfer(
    make_proxy: MakeProxy, backend: PyftpdBackend, pki: Pki, tmp_path: Path
) -> None:
    xferlog = tmp_path / "xferlog"
    proxied = start_proxy(make_proxy, backend, pki, "--xferlog", str(xferlog))
    backend.path("down.bin").write_bytes(b"d" * 5000)
    ftp = proxied.ftp_tls()
    ftp.voidcmd("TYPE I")
    ftp.retrbinary("RETR down.bin", lambda data: None)
    ftp.storbinary("STOR up.bin", io.BytesIO(b"u" * 700))
    ftp.nlst()  # listings are not file transfers
    ftp.quit()
    wait_until(lambda: len(xferlog.read_text().splitlines()) >= 2, 10, "2 xferlog lines")
    lines = [line.split(" ") for line in xferlog.read_text().splitlines()]
    assert [(f[7], f[8], f[9], f[11], f[13], f[-1]) for f in lines] == [
        ("5000", "down.bin", "b", "o", "demo", "c"),
        ("700", "up.bin", "b", "i", "demo", "c"),
    ]
    assert all(f[6] == "127.0.0.1" for f in lines)
