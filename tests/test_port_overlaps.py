"""The passive range against the listeners (refused) and the kernel's ephemeral range (warned)."""

from __future__ import annotations

import pytest

from ftpsproxy.ops.demo import PASSIVE_PORTS
from ftpsproxy.settings.config import build_config, parse_port_range
from ftpsproxy.settings.errors import ConfigError
from ftpsproxy.settings.port_overlaps import ephemeral_overlap_warning, tcp_port
from ftpsproxy.settings.values import PortRange

BASE = {
    "backend": "ftp://127.0.0.1:2100",
    "passive-ports": "30000-30099",
    "certificate": "cert.pem",  # for listen-implicit; not read here
    "private-key": "key.pem",
}
LINUX_DEFAULT = "32768\t60999\n"  # /proc/sys/net/ipv4/ip_local_port_range


@pytest.mark.parametrize(
    ("description", "port"),
    [
        ("tcp:2121", 2121),
        ("tcp:2121:interface=127.0.0.1", 2121),
        ("haproxy:tcp:2121:interface=127.0.0.1", 2121),  # a listener behind a balancer
        ("tcp:port=990:interface=127.0.0.1", 990),
        ("tcp6:2121:interface=\\:\\:1", 2121),
        ("ssl:990:privateKey=key.pem", 990),
        ("unix:/run/ftpsproxy.sock", None),
        ("systemd:domain=INET:index=0", None),
        ("tcp:ftp", None),
        ("tcp", None),
    ],
)
def test_only_tcp_endpoints_with_a_port_number_have_a_port(
    description: str, port: int | None
) -> None:
    assert tcp_port(description) == port


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"listen": ["tcp:30000:interface=127.0.0.1"]},
            "passive-ports: 30000-30099 includes port 30000 of listen "
            "tcp:30000:interface=127.0.0.1",
        ),
        (
            {"listen": ["tcp:2121"], "listen-implicit": ["tcp:port=30099"]},
            "passive-ports: 30000-30099 includes port 30099 of listen-implicit tcp:port=30099",
        ),
        (
            {"listen": ["tcp:2121"], "metrics": "tcp6:30050"},
            "passive-ports: 30000-30099 includes port 30050 of metrics tcp6:30050",
        ),
    ],
)
def test_a_passive_range_holding_a_listeners_port_is_refused(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config({**BASE, **values}, {})
    assert str(raised.value) == message


def test_listeners_just_outside_the_passive_range_or_without_a_tcp_port_are_fine() -> None:
    listeners = {
        "listen": ["tcp:29999", "unix:/run/30000.sock"],
        "listen-implicit": ["tcp:30100"],
        "metrics": "unix:/run/metrics-30050.sock",
    }
    assert build_config({**BASE, **listeners}, {}).passive_ports == PortRange(30000, 30099)


def test_a_passive_range_inside_the_ephemeral_range_is_warned_about_naming_the_sysctl() -> None:
    warning = ephemeral_overlap_warning(PortRange(41000, 41019), LINUX_DEFAULT)
    assert warning is not None and "\n" not in warning
    assert "passive-ports 41000-41019" in warning and "32768-60999" in warning
    assert "sysctl -w net.ipv4.ip_local_reserved_ports=41000-41019" in warning
    assert "net.ipv4.ip_local_port_range" in warning
    # Touching the range at one end is enough.
    assert ephemeral_overlap_warning(PortRange(32000, 32768), LINUX_DEFAULT) is not None
    assert ephemeral_overlap_warning(PortRange(60999, 61100), LINUX_DEFAULT) is not None


@pytest.mark.parametrize(
    ("passive", "port_range", "reserved"),
    [
        ("30000-30099", LINUX_DEFAULT, ""),  # the default passive range
        ("32000-32767", LINUX_DEFAULT, ""),  # just below
        ("61000-61099", LINUX_DEFAULT, ""),  # just above
        ("41000-41019", LINUX_DEFAULT, "41000-41019\n"),  # reserved: never ephemeral
        ("41000-41019", LINUX_DEFAULT, "1000,40000-41010,41011-41030\n"),
        ("41000-41019", "", ""),  # nothing to compare with
        ("41000-41019", "garbage", ""),
    ],
)
def test_no_warning_outside_the_ephemeral_range_or_for_reserved_ports(
    passive: str, port_range: str, reserved: str
) -> None:
    assert ephemeral_overlap_warning(parse_port_range(passive), port_range, reserved) is None


def test_the_demos_passive_range_gets_no_warning_on_a_default_linux() -> None:
    assert ephemeral_overlap_warning(parse_port_range(PASSIVE_PORTS), LINUX_DEFAULT) is None
