"""Backends for the pool's unit tests: only names, weights, caps and states matter there."""

from __future__ import annotations

from hypothesis import strategies as st

from ftpsproxy.pool import AdminState, Backend
from ftpsproxy.settings.values import parse_backend_url


def backend(
    name: str, weight: int = 1, cap: int | None = None, state: AdminState = AdminState.ACTIVE
) -> Backend:
    return Backend(name, parse_backend_url(f"ftp://{name}.example:21"), weight, cap, state)


def backends(*names: str) -> list[Backend]:
    return [backend(name) for name in names]


#: Distinct valid backend names.
names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), unique=True)
