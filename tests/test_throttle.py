"""relay.core.throttle: client keys, refunds, and the rule the store-kept counts follow."""

from __future__ import annotations

import pytest

from relay.core.throttle import KnownBlocked, blocked_until, client_network


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same host's other address
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 on a dual-stack socket
        ("/run/relay.sock", "/run/relay.sock"),
    ],
)
def test_clients_are_counted_by_address_or_ipv6_64(address: str, key: str) -> None:
    assert client_network(address) == key


@pytest.mark.parametrize(
    ("recent", "until"),
    [
        ([], None),
        ([50.0, 40.0], None),  # two of three
        ([50.0, 40.0, 30.0], 90.0),  # the oldest of the three leaves the window at 30 + 60
        ([50.0, 40.0, 30.0, 20.0], 90.0),  # older ones do not matter
    ],
)
def test_a_key_is_blocked_until_its_max_th_newest_failure_leaves_the_window(
    recent: list[float], until: float | None
) -> None:
    assert blocked_until(recent, max_failures=3, window_seconds=60) == until


def test_known_blocked_keys_expire_and_stay_bounded() -> None:
    known = KnownBlocked(max_keys=2)
    known.block("ip:a", until=10.0, now=0.0)
    assert known.is_blocked("ip:a", 9.9)
    assert not known.is_blocked("ip:a", 10.0)
    known.block("ip:a", until=10.0, now=0.0)
    known.block("ip:b", until=20.0, now=0.0)
    known.block("ip:c", until=30.0, now=0.0)  # full: the oldest entry goes
    assert not known.is_blocked("ip:a", 1.0)
    assert known.is_blocked("ip:b", 1.0) and known.is_blocked("ip:c", 1.0)
    known.block("ip:d", until=40.0, now=25.0)  # full: the expired entry goes first
    assert known.is_blocked("ip:c", 26.0) and known.is_blocked("ip:d", 26.0)
