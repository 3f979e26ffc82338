"""Which addresses a webhook may reach (relay/core/webhook_targets.py)."""

from __future__ import annotations

import ipaddress

import pytest

from relay.core.webhook_targets import literal_refusal, refusal


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    why = refusal(ipaddress.ip_address(address), allow_private=False)
    assert why is not None and f"{kind} address" in why
    assert "events.allow_private_targets" in why
    assert refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1"])
def test_unspecified_and_multicast_are_never_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal(ip, allow_private=True) is not None
    assert refusal(ip, False, [ipaddress.ip_network("0.0.0.0/0")]) is not None


def test_public_addresses_are_allowed() -> None:
    for address in ("8.8.8.8", "2001:4860:4860::8888", "93.184.216.34"):
        assert refusal(ipaddress.ip_address(address), allow_private=False) is None


def test_allowed_networks_open_only_themselves() -> None:
    app = [ipaddress.ip_network("10.0.0.0/24")]
    assert refusal(ipaddress.ip_address("10.0.0.5"), False, app) is None
    assert refusal(ipaddress.ip_address("::ffff:10.0.0.5"), False, app) is None
    assert refusal(ipaddress.ip_address("10.0.1.5"), False, app) is not None
    assert refusal(ipaddress.ip_address("127.0.0.1"), False, app) is not None


def test_literal_hosts_in_urls() -> None:
    assert literal_refusal("127.0.0.1", False) is not None
    assert literal_refusal("[::1]", False) is not None
    assert literal_refusal("example.com", False) is None  # names: decided when resolved
