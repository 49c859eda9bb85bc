"""Command policy: what the proxy does with each client verb.

A pure table, so that what is answered locally, relayed, refused or turned
into a data transfer can be read in one place and tested without sockets.
"""

from __future__ import annotations

import enum


class Direction(enum.Enum):
    """Which way the bytes of a transfer flow."""

    DOWNLOAD = "download"
    UPLOAD = "upload"
    LISTING = "listing"

    @property
    def to_client(self) -> bool:
        return self is not Direction.UPLOAD


class Handling(enum.Enum):
    LOCAL = "local"  # answered by the proxy itself
    PASSIVE = "passive"  # PASV / EPSV: the proxy opens a port of its own range
    ACTIVE = "active"  # PORT / EPRT
    TRANSFER = "transfer"  # a data transfer command
    ABORT = "abort"  # may arrive while a transfer is running
    REFUSED = "refused"  # never relayed: the proxy cannot honour it
    RELAY = "relay"  # passed to the backend, reply passed back


TRANSFER_DIRECTIONS: dict[str, Direction] = {
    "RETR": Direction.DOWNLOAD,
    "STOR": Direction.UPLOAD,
    "STOU": Direction.UPLOAD,
    "APPE": Direction.UPLOAD,
    "LIST": Direction.LISTING,
    "NLST": Direction.LISTING,
    "MLSD": Direction.LISTING,
}

_LOCAL = frozenset({"AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "SYST", "NOOP", "QUIT", "USER", "PASS"})
_PASSIVE = frozenset({"PASV", "EPSV"})
_ACTIVE = frozenset({"PORT", "EPRT"})

# Verbs the proxy refuses, with the reply and why: relaying them would break
# the TLS termination or the data-connection rewriting.
REFUSALS: dict[str, tuple[int, str]] = {
    "CCC": (533, "Clearing the command channel is not allowed."),
    "REIN": (502, "REIN not implemented."),
    "CPSV": (502, "CPSV not implemented."),
    "SSCN": (502, "SSCN not implemented."),
    "LPSV": (502, "LPSV not implemented; use EPSV."),
    "LPRT": (502, "LPRT not implemented; use EPRT."),
    "SPSV": (502, "SPSV not implemented; use EPSV."),
    "ADAT": (502, "Only AUTH TLS is supported."),
    "MIC": (502, "Only AUTH TLS is supported."),
    "CONF": (502, "Only AUTH TLS is supported."),
    "ENC": (502, "Only AUTH TLS is supported."),
}

# Verbs a client may send before logging in.  Everything else gets 530 there.
PRE_LOGIN = frozenset({*_LOCAL, "HELP", "HOST", "CCC", "REIN"})

# Verbs whose names may appear as metric label values; anything else is "other".
KNOWN_VERBS = frozenset(
    {
        *_LOCAL,
        *_PASSIVE,
        *_ACTIVE,
        *TRANSFER_DIRECTIONS,
        *REFUSALS,
        "ABOR", "ACCT", "ALLO", "CDUP", "CWD", "DELE", "HELP", "HOST", "MDTM", "MKD", "MLST",
        "MODE", "PWD", "REST", "RMD", "RNFR", "RNTO", "SITE", "SIZE", "SMNT", "STAT", "STRU",
        "TYPE", "XCUP", "XCWD", "XMKD", "XPWD", "XRMD", "MFMT", "CLNT",
    }
)  # fmt: skip


def classify(verb: str) -> Handling:
    """How the proxy handles *verb* (upper case) once the client has logged in."""
    if verb in _LOCAL:
        return Handling.LOCAL
    if verb in _PASSIVE:
        return Handling.PASSIVE
    if verb in _ACTIVE:
        return Handling.ACTIVE
    if verb in TRANSFER_DIRECTIONS:
        return Handling.TRANSFER
    if verb == "ABOR":
        return Handling.ABORT
    if verb in REFUSALS:
        return Handling.REFUSED
    return Handling.RELAY


def refuses_mode(argument: bytes) -> bool:
    """``MODE Z`` (deflate) cannot pass: the proxy would relay compressed bytes unverified."""
    return argument.strip().upper() not in (b"S", b"")


def verb_label(verb: str) -> str:
    """A bounded metric label for *verb*."""
    return verb if verb in KNOWN_VERBS else "other"
