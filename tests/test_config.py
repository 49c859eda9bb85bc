"""Configuration: file and command line merged, every error naming its key."""

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from ftpsproxy.ops.service import ProxyService
from ftpsproxy.settings.config import (
    BackendAddress,
    PortRange,
    build_config,
    load_toml,
    parse_backend_url,
    reload_config,
)
from ftpsproxy.settings.errors import ConfigError

BASE = {"backend": "ftp://127.0.0.1:2100", "listen": ["tcp:2121"]}


def test_command_line_wins_over_file() -> None:
    config = build_config(
        {**BASE, "passive-ports": "41000-41009", "public-address": "192.0.2.1"},
        {"passive-ports": "42000-42009"},
    )
    assert config.passive_ports == PortRange(42000, 42009)
    assert config.public_address == "192.0.2.1"


def test_backend_urls() -> None:
    assert parse_backend_url("ftp://127.0.0.1:2100") == BackendAddress("ftp", "127.0.0.1", 2100)
    assert parse_backend_url("ftps://[::1]").port == 990
    assert parse_backend_url("ftp://[::1]:21").url == "ftp://[::1]:21"
    for bad in ("http://x", "ftp://", "ftp://h:99999", "ftp://u:p@h/", "ftp://h/path"):
        with pytest.raises(ConfigError, match="backend"):
            parse_backend_url(bad)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"listen": ["tcp:2121"]}, "backend"),
        ({"backend": "ftp://h:21"}, "listen"),
        ({**BASE, "passive-ports": "9-8"}, "passive-ports"),
        ({**BASE, "passive-ports": "80-90"}, "passive-ports"),
        ({**BASE, "passive-ports": "many"}, "passive-ports"),
        ({**BASE, "public-address": "not-an-ip"}, "public-address"),
        ({**BASE, "certificate": "c.pem"}, "certificate"),
        ({**BASE, "require-tls": True}, "require-tls"),
        ({**BASE, "require-tls": "yes"}, "require-tls"),
        ({**BASE, "passive-timeout": -1}, "passive-timeout"),
        ({**BASE, "listen": "tcp:2121"}, "listen"),
    ],
)
def test_errors_name_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_config(values, {})


def test_toml_file_with_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('backend = "ftp://127.0.0.1:21"\nlisten = ["tcp:2121"]\nlisen = 1\n')
    with pytest.raises(ConfigError) as raised:
        load_toml(path)
    assert str(raised.value) == f"config {path}: unknown key 'lisen' (did you mean 'listen'?)"


def test_toml_file_with_a_key_like_no_other_gets_no_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("zzzz = 1\n")
    with pytest.raises(ConfigError) as raised:
        load_toml(path)
    assert str(raised.value) == f"config {path}: unknown key 'zzzz'"


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("backend = \n")
    with pytest.raises(ConfigError, match=r"proxy\.toml"):
        load_toml(path)


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "deploy" / "ftpsproxy.toml"
    values = load_toml(example)
    config = build_config(values, {})
    assert config.listen and config.backend.scheme == "ftp"


def test_reload_applies_limits_and_timeouts_but_not_listeners() -> None:
    base = {"backend": "ftp://127.0.0.1:2121", "listen": ["tcp:2100"]}
    current = build_config(base, {"max-sessions": "10"})
    fresh = build_config(
        {**base, "listen": ["tcp:2200"], "idle-timeout": 30}, {"max-sessions": "20"}
    )
    change = reload_config(current, fresh)
    assert change.applied == {"max_sessions": (10, 20), "idle_timeout": (900.0, 30.0)}
    assert change.needs_restart == {"listen": (("tcp:2100",), ("tcp:2200",))}
    assert change.config.max_sessions == 20 and change.config.idle_timeout == 30.0
    assert change.config.listen == ("tcp:2100",)  # still what is bound
    unchanged = reload_config(change.config, change.config)
    assert unchanged.applied == {} and unchanged.needs_restart == {}


def test_reload_cannot_turn_tls_on() -> None:
    base = {"backend": "ftp://127.0.0.1:2121", "listen": ["tcp:2100"]}
    current = build_config(base, {})
    fresh = build_config({**base, "certificate": "c.pem", "private-key": "k.pem"}, {})
    change = reload_config(current, fresh)
    assert set(change.needs_restart) == {"certificate", "private_key"}
    assert change.config.certificate is None


def test_passive_share_defaults_to_a_tenth_of_the_range() -> None:
    assert build_config(BASE, {}).passive_share == 10  # 30000-30099
    small = build_config({**BASE, "passive-ports": "41000-41014"}, {})
    assert (small.max_passive_ports_per_ip, small.passive_share) == (0, 2)
    assert build_config({**BASE, "max-passive-ports-per-ip": 0}, {}).passive_share == 10
    explicit = build_config(
        {**BASE, "max-passive-ports-per-ip": 3}, {"max-passive-ports-per-ip": "25"}
    )
    assert explicit.passive_share == 25  # the command line wins; more than 10 is allowed


@pytest.mark.parametrize("value", [-1, "-1", 2.5, "many", True])
def test_passive_share_must_be_a_whole_number(value: object) -> None:
    with pytest.raises(ConfigError, match="max-passive-ports-per-ip"):
        build_config({**BASE, "max-passive-ports-per-ip": value}, {})


def test_sighup_changes_the_passive_share_for_new_requests() -> None:
    current = build_config(BASE, {})
    fresh = build_config({**BASE, "max-passive-ports-per-ip": 4}, {})
    assert reload_config(current, fresh).applied == {"max_passive_ports_per_ip": (0, 4)}
    service = ProxyService(current, MemoryReactorClock(), reread_config=lambda: fresh)
    assert service.context.allocator.share == 10
    service.reload()
    assert service.context.allocator.share == 4
    service._reread_config = lambda: current
    service.reload()
    assert service.context.allocator.share == 10


def test_instance_takes_its_slice_of_the_passive_range() -> None:
    """Instances behind one balancer: disjoint slices, split as the workers split."""
    base = {**BASE, "passive-ports": "30000-30099"}
    slices = [build_config(base, {"instance": f"{index}/3"}).passive_ports for index in range(3)]
    assert slices == [PortRange(30000, 30033), PortRange(30034, 30066), PortRange(30067, 30099)]
    assert build_config({**base, "instance": "1/2"}, {}).passive_ports == PortRange(30050, 30099)
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match=r"instance: .*INDEX/COUNT"):
            build_config(base, {"instance": bad})
    with pytest.raises(ConfigError, match="cannot split 2 ports 3 ways"):
        build_config({**BASE, "passive-ports": "30000-30001"}, {"instance": "0/3"})
