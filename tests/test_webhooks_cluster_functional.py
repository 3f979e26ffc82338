"""Webhooks with several processes on one store: two nodes share the outbox without sending
an event twice; a relay SIGKILLed with events in flight sends them all after its restart.

Two in-process nodes (tests/two_nodes.py) on SQLite and PostgreSQL, and real
`relay serve` processes for the crash. Receivers are real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from relay.core.outbound_events import (
    Event,
    EventType,
    Subscription,
    Subscriptions,
    event,
    message_event,
)
from relay.outbox_database import add_to_outbox
from relay.store import create_engine, migrate
from tests.conftest import base_config, smtp_upstream, write_config
from tests.test_admin_api_functional import TOKEN, Admin
from tests.test_nodes_functional import nodes  # noqa: F401  (a fixture)
from tests.test_webhooks_functional import until
from tests.two_nodes import StartNode, start_node, store_url  # noqa: F401  (fixtures)
from tests.webhook_receiver import receiving

SECRET = "whsec_" + base64.b64encode(b"cluster-webhook-test-secret-32by").decode()


def node_config(directory: Path, url: str, **hook: Any) -> dict[str, Any]:
    config = base_config(directory, [smtp_upstream("sink", 2525)])
    config["server"]["data_dir"] = str(directory.parent / "data")  # one secret key for all
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["cluster"] = {"sync_seconds": 0.2}
    config["events"] = {"allow_private_targets": True}
    config["webhooks"] = [{"name": "app", "url": url, "secret": SECRET, **hook}]
    return config


def circuit_events(count: int) -> list[Event]:
    now = time.time()
    return [
        event(EventType.CIRCUIT_CHANGED, now, os.urandom(10), upstream="u") for _ in range(count)
    ]


async def test_two_nodes_share_the_outbox_and_send_each_event_once(
    tmp_path: Path,
    start_node: StartNode,  # noqa: F811
) -> None:
    async with receiving() as receiver:
        config = node_config(tmp_path / "one", receiver.url, max_in_flight=8)
        one = await start_node("one", config)
        two = await start_node("two", {**config, "server": {**config["server"]}})
        events = circuit_events(120)
        entries = Subscriptions((Subscription("app"),)).fan_out(events)
        await one.writer.write_sync(lambda c: add_to_outbox(c, entries))
        one.webhook_dispatcher.wake()
        two.webhook_dispatcher.wake()
        await receiver.wait_accepted(len(events), seconds=60)
        await asyncio.sleep(0.5)  # anything sent twice would have come by now
        counts = Counter(receiver.accepted_ids())
        assert set(counts) == {e.id for e in events}
        assert max(counts.values()) == 1
        both = [one.metrics, two.metrics]
        sent = [m.webhook_deliveries.labels("app", "delivered")._value.get() for m in both]
        assert sum(sent) == len(events)


async def test_an_endpoint_made_on_one_node_is_used_by_the_other(
    tmp_path: Path,
    start_node: StartNode,  # noqa: F811
) -> None:
    async with receiving() as receiver, aiohttp.ClientSession() as session:
        config = node_config(tmp_path / "one", "https://file.example.com/")
        one = await start_node("one", config)
        two = await start_node("two", config)
        made = await Admin(session, one.admin_port).ok(
            "POST", "/api/v1/webhooks", {"name": "api", "url": receiver.url}, status=201
        )
        await until(lambda: two.webhooks.endpoint("api") is not None, 10)
        off = await Admin(session, two.admin_port).ok(
            "PATCH", "/api/v1/webhooks/api", {"enabled": False}
        )
        assert not off["enabled"]
        await until(lambda: not one.webhooks.enabled("api"), 10)
        assert made["secret"].startswith("whsec_")


async def test_a_relay_killed_with_events_in_flight_sends_them_all_after_restart(
    tmp_path: Path,
    nodes: Any,  # noqa: F811
) -> None:
    gate = asyncio.Event()
    async with receiving(gate=gate) as receiver:
        config = node_config(tmp_path / "node", receiver.url)
        config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
        config["events"]["max_in_flight"] = 4
        (tmp_path / "node").mkdir()
        path = write_config(tmp_path / "node", config)
        engine = create_engine(config["store"]["url"])
        await migrate(engine)
        types = [EventType.ACCEPTED, EventType.DELIVERED]
        now = time.time()
        events = [
            message_event(t, now + i / 1000, os.urandom(10), message_id=f"m{m}", site="shop")
            for i, t in enumerate(types)
            for m in range(10)
        ]
        entries = Subscriptions((Subscription("app"),)).fan_out(events)
        async with engine.begin() as c:
            await c.run_sync(add_to_outbox, entries)
        await engine.dispose()

        relay = nodes(path)
        await asyncio.to_thread(relay.wait_ready)
        await until(lambda: receiver.in_flight >= 4)  # events.max_in_flight: four tries hang
        assert relay.stop(signal.SIGKILL) == -signal.SIGKILL
        gate.set()  # the receiver answers from now on (the four hung tries see nothing)

        again = nodes(path)
        await asyncio.to_thread(again.wait_ready)
        await receiver.wait_accepted(len(events) + 4, seconds=60)
        counts = Counter(receiver.accepted_ids())
        assert set(counts) == {e.id for e in events}  # none lost
        assert sum(counts.values()) - len(events) <= 4  # again: at most those in flight
        assert again.log_has("released 4 webhook leases of processes that are gone")
        for m in range(10):  # a message's second event was never sent before its first
            seen = [
                d.event["type"]
                for d in receiver.accepted
                if d.event["data"]["message_id"] == f"m{m}"
            ]
            assert seen.index("message.delivered") > seen.index("message.accepted")
        again.stop()
