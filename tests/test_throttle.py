"""The failure throttle's client keys and refunds (relay.core.throttle)."""

from __future__ import annotations

import pytest

from relay.core.throttle import FailureThrottle, client_network


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


def test_a_refunded_attempt_no_longer_counts() -> None:
    throttle = FailureThrottle(max_failures=2, window_seconds=60)
    throttle.record_failure("ip:a", 1.0)
    throttle.record_failure("ip:a", 2.0)  # counted as it started...
    assert throttle.is_blocked("ip:a", 2.0)
    throttle.refund("ip:a", 2.0)  # ...and it was the right password
    assert not throttle.is_blocked("ip:a", 2.0)
    throttle.refund("ip:a", 99.0)  # nothing recorded then: nothing changes
    throttle.refund("ip:b", 1.0)
    throttle.record_failure("ip:a", 3.0)
    assert throttle.is_blocked("ip:a", 3.0)
