"""Routing by measured performance end to end: real SMTP to two loopback sinks.

The figures are re-read from the store by the same call the periodic flush
makes (``app.performance.refresh``), right after each delivery, so nothing
here waits for the flush's seconds.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from relay.core.model import MessageStatus
from tests.conftest import RunningRelay, Sink, base_config, smtp_upstream
from tests.test_dashboard_functional import Browser
from tests.test_delivery_functional import (
    FINAL,
    MESSAGE,
    delivery_pass,
    plaintext_listener,
    submit,
)

TOKEN = "ops-token-0123456789abcdef"
StartRelay = Callable[..., Awaitable[RunningRelay]]
MakeSink = Callable[..., Awaitable[Sink]]


def config(tmp_path: Path, first: int, second: int, names: tuple[str, str]) -> dict[str, Any]:
    upstreams = [
        smtp_upstream(names[0], first, priority=1),  # tried first while nothing is measured
        smtp_upstream(names[1], second, priority=2),
    ]
    data = plaintext_listener(
        base_config(
            tmp_path,
            upstreams,
            routing={"strategy": "performance"},
            health={"failure_threshold": 1000, "check_interval_seconds": 0},  # no circuit
        )
    )
    data["admin"].update(tokens=[{"name": "ops", "token": TOKEN}])
    return data


async def send(relay: RunningRelay) -> str:
    """Deliver one message; return the upstream that took it."""
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.SENT
    await relay.app.performance.refresh()
    return next(a.upstream for a in detail.attempts if a.outcome == "sent")


async def api(relay: RunningRelay, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{relay.app.admin_port}/api/v1{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return json.loads(await response.text())


async def test_traffic_shifts_to_the_faster_upstream_and_the_route_says_why(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    slow = await make_sink(replies={"delay": 0.5})
    fast = await make_sink()
    relay = await start_relay(config(tmp_path, slow.port, fast.port, ("slow", "fast")))

    took = [await send(relay) for _ in range(16)]

    assert "slow" in took  # unmeasured ranks first: it was tried
    assert Counter(took[-10:])["fast"] >= 6  # the floor sends ~10% elsewhere
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    await delivery_pass(relay, message_id, FINAL)
    detail = await api(relay, f"/messages/{message_id}")
    route = detail["attempts"][0]["route"]
    assert route.startswith("performance: ")
    figures = r"\d\.\d\d \(\d+% ok, \d+ ms\)"
    ranking = rf"performance: fast {figures} > slow {figures}; (exploring slow; )?try "
    assert re.match(ranking, route), route
    upstreams = {u["name"]: u for u in (await api(relay, "/upstreams"))["items"]}
    assert upstreams["fast"]["performance"]["score"] > upstreams["slow"]["performance"]["score"]
    assert upstreams["slow"]["performance"]["latency_seconds"] >= 0.3
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in(TOKEN)
        status, html, _ = await browser.get("/upstreams")
    assert status == 200 and html.count('<span class="score" title="measured: ') == 2


async def test_a_failing_upstream_loses_traffic_and_regains_it_once_it_recovers(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    flaky = await make_sink(replies={"mail": "451 4.7.1 slow down, try again later"})
    steady = await make_sink()
    relay = await start_relay(config(tmp_path, flaky.port, steady.port, ("flaky", "steady")))

    took = [await send(relay) for _ in range(10)]
    assert set(took) == {"steady"}  # flaky refused every one it was offered
    figures = relay.app.performance.figures
    assert figures["flaky"].success_rate < figures["steady"].success_rate

    flaky.handler.replies.clear()
    for _ in range(150):  # the floor offers it ~10% of the messages: one comes soon
        if await send(relay) == "flaky":
            break
    else:
        raise AssertionError("the recovered upstream never got a message")
    assert relay.app.performance.figures["flaky"].success_rate > figures["flaky"].success_rate
