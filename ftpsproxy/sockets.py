"""Socket tuning for the proxy's connections.

Control replies are small writes that must not wait for Nagle's algorithm and a
delayed ACK (~40 ms per exchange on Linux).  Data connections read and buffer
in larger chunks than Twisted's 64 KiB default: fewer trips through Python per
byte, with flow control still bounding memory to about this size per side.
"""

from __future__ import annotations

import socket
from typing import Any

DATA_BUFFER_SIZE = 256 * 1024


def _socket_transport(transport: Any) -> Any:
    """The TCP transport under any TLS wrappers (``TLSMemoryBIOProtocol`` has ``.transport``)."""
    for _ in range(4):
        if transport is None or hasattr(transport, "setTcpNoDelay"):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def tune(transport: Any, *, bulk: bool = False) -> None:
    """Disable Nagle on *transport*; with *bulk*, raise its read and write-buffer sizes."""
    tcp = _socket_transport(transport)
    if tcp is None:
        return  # not a TCP connection (a test transport, a UNIX socket)
    tcp.setTcpNoDelay(True)
    if bulk:
        tcp.bufferSize = DATA_BUFFER_SIZE
    else:
        # Clients send ABOR (or its Telnet Synch) as TCP urgent data (RFC 959 §4.1.3,
        # ftplib's abort()): keep the urgent byte in the stream instead of losing it.
        tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
