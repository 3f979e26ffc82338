"""A message's events reach the webhook outbox in the transactions that record them.

Real traffic through a relay in-process (SMTP with STARTTLS + AUTH, the send API)
to an aiosmtpd sink that takes one recipient, refuses one for good and one for
now; on SQLite and PostgreSQL. The outbox's rows are read from the store: the
webhooks' delivery of them is tested on its own.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from relay.core.health import CircuitState
from relay.core.outbound_events import Subscription, Subscriptions
from relay.core.quota import QuotaWarning, Scope, Window
from relay.events import CircuitChange, DnsChange
from relay.tables import webhook_outbox
from tests.test_admin_messages_functional import mail, poll
from tests.test_suppressions_functional import (
    GONE_REPLY,
    SENDER,
    World,
    rcpt,
    session,
    start_node,
    store_url,
    world,
)

__all__ = ["start_node", "store_url", "world"]  # fixtures

LATER_REPLY = "451 4.2.0 mailbox busy, try later"
EVERYTHING = Subscription("app")
BLOG_BOUNCES = Subscription("blog-bounces", frozenset({"message.bounced"}), frozenset({"blog"}))


@pytest.fixture
async def subscribed(world: World) -> World:
    world.sink.handler.replies["rcpt"]["later@example.org"] = LATER_REPLY
    world.relay.app._subscriptions = Subscriptions((EVERYTHING, BLOG_BOUNCES))
    return world


async def outbox(world: World) -> list[dict[str, Any]]:
    async with world.relay.app.engine.connect() as connection:
        rows = await connection.execute(sa.select(webhook_outbox).order_by(webhook_outbox.c.id))
        return [row._asdict() for row in rows]


def bodies(rows: list[dict[str, Any]], webhook: str = "app") -> list[dict[str, Any]]:
    return [json.loads(r["payload"]) for r in rows if r["webhook"] == webhook]


async def test_an_smtp_message_gives_accepted_delivered_bounced_and_deferred(
    subscribed: World,
) -> None:
    world = subscribed
    client = await session(world)
    try:
        await client.mail(SENDER)
        for address in ("ok@example.org", "gone@example.org", "later@example.org"):
            assert (await client.rcpt(address)).code == 250
        to = "ok@example.org, gone@example.org, later@example.org"
        assert (await client.data(mail("Order 8", SENDER, to))).code == 250
    finally:
        await client.quit()
    rows = await poll(lambda: outbox(world), lambda rows: len(rows) >= 4, "four events")
    message_id = json.loads(rows[0]["payload"])["data"]["message_id"]
    rows = [r for r in rows if r["message_id"] == message_id]  # not the bounce's DSN
    events = bodies(rows)
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
    # The rows carry what delivery needs: site and message for order, due at once.
    assert {(r["site_id"], r["message_id"], r["status"]) for r in rows} == {
        ("shop", message_id, "pending")
    }
    assert all(r["event_id"] == json.loads(r["payload"])["id"] for r in rows)
    assert bodies(rows, "blog-bounces") == []  # another site's bounces only

    detail = await world.admin.get(f"/api/v1/messages/{message_id}")
    assert [(e["type"], e["webhook"], e["status"]) for e in detail["webhook_events"]] == [
        (e["type"], "app", "pending") for e in events
    ]
    assert detail["webhook_events"][0]["id"] == accepted["id"]
    assert detail["provider_events"] == []


async def test_a_recipient_refused_as_suppressed_is_reported_without_a_message(
    subscribed: World,
) -> None:
    world = subscribed
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
    rows = await poll(lambda: outbox(world), lambda rows: len(rows) >= 3, "three events")
    suppressed = [e for e in bodies(rows) if e["type"] == "message.suppressed"]
    assert [e["data"] for e in suppressed] == [
        {"site": "shop", "recipient": "alice@example.org", "reason": "asked us to stop",
         "via": via}
        for via in ("smtp", "api")
    ]  # fmt: skip
    assert any(e["type"] == "message.accepted" and e["data"]["via"] == "api" for e in bodies(rows))


async def test_no_webhook_no_events(world: World) -> None:
    status, _ = await world.send({"to": ["dave@example.org"], "subject": "Hi", "text": "hello"})
    assert status == 202
    await world.sink.handler.wait_for(1)
    assert await outbox(world) == []


async def test_a_circuit_quota_or_dns_change_is_reported_by_the_process_that_saw_it(
    subscribed: World,
) -> None:
    app = subscribed.relay.app
    app.events.publish(CircuitChange("main", CircuitState.CLOSED, CircuitState.OPEN, "refused"))
    app.events.publish(QuotaWarning(Scope.SITE, "shop", Window.DAY, 0.8, 80, 100))
    app.events.publish(DnsChange("shop.example.com", "dmarc", "pass", "fail", "no record"))
    rows = await poll(lambda: outbox(subscribed), lambda rows: len(rows) >= 3, "the events")
    node = str(app.owner)
    assert sorted((r["webhook"], r["event_type"]) for r in rows) == [
        ("app", "domain.dns_changed"),
        ("app", "quota.warning"),
        ("app", "upstream.circuit_changed"),
    ]
    data = {r["event_type"]: json.loads(r["payload"])["data"] for r in rows}
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
