"""What the per-address limits count a client by: its IPv4 address or its IPv6 network."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.net.client_address import limit_key


@pytest.mark.parametrize(
    ("host", "prefix", "key"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),  # a dual-stack listener's view of IPv4
        ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("::1", 64, "::/64"),
        ("/run/ftpsproxy.sock", 64, "/run/ftpsproxy.sock"),  # not an IP address
        ("", 64, ""),
    ],
)
def test_keys(host: str, prefix: int, key: str) -> None:
    assert limit_key(host, prefix) == key


@given(
    st.ip_addresses(v=6),
    st.ip_addresses(v=6),
    st.integers(min_value=1, max_value=128),
)
def test_two_ipv6_clients_count_together_exactly_when_they_share_the_network(
    a: ipaddress.IPv6Address, b: ipaddress.IPv6Address, prefix: int
) -> None:
    if a.ipv4_mapped is not None or b.ipv4_mapped is not None:
        return  # those count as IPv4 (above)
    same = ipaddress.IPv6Network((a, prefix), strict=False) == ipaddress.IPv6Network(
        (b, prefix), strict=False
    )
    assert (limit_key(str(a), prefix) == limit_key(str(b), prefix)) is same
