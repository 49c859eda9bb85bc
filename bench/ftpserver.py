"""A pyftpdlib FTP or explicit-FTPS server for the benchmark, run as its own process.

Started by ``bench/run.py``; prints ``READY <port>`` on stdout once listening and
stops on SIGTERM.  Plain and TLS servers get the same data-path settings (socket
buffer sizes of pyftpdlib's data handler and file producer), so that a difference
between them is TLS and nothing else.  pyftpdlib serves plain RETR with
``sendfile()``; over TLS it reads the file in ``--buffer`` chunks.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.handlers.ftp import producers
from pyftpdlib.servers import FTPServer

#: pyftpdlib permissions: every read and write operation.
FULL_PERMS = "elradfmwMT"


def _loopback(value: str) -> str:
    if not ipaddress.ip_address(value).is_loopback:
        raise argparse.ArgumentTypeError(f"{value!r} is not a loopback address")
    return value


def _port_range(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    return int(low), int(high or low)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--passive-ports", type=_port_range, required=True, metavar="MIN-MAX")
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve explicit FTPS")
    parser.add_argument("--tls-key", type=Path, default=None)
    parser.add_argument(
        "--buffer", type=int, default=262144, help="data handler / file producer buffer (bytes)"
    )
    return parser


def make_handler(args: argparse.Namespace) -> type[FTPHandler]:
    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, str(args.root), perm=FULL_PERMS)
    low, high = args.passive_ports
    buffers = {"ac_in_buffer_size": args.buffer, "ac_out_buffer_size": args.buffer}
    # Files are read in this size for RETR when sendfile() is not used (TLS).
    producers.FileProducer.buffer_size = args.buffer
    attrs: dict[str, Any] = {
        "authorizer": authorizer,
        "passive_ports": list(range(low, high + 1)),
        "auth_failed_timeout": 0.1,
    }
    base: type[FTPHandler] = FTPHandler
    if args.tls_cert is not None:
        base = TLS_FTPHandler
        attrs["dtp_handler"] = type("BenchTLSDTPHandler", (TLS_DTPHandler,), buffers)
        attrs["certfile"] = str(args.tls_cert)
        attrs["keyfile"] = str(args.tls_key) if args.tls_key is not None else None
        attrs["tls_control_required"] = True
        attrs["tls_data_required"] = True
    else:
        attrs["dtp_handler"] = type("BenchDTPHandler", (DTPHandler,), buffers)
    handler: type[FTPHandler] = type("BenchFTPHandler", (base,), attrs)
    return handler


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="pyftpd %(asctime)s %(message)s"
    )
    handler = make_handler(args)
    signal.signal(signal.SIGTERM, _raise_exit)
    server = FTPServer((args.host, args.port), handler)
    print(f"READY {server.socket.getsockname()[1]}", flush=True)
    server.serve_forever(timeout=0.5, handle_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
