"""A pool backend's configuration is validated once, with errors that name the backend."""

from __future__ import annotations

import pytest

from ftpsproxy.pool import AdminState, Backend, Pool
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.values import parse_backend_url
from tests.support.pools import backend, backends

ADDRESS = parse_backend_url("ftpes://[2001:db8::5]:2121")


def test_a_backend_reuses_the_settings_backend_address() -> None:
    server = Backend("east-1", ADDRESS, weight=3, max_sessions=50)
    assert server.address.url == "ftpes://[2001:db8::5]:2121"
    assert (server.weight, server.max_sessions, server.state) == (3, 50, AdminState.ACTIVE)


def test_a_state_spelled_as_text_becomes_the_enum_member() -> None:
    server = Backend("b", ADDRESS, state="drain")  # type: ignore[arg-type]
    assert server.state is AdminState.DRAIN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "backend name ''"),
        ({"name": "has space"}, "backend name 'has space'"),
        ({"name": "-dash-first"}, "backend name '-dash-first'"),
        ({"name": "x" * 64}, "backend name"),
        ({"weight": 0}, "backend b: weight 0"),
        ({"weight": True}, "backend b: weight True"),
        ({"weight": 1.5}, "backend b: weight 1.5"),
        ({"max_sessions": 0}, "backend b: max-sessions 0"),
        ({"max_sessions": False}, "backend b: max-sessions False"),
        ({"state": "paused"}, "backend b: state 'paused' must be active or drain"),
    ],
)
def test_invalid_settings_name_the_backend_and_the_key(
    kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"name": "b", "address": ADDRESS, **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Backend(**arguments)  # type: ignore[arg-type]


def test_names_of_63_characters_with_dots_dashes_and_underscores_are_valid() -> None:
    assert Backend("a" * 63, ADDRESS).name == "a" * 63
    assert Backend("ftp-1.dc_2", ADDRESS).name == "ftp-1.dc_2"


def test_a_pool_refuses_duplicate_names_and_an_empty_list() -> None:
    with pytest.raises(ConfigError, match="names must be unique: a"):
        Pool([*backends("a", "b"), backend("a", weight=2)])
    with pytest.raises(ConfigError, match="at least one"):
        Pool([])
