"""The running server re-verifies its domains and reports each change (log line, metrics)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from relay.core import dkim
from relay.core.domain_checks import ownership_token
from tests.conftest import RunningRelay, base_config, smtp_upstream
from tests.dns_zone import Zone


def samples(relay: RunningRelay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = relay.app.metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def state(relay: RunningRelay, check: str, status: str) -> float:
    labels = (("check", check), ("domain", "example.com"), ("status", status))
    return samples(relay)[("relay_domain_check_state", labels)]


@pytest.fixture
async def relay_with_domain(tmp_path: Path, start_relay, dns_zone: Zone, closed_port: int):
    key = dkim.generate(dkim.Algorithm.ED25519)
    (tmp_path / "k.pem").write_bytes(dkim.private_pem(key))
    config = base_config(
        tmp_path,
        [smtp_upstream("ses", closed_port, spf_include="amazonses.com")],
        dns={"nameservers": [dns_zone.nameserver], "verify_interval_seconds": 3600},
        domains=[
            {
                "name": "example.com",
                "dkim": {"selector": "relay1", "private_key_file": str(tmp_path / "k.pem")},
            }
        ],
    )
    secret = Fernet.generate_key()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret.key").write_bytes(secret)
    dns_zone.txt("example.com", "v=spf1 include:amazonses.com -all")
    dns_zone.txt("example.com", f"relay-verification={ownership_token(secret, 'example.com')}")
    dns_zone.txt("amazonses.com", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_zone.txt("relay1._domainkey.example.com", dkim.txt_record(key))
    dns_zone.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    dns_zone.mx("example.com", "mx.example.com")
    relay = await start_relay(config)
    for _ in range(100):  # the server verifies once at start
        if "example.com" in relay.app.domains.latest:
            return relay
        await asyncio.sleep(0.05)
    raise AssertionError("the domain was not verified at start")


async def test_secret_key_file_is_created_private(
    tmp_path: Path, start_relay, closed_port: int
) -> None:
    await start_relay(base_config(tmp_path, [smtp_upstream("a", closed_port)]))
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o777 == 0o600


async def test_a_removed_dkim_record_is_logged_and_counted(
    relay_with_domain: RunningRelay, dns_zone: Zone, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_with_domain
    assert samples(relay)[("relay_domain_verified", (("domain", "example.com"),))] == 1
    assert state(relay, "dkim relay1 (active)", "pass") == 1

    dns_zone.remove("relay1._domainkey.example.com")
    with caplog.at_level(logging.INFO, logger="relay.domain_monitor"):
        await relay.app.domains.verify_all()

    assert state(relay, "dkim relay1 (active)", "pass") == 0
    assert state(relay, "dkim relay1 (active)", "fail") == 1
    assert samples(relay)[("relay_domain_verified", (("domain", "example.com"),))] == 0
    changes = ("relay_domain_check_changes_total", (("domain", "example.com"),))
    assert samples(relay)[changes] == 1
    [line] = [r for r in caplog.records if "dkim relay1" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "fail (was pass)" in line.getMessage()
    result = relay.app.domains.latest["example.com"]
    assert any(c.publish and "relay1._domainkey.example.com" in c.publish for c in result.checks)


async def test_an_unchanged_domain_logs_nothing_new(
    relay_with_domain: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_with_domain
    await relay.app.domains.verify_all()
    with caplog.at_level(logging.INFO, logger="relay.domain_monitor"):
        await relay.app.domains.verify_all()
    assert not caplog.records
