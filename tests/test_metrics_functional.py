"""GET /metrics on a running relay: the delivery engine's series are there from the start."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_config, smtp_upstream


async def test_metrics_show_every_upstream_and_the_queue(
    tmp_path: Path, start_relay, closed_port: int
) -> None:
    upstreams = [smtp_upstream("a", closed_port), smtp_upstream("b", closed_port, daily_limit=10)]
    relay = await start_relay(base_config(tmp_path, upstreams))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{relay.app.admin_port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for upstream in ("a", "b"):
        closed = (("state", "closed"), ("upstream", upstream))
        assert samples[("relay_upstream_circuit_state", closed)] == 1
    quota = (("name", "b"), ("scope", "upstream"), ("window", "day"))
    assert samples[("relay_quota_use_ratio", quota)] == 0
    assert ("relay_queue_depth", ()) in samples
    assert ("relay_queue_oldest_age_seconds", ()) in samples
