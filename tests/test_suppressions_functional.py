"""The suppression list over real traffic, on SQLite and PostgreSQL.

A relay in-process with its admin API (HTTP, bearer token), its send API and
an SMTP listener (STARTTLS + AUTH) delivering to an aiosmtpd sink on
loopback. A FakeClock drives the relay's decisions, so an entry's expiry is
exact; housekeeping runs are called by the test.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection

from admin_http.schemas import iso
from relay import store, suppression_database
from relay.core.tokens import hash_token
from relay.suppression_controller import SITES_SECONDS
from tests.conftest import SITE_PASSWORD, FakeClock, RunningRelay, Sink, base_config, smtp_upstream
from tests.test_admin_messages_functional import TOKEN, Admin, mail, poll, with_admin
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures

START = 1_800_000_000.0  # FakeClock's default
KEY = "shop-key-0123456789abcdef"
SENDER = "orders@shop.example.com"
GONE_REPLY = "550 5.1.1 no such user"


@dataclass
class World:
    relay: RunningRelay
    clock: FakeClock
    admin: Admin
    sink: Sink
    http: aiohttp.ClientSession
    tls: ssl.SSLContext

    async def add(self, expect: int = 201, **body: Any) -> Any:
        status, answer = await self.admin.call("POST", "/api/v1/suppressions", json=body)
        assert status == expect, answer
        return answer

    async def delete(self, site: str, address: str) -> int:
        url = f"{self.admin.base}/api/v1/suppressions/{site}/{address}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.delete(url, headers=headers) as reply:
            return reply.status

    async def listed(self, **params: str) -> Any:
        return await self.admin.get("/api/v1/suppressions", **params)

    async def send(self, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.relay.app.http_port}/api/v1/send"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with self.http.post(url, json=body, headers=headers) as reply:
            return reply.status, await reply.json()


def relay_config(tmp_path: Path, sink: Sink, cert_files: Any) -> dict[str, Any]:
    config = with_admin(base_config(tmp_path, [smtp_upstream("main", sink.port)]), cert_files)
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config["sites"][0]["api_keys"] = [{"name": "backend", "key_hash": hash_token(KEY)}]
    config["sites"].append(
        {"id": "blog", "from": {"email": "news@blog.example.com"}, "upstreams": ["main"]}
    )
    config["retention"] = {"interval_seconds": 3600}  # runs are the test's
    config["health"] = {"check_interval_seconds": 0}
    return config


@pytest.fixture
async def world(
    tmp_path: Path,
    store_url: str,  # before start_relay: the relay stops before its database goes
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> AsyncIterator[World]:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": GONE_REPLY}})
    config = relay_config(tmp_path, sink, cert_files)
    config["store"] = {"url": store_url}
    clock = FakeClock(START)
    relay = await start_relay(config, clock=clock)
    async with aiohttp.ClientSession() as http:
        yield World(relay, clock, Admin(http, relay.app.admin_port), sink, http, client_tls)


async def session(world: World, port: int | None = None) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port or world.relay.port,
        start_tls=True,
        tls_context=world.tls,
        timeout=10,
    )
    await client.connect()
    await client.login("shop", SITE_PASSWORD)
    return client


async def rcpt(client: aiosmtplib.SMTP, address: str) -> aiosmtplib.SMTPResponse:
    """RCPT whatever the answer (aiosmtplib's rcpt() raises on a refusal)."""
    return await client.execute_command(b"RCPT", f"TO:<{address}>".encode())


async def test_add_list_search_delete_with_audit_entries(world: World) -> None:
    first = await world.add(site="shop", address="Alice@Example.ORG", reason="asked us to stop")
    assert first == {
        "site": "shop",
        "address": "alice@example.org",
        "reason": "asked us to stop",
        "source": "manual",
        "message_id": None,
        "created_at": iso(START),
        "expires_at": None,
    }
    world.clock.advance(10)
    # Adding again is idempotent: 200, the reason replaced, the entry's time kept.
    again = await world.add(
        200, site="shop", address="alice@example.org", reason="complained by phone"
    )
    assert (again["reason"], again["created_at"]) == ("complained by phone", iso(START))
    world.clock.advance(10)
    soft = await world.add(
        site="shop",
        address="bob@example.org",
        reason="mailbox full for a week",
        source="provider",
        expires_at="2027-02-01T00:00:00Z",
    )
    assert (soft["source"], soft["expires_at"]) == ("provider", "2027-02-01T00:00:00.000Z")
    world.clock.advance(10)
    await world.add(site="blog", address="carol@example.org", reason="unsubscribed")

    everything = await world.listed()
    assert everything["total"] == 3
    assert [(e["site"], e["address"]) for e in everything["items"]] == [
        ("blog", "carol@example.org"),
        ("shop", "bob@example.org"),
        ("shop", "alice@example.org"),
    ]
    shop = await world.listed(site="shop")
    assert [e["address"] for e in shop["items"]] == ["bob@example.org", "alice@example.org"]
    found = await world.listed(q="ALICE@")
    assert [e["address"] for e in found["items"]] == ["alice@example.org"]
    assert (await world.listed(q="%"))["total"] == 0  # a wildcard is a character here
    page = await world.listed(page="2", page_size="2")
    assert (page["total"], page["page"], len(page["items"])) == (3, 2, 1)
    assert page["items"][0]["address"] == "alice@example.org"

    for body, problem in [
        ({"site": "nosuch", "address": "a@example.org", "reason": "x"}, "no site"),
        ({"site": "shop", "address": "not an address", "reason": "x"}, "address"),
        ({"site": "shop", "address": "a@example.org"}, "reason"),
        ({"site": "shop", "address": "a@example.org", "reason": "x", "source": "whim"}, "source"),
        (
            {"site": "shop", "address": "a@example.org", "reason": "x", "expires_at": START - 1},
            "future",
        ),
        ({"site": "shop", "address": "a@example.org", "reason": "x", "colour": 1}, "unknown"),
    ]:
        status, answer = await world.admin.call("POST", "/api/v1/suppressions", json=body)
        assert status == 422, (body, answer)
        assert any(problem in p for p in answer["error"]["problems"]), answer

    assert await world.delete("shop", "ALICE@example.org") == 204
    assert await world.delete("shop", "alice@example.org") == 404
    assert [e["address"] for e in (await world.listed(site="shop"))["items"]] == ["bob@example.org"]

    audit = await world.admin.get("/api/v1/audit", page_size="50")
    entries = [
        (e["action"], e["target"], e["token"])
        for e in reversed(audit["items"])
        if e["kind"] == "suppression"
    ]
    assert entries == [
        ("create", "shop/alice@example.org", "ops"),
        ("update", "shop/alice@example.org", "ops"),
        ("create", "shop/bob@example.org", "ops"),
        ("create", "blog/carol@example.org", "ops"),
        ("delete", "shop/alice@example.org", "ops"),
    ]


async def test_rcpt_refuses_a_suppressed_recipient_while_the_others_are_delivered(
    world: World,
) -> None:
    await world.add(site="shop", address="alice@example.org", reason="asked us to stop")
    await world.add(site="blog", address="bob@example.org", reason="another site's entry")
    client = await session(world)
    try:
        await client.mail(SENDER)
        refused = await rcpt(client, "Alice@Example.org")
        assert (refused.code, refused.message) == (
            550,
            "5.1.1 <Alice@Example.org>: recipient is suppressed for this site (asked us to stop)",
        )
        assert (await client.rcpt("bob@example.org")).code == 250  # the other site's list
        assert (await client.rcpt("dave@example.org")).code == 250
        done = await client.data(mail("Order 7", SENDER, "bob@example.org, dave@example.org"))
        assert done.code == 250
    finally:
        await client.quit()
    [arrived] = await world.sink.handler.wait_for(1)
    assert sorted(arrived.rcpt_tos) == ["bob@example.org", "dave@example.org"]
    value = world.relay.app.metrics.registry.get_sample_value(
        "relay_suppressed_recipients_total", {"site": "shop", "via": "smtp"}
    )
    assert value == 1.0


async def test_an_expired_suppression_no_longer_refuses_and_housekeeping_deletes_it(
    world: World,
) -> None:
    # The run every start makes first must be over: late (PostgreSQL measures the store
    # first), it would see the clock moved on below and delete the entry itself.
    housekeeping = world.relay.app.housekeeping
    await poll(lambda: _value(len(housekeeping.runs)), bool, "the start's housekeeping run")
    await world.add(
        site="shop",
        address="erin@example.org",
        reason="greylisted us",
        source="provider",
        expires_at=START + 60,
    )
    await world.add(site="shop", address="frank@example.org", reason="for good")
    client = await session(world)
    try:
        await client.mail(SENDER)
        assert (await rcpt(client, "erin@example.org")).code == 550
        await client.rset()
        world.clock.advance(60)  # its expires_at has come
        await client.mail(SENDER)
        assert (await client.rcpt("erin@example.org")).code == 250
        assert (await rcpt(client, "frank@example.org")).code == 550
        assert (await client.data(mail("Back", SENDER, "erin@example.org"))).code == 250
    finally:
        await client.quit()
    [arrived] = await world.sink.handler.wait_for(1)
    assert arrived.rcpt_tos == ["erin@example.org"]
    assert (await world.listed())["total"] == 2  # listed, with its expires_at, until deleted
    world.clock.advance(1)
    removed = await world.relay.app.housekeeping.run_once()
    assert removed is not None and removed["suppressions"] == 1
    left = await world.listed()
    assert [e["address"] for e in left["items"]] == ["frank@example.org"]


async def test_the_send_api_says_which_recipients_were_suppressed(world: World) -> None:
    await world.add(site="shop", address="alice@example.org", reason="asked us to stop")
    body = {
        "to": ["Alice@Example.org", "bob@example.org"],
        "subject": "Your order",
        "text": "Thank you.",
    }
    status, answer = await world.send(body)
    assert status == 202, answer
    assert answer["suppressed"] == [{"address": "Alice@Example.org", "reason": "asked us to stop"}]
    [arrived] = await world.sink.handler.wait_for(1)
    assert arrived.rcpt_tos == ["bob@example.org"]
    detail = await world.admin.get(f"/api/v1/messages/{answer['id']}")
    assert [r["address"] for r in detail["recipients"]] == ["bob@example.org"]

    status, answer = await world.send({**body, "to": ["alice@example.org"]})
    assert status == 422, answer
    assert answer["error"]["code"] == "suppressed"
    assert answer["error"]["problems"] == [
        "alice@example.org: recipient is suppressed for this site (asked us to stop)"
    ]
    status, answer = await world.send({**body, "to": ["bob@example.org"]})
    assert (status, "suppressed" in answer) == (202, False)
    value = world.relay.app.metrics.registry.get_sample_value(
        "relay_suppressed_recipients_total", {"site": "shop", "via": "api"}
    )
    assert value == 2.0


async def test_a_hard_bounce_adds_an_entry_that_rcpt_then_refuses(world: World) -> None:
    client = await session(world)
    try:
        await client.sendmail(SENDER, ["gone@example.org"], mail("Hi", SENDER, "gone@example.org"))
    finally:
        await client.quit()
    listed = await poll(lambda: world.listed(site="shop"), lambda v: v["total"] == 1, "a bounce")
    [entry] = listed["items"]
    assert (entry["address"], entry["source"], entry["expires_at"]) == (
        "gone@example.org",
        "bounce",
        None,
    )
    assert entry["reason"].startswith(GONE_REPLY) and entry["message_id"]
    client = await session(world)
    try:
        await client.mail(SENDER)
        refused = await rcpt(client, "gone@example.org")
    finally:
        await client.quit()
    assert refused.code == 550
    assert refused.message.startswith(
        "5.1.1 <gone@example.org>: recipient is suppressed for this site (550 5.1.1 no such user"
    )


async def test_a_change_on_one_node_counts_at_once_on_another(
    tmp_path: Path, world: World, start_node: Any, cert_files: Any
) -> None:
    """For a site with entries node B's RCPT reads the store, so A's change counts there at
    once (no ``cluster.sync_seconds`` to wait). B is a second relay on the world's store."""
    b = await start_node("b", relay_config(tmp_path, world.sink, cert_files))
    await world.add(site="shop", address="alice@example.org", reason="asked us to stop")
    client = await session(world, b.listeners.ports[0])
    try:
        await client.mail(SENDER)
        assert (await rcpt(client, "alice@example.org")).code == 550
        assert await world.delete("shop", "alice@example.org") == 204
        assert (await rcpt(client, "alice@example.org")).code == 250
    finally:
        await client.quit()


class StalledStore:
    """A store that never answers a read."""

    async def read_now(self, job: Any) -> Any:
        await asyncio.sleep(30)


async def test_a_lookup_that_does_not_answer_in_time_is_a_temporary_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    suppressions = world.relay.app.suppressions
    monkeypatch.setattr(suppressions, "_writer", StalledStore())
    monkeypatch.setattr(suppressions, "_lookup_seconds", 0.2)
    client = await session(world)
    try:
        await client.mail(SENDER)
        later = await rcpt(client, "alice@example.org")
    finally:
        await client.quit()
    assert (later.code, later.message) == (
        451,
        "4.3.0 Recipient could not be checked; try again later",
    )
    status, answer = await world.send({"to": ["alice@example.org"], "subject": "s", "text": "t"})
    assert status == 503, answer


def _migrate_to(connection: Connection, revision: str, down: bool = False) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(store.__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


async def test_migration_0009_makes_the_rows_before_it_bounces_and_goes_back(
    store_url: str,
) -> None:
    engine = store.create_engine(store_url)
    old = sa.table(
        "suppressions",
        sa.column("site_id"),
        sa.column("address"),
        sa.column("reason"),
        sa.column("message_id"),
        sa.column("created_at"),
    )
    try:
        async with engine.begin() as c:
            await c.run_sync(_migrate_to, "0008")
            await c.execute(
                old.insert().values(
                    site_id="shop",
                    address="gone@example.org",
                    reason=GONE_REPLY,
                    message_id="m1",
                    created_at=START,
                )
            )
        await store.migrate(engine)
        async with engine.connect() as c:
            [entry] = (await suppression_database.list_entries(c, suppression_database.Search()))[0]
        assert (entry.address, entry.source, entry.expires_at) == (
            "gone@example.org",
            "bounce",
            None,
        )
        async with engine.begin() as c:
            await c.run_sync(_migrate_to, "0008", True)
            assert (await c.execute(sa.select(old.c.address))).scalars().all() == [
                "gone@example.org"
            ]
    finally:
        await engine.dispose()


async def test_a_sites_first_entry_reaches_another_nodes_rcpt_within_a_second(
    tmp_path: Path, world: World, start_node: Any, cert_files: Any
) -> None:
    """B has read that the site has no entries; A adds its first: B's RCPT refuses it once
    B asks again whether the site has entries (at most SITES_SECONDS later)."""
    b = await start_node("b", relay_config(tmp_path, world.sink, cert_files))
    client = await session(world, b.listeners.ports[0])
    try:
        await client.mail(SENDER)
        assert (await rcpt(client, "carol@example.org")).code == 250  # B reads: no entries
        await world.add(site="shop", address="carol@example.org", reason="asked us to stop")
        started = time.monotonic()
        while (await rcpt(client, "carol@example.org")).code == 250:
            assert time.monotonic() - started < SITES_SECONDS + 2, "never refused"
            await asyncio.sleep(0.1)
    finally:
        await client.quit()


async def _value(value: Any) -> Any:
    return value
