"""A pyftpdlib FTP/FTPS server run as its own process, as a proxy backend in tests.

Runs in a subprocess (not a thread of the test) so the backend has its own event loop and
its own sockets, as a real server would, and can be killed to test backend failures.
Prints ``READY <port>`` on stdout once the listening socket is bound.

pyftpdlib only speaks explicit FTPS (AUTH TLS); ``--implicit`` adds implicit FTPS by
starting the TLS handshake as soon as a client connects, before the greeting.
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
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer

#: pyftpdlib permissions: every read and write operation.
FULL_PERMS = "elradfmwMT"


#: Documentation networks (RFC 5737): no real host has them, so tests that build their
#: own network in namespaces (tests/test_scaleout_netns.py) may listen there.
_TEST_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


def _loopback_host(value: str) -> str:
    """Refuse addresses of real networks: test servers listen on loopback, or on a
    documentation address that exists only inside a test's network namespace."""
    try:
        address = ipaddress.ip_address(value)
        allowed = address.is_loopback or any(address in net for net in _TEST_NETWORKS)
    except ValueError:
        allowed = value == "localhost"
    if not allowed:
        raise argparse.ArgumentTypeError(f"{value!r} is not a loopback or test-network address")
    return value


def _port_range(value: str) -> tuple[int, int]:
    try:
        low_text, high_text = value.split("-", 1)
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {value!r}") from None
    if not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"bad port range {value!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", type=_loopback_host, default=None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--tls-cert", type=Path, default=None)
    parser.add_argument("--tls-key", type=Path, default=None)
    parser.add_argument(
        "--tls-required", action="store_true", help="require TLS on control and data"
    )
    parser.add_argument(
        "--implicit", action="store_true", help="implicit FTPS: TLS from the first byte"
    )
    parser.add_argument("--passive-ports", type=_port_range, default=None, metavar="MIN-MAX")
    parser.add_argument("--ipv6", action="store_true", help="listen on ::1 by default")
    parser.add_argument("--banner", default=None, help="greeting text, to tell backends apart")
    parser.add_argument("--permit-foreign-addresses", action="store_true")
    parser.add_argument(
        "--auth-failed-delay",
        type=float,
        default=0.1,
        help="seconds before answering a failed login (pyftpdlib's default 3 s slows tests)",
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG instead of WARNING")
    return parser


class ImplicitTLSFTPHandler(TLS_FTPHandler):  # type: ignore[misc]
    """Implicit FTPS: secure the socket before queueing the 220 greeting.

    pyftpdlib's TLS layer holds queued output while the handshake is pending, so the
    greeting leaves only once TLS is up, as on port 990 of a real implicit server.
    """

    def handle(self) -> None:
        self.secure_connection(self.ssl_context)
        super().handle()


def make_handler(args: argparse.Namespace) -> type[FTPHandler]:
    """Configure a handler subclass so pyftpdlib's class-level settings stay untouched."""
    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, str(args.root), perm=FULL_PERMS)
    attrs: dict[str, Any] = {
        "authorizer": authorizer,
        "permit_foreign_addresses": args.permit_foreign_addresses,
        "auth_failed_timeout": args.auth_failed_delay,
    }
    if args.passive_ports is not None:
        low, high = args.passive_ports
        attrs["passive_ports"] = list(range(low, high + 1))
    if args.banner is not None:
        attrs["banner"] = args.banner
    base: type[FTPHandler] = FTPHandler
    if args.tls_cert is not None:
        base = ImplicitTLSFTPHandler if args.implicit else TLS_FTPHandler
        attrs["certfile"] = str(args.tls_cert)
        attrs["keyfile"] = str(args.tls_key) if args.tls_key is not None else None
        attrs["tls_control_required"] = args.tls_required
        attrs["tls_data_required"] = args.tls_required
    elif args.tls_required or args.implicit:
        raise SystemExit("--tls-required and --implicit need --tls-cert")
    handler: type[FTPHandler] = type("TestFTPHandler", (base,), attrs)
    return handler


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM -> SystemExit, which pyftpdlib's serve_forever catches to close every socket."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="pyftpd %(asctime)s %(levelname)s %(message)s",
    )
    host = args.host or ("::1" if args.ipv6 else "127.0.0.1")
    args.root.mkdir(parents=True, exist_ok=True)
    handler = make_handler(args)
    signal.signal(signal.SIGTERM, _raise_exit)
    server = FTPServer((host, args.port), handler)
    port = server.socket.getsockname()[1]
    print(f"READY {port}", flush=True)
    server.serve_forever(timeout=0.5, handle_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
