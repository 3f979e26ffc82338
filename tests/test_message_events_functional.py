"""A message's events, written in the transactions that record them, reach a receiver.

Real traffic through a relay in-process (SMTP with STARTTLS + AUTH, the send API)
to an aiosmtpd sink that takes one recipient, refuses one for good and one for
now; the relay's webhooks post to a receiver on loopback (``allow_private_targets``
for the test); on SQLite and PostgreSQL. Signatures are checked by the verifier
written from the Standard Webhooks spec (tests/test_webhook_signing.py).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from relay.core.health import CircuitState
from relay.core.quota import QuotaWarning, Scope, Window
from relay.events import CircuitChange, DnsChange
from relay.tables import webhook_outbox
from tests.conftest import FakeClock
from tests.test_admin_messages_functional import Admin, mail, poll
from tests.test_suppressions_functional import (
    GONE_REPLY,
    SENDER,
    World,
    rcpt,
    relay_config,
    session,
    start_node,
    store_url,
    world,
)
from tests.test_webhook_signing import spec_verify
from tests.test_webhooks_functional import SECRET
from tests.webhook_receiver import Receiver, receiving

__all__ = ["start_node", "store_url", "world"]  # fixtures

LATER_REPLY = "451 4.2.0 mailbox busy, try later"


@dataclass
class Hooked:
    world: World
    app: Receiver  # every event
    blog: Receiver  # the blog site's bounces only


@pytest.fixture
async def hooked(
    tmp_path: Path,
    store_url: str,  # before start_relay: the relay stops before its database goes
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> AsyncIterator[Hooked]:
    sink = await make_sink(
        replies={"rcpt": {"gone@example.org": GONE_REPLY, "later@example.org": LATER_REPLY}}
    )
    async with receiving() as app, receiving() as blog:
        config = relay_config(tmp_path, sink, cert_files)
        config["store"] = {"url": store_url}
        config["events"] = {"allow_private_targets": True}
        config["webhooks"] = [
            {"name": "app", "url": app.url, "secret": SECRET},
            {
                "name": "blog-bounces",
                "url": blog.url,
                "secret": SECRET,
                "events": ["message.bounced"],
                "sites": ["blog"],
            },
        ]
        clock = FakeClock(time.time())  # signatures carry the relay's time: a real one
        relay = await start_relay(config, clock=clock)
        async with aiohttp.ClientSession() as http:
            world = World(relay, clock, Admin(http, relay.app.admin_port), sink, http, client_tls)
            yield Hooked(world, app, blog)


def events_of(receiver: Receiver, message_id: str | None = None) -> list[dict[str, Any]]:
    """What the receiver took, in order; of one message when given."""
    got = [d.event for d in receiver.accepted]
    return [e for e in got if message_id is None or e["data"].get("message_id") == message_id]


async def outbox(world: World) -> list[dict[str, Any]]:
    async with world.relay.app.engine.connect() as connection:
        rows = await connection.execute(sa.select(webhook_outbox).order_by(webhook_outbox.c.id))
        return [row._asdict() for row in rows]


async def _async(value: Any) -> Any:
    return value


async def test_an_smtp_message_gives_accepted_delivered_bounced_and_deferred(
    hooked: Hooked,
) -> None:
    world = hooked.world
    client = await session(world)
    try:
        await client.mail(SENDER)
        for address in ("ok@example.org", "gone@example.org", "later@example.org"):
            assert (await client.rcpt(address)).code == 250
        to = "ok@example.org, gone@example.org, later@example.org"
        assert (await client.data(mail("Order 8", SENDER, to))).code == 250
    finally:
        await client.quit()
    await hooked.app.wait_accepted(4)
    message_id = events_of(hooked.app)[0]["data"]["message_id"]
    await poll(
        lambda: _async(events_of(hooked.app, message_id)), lambda got: len(got) >= 4, "events"
    )
    events = events_of(hooked.app, message_id)  # not the bounce's DSN's
    assert [e["type"] for e in events] == [
        "message.accepted",
        "message.delivered",
        "message.bounced",
        "message.deferred",
    ]
    accepted, delivered, bounced, deferred = events
    assert accepted["data"] == {
        "message_id": message_id,
        "site": "shop",
        "recipients": 3,
        "size": accepted["data"]["size"],
        "message_class": "transactional",
        "via": "smtp",
    }
    assert delivered["data"] == {
        "message_id": message_id,
        "site": "shop",
        "recipient": "ok@example.org",
        "upstream": "main",
        "smtp_code": 250,
        "smtp_text": delivered["data"]["smtp_text"],
    }
    assert bounced["data"] == {
        "message_id": message_id,
        "site": "shop",
        "recipient": "gone@example.org",
        "upstream": "main",
        "smtp_code": 550,
        "smtp_text": GONE_REPLY.removeprefix("550 "),
        "bounce_type": "hard",
    }
    assert deferred["data"]["recipient"] == "later@example.org"
    assert (deferred["data"]["smtp_code"], deferred["data"]["smtp_text"]) == (
        451,
        LATER_REPLY.removeprefix("451 "),
    )
    assert deferred["data"]["retry_at"].endswith("Z")
    assert deferred["data"]["reason"] == f"rcpt: {LATER_REPLY}"
    for e in events:
        assert e["id"].startswith("evt_") and e["timestamp"].endswith("Z")
    for d in hooked.app.accepted:
        spec_verify(SECRET, d.headers, d.body, time.time())
        assert d.headers["webhook-id"] == d.event["id"]
    assert hooked.blog.got == []  # another site's bounces only

    detail = await world.admin.get(f"/api/v1/messages/{message_id}")
    assert [(e["type"], e["webhook"]) for e in detail["webhook_events"]] == [
        (e["type"], "app") for e in events
    ]
    assert detail["webhook_events"][0]["id"] == accepted["id"]
    assert detail["provider_events"] == []
    rows = [r for r in await outbox(world) if r["message_id"] == message_id]
    assert {(r["webhook"], r["site_id"]) for r in rows} == {("app", "shop")}


async def test_a_recipient_refused_as_suppressed_is_reported_without_a_message(
    hooked: Hooked,
) -> None:
    world = hooked.world
    await world.add(site="shop", address="alice@example.org", reason="asked us to stop")
    client = await session(world)
    try:
        await client.mail(SENDER)
        assert (await rcpt(client, "alice@example.org")).code == 550
    finally:
        await client.quit()
    status, answer = await world.send(
        {"to": ["alice@example.org", "dave@example.org"], "subject": "Hi", "text": "hello"}
    )
    assert status == 202, answer
    await hooked.app.wait_accepted(3)
    suppressed = [e for e in events_of(hooked.app) if e["type"] == "message.suppressed"]
    assert [e["data"] for e in suppressed] == [
        {"site": "shop", "recipient": "alice@example.org", "reason": "asked us to stop",
         "via": via}
        for via in ("smtp", "api")
    ]  # fmt: skip
    accepted = [e for e in events_of(hooked.app) if e["type"] == "message.accepted"]
    assert [e["data"]["via"] for e in accepted] == ["api"]


async def test_no_webhook_no_events(world: World) -> None:
    status, _ = await world.send({"to": ["dave@example.org"], "subject": "Hi", "text": "hello"})
    assert status == 202
    await world.sink.handler.wait_for(1)
    assert await outbox(world) == []


async def test_a_circuit_quota_or_dns_change_is_reported_by_the_process_that_saw_it(
    hooked: Hooked,
) -> None:
    app = hooked.world.relay.app
    app.events.publish(CircuitChange("main", CircuitState.CLOSED, CircuitState.OPEN, "refused"))
    app.events.publish(QuotaWarning(Scope.SITE, "shop", Window.DAY, 0.8, 80, 100))
    app.events.publish(DnsChange("shop.example.com", "dmarc", "pass", "fail", "no record"))
    await hooked.app.wait_accepted(3)
    node = str(app.owner)
    got = events_of(hooked.app)
    assert sorted(e["type"] for e in got) == [
        "domain.dns_changed",
        "quota.warning",
        "upstream.circuit_changed",
    ]
    data = {e["type"]: e["data"] for e in got}
    assert data["upstream.circuit_changed"] == {
        "upstream": "main", "old_state": "closed", "new_state": "open", "reason": "refused",
        "node": node,
    }  # fmt: skip
    assert data["quota.warning"] == {
        "site": "shop", "window": "day", "level": 0.8, "used": 80, "limit": 100, "node": node,
    }  # fmt: skip
    assert data["domain.dns_changed"] == {
        "domain": "shop.example.com", "check": "dmarc", "old_status": "pass",
        "new_status": "fail", "detail": "no record", "node": node,
    }  # fmt: skip
