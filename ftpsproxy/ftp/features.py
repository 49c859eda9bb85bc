"""FEAT (RFC 2389): what the proxy advertises, merged with what the backend supports.

The client only sees features that work through the proxy: security and data
connection features are the proxy's own; the backend's are passed through
unless the proxy would break them.
"""

from __future__ import annotations

from collections.abc import Iterable

from .replies import Reply, make_reply

# Backend features the proxy terminates, replaces or cannot relay.
_HIDDEN = frozenset(
    {"AUTH", "PBSZ", "PROT", "CCC", "EPSV", "EPRT", "SPSV", "CPSV", "SSCN", "UTF8", "HOST", "LPSV"}
)


def proxy_features(*, tls: bool, active_mode: bool = False) -> list[str]:
    """The features the proxy itself implements towards clients."""
    features = []
    if tls:
        features += ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT"]
    features.append("EPSV")
    if active_mode:
        features.append("EPRT")
    features.append("UTF8")
    return features


def backend_features(reply: Reply) -> list[str]:
    """The feature lines of a backend's 211 FEAT reply (RFC 2389 §3.2: each starts with a space)."""
    if reply.code != 211 or len(reply.lines) < 2:
        return []
    features = []
    for line in reply.body:
        text = line.decode("utf-8", "replace").strip()
        if text:
            features.append(text)
    return features


def _name(feature: str) -> str:
    return feature.split(" ", 1)[0].upper()


def merge_features(proxy: Iterable[str], backend: Iterable[str]) -> Reply:
    """One 211 reply: the proxy's features, then the backend's that survive."""
    merged: list[str] = []
    seen: set[str] = set()
    for feature in proxy:
        merged.append(feature)
        seen.add(feature.upper())
    for feature in backend:
        name = _name(feature)
        if name in _HIDDEN or (name == "MODE" and "Z" in feature.upper()):
            continue
        if feature.upper() in seen:
            continue
        seen.add(feature.upper())
        merged.append(feature)
    return make_reply(211, ["Features:", *merged, "End"])
