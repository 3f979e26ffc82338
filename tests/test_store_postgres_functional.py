"""The store on PostgreSQL: migrations, queue claims, records, counters, circuits, suppressions.

Runs against the PostgreSQL at 127.0.0.1:5432 in a throwaway database; skips
with the reason when there is none. The same functions run on SQLite in
every other functional test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.health import Circuit, CircuitState
from relay.core.model import MessageStatus, NewMessage, QueuedMessage, RecipientStatus
from relay.core.quota import Claim, Granted, OverLimit, Scope, Window
from relay.engine_database import Suppression, load_circuits, save_circuits
from relay.queue_database import (
    DeliveryRecord,
    RecipientState,
    claim_due,
    hold,
    insert_messages,
    load_message,
    queue_stats,
    record_delivery,
    release_stale_leases,
)
from relay.store import create_engine, migrate
from relay.suppression_database import Search, list_entries, remove_entry
from relay.tables import messages
from relay.usage_database import claim_usage, give_back, load_usage
from tests.postgres import throwaway_database


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    async with throwaway_database() as url:
        engine = create_engine(url)
        try:
            await migrate(engine)
            yield engine
        finally:
            await engine.dispose()


def new_message(message_id: str, now: float) -> NewMessage:
    return NewMessage(
        id=message_id,
        site_id="shop",
        username="shop",
        client_ip="127.0.0.1",
        original_sender="orders@shop.example.com",
        envelope_sender="sales@example.com",
        recipients=("a@example.org", "gone@example.org"),
        content=b"Subject: hi\r\n\r\nhello\r\n",
        original_headers=b"Subject: hi\r\n",
        subject="hi",
        created_at=now,
    )


def claim(c: Connection, now: float) -> list[QueuedMessage]:
    return claim_due(c, owner="node", now=now, lease_seconds=60, limit=10)


async def test_queue_round_trip(engine: AsyncEngine) -> None:
    now = 1_800_000_000.0
    async with engine.begin() as c:
        await c.run_sync(insert_messages, [new_message("m1", now), new_message("m2", now)])
    async with engine.begin() as c:
        claimed = await c.run_sync(claim, now)
    assert {m.id for m in claimed} == {"m1", "m2"}
    record = DeliveryRecord(
        "m1",
        (),
        (
            RecipientState("a@example.org", RecipientStatus.SENT, "sink", 250, "2.0.0 ok"),
            RecipientState("gone@example.org", RecipientStatus.FAILED, "sink", 550, "5.1.1 no"),
        ),
        None,
        None,
        now,
        suppress=(Suppression("shop", "Gone@example.org", "550 5.1.1 no", "m1", now),),
    )
    async with engine.begin() as c:
        await c.run_sync(record_delivery, record)
        await hold(c, "m2", now)
    async with engine.connect() as c:
        detail = await load_message(c, "m1")
        stats = await queue_stats(c)
        entries, total = await list_entries(c, Search("shop"))
    assert detail is not None and detail.status is MessageStatus.PARTIAL
    assert (stats.depth, stats.held) == (0, 1)
    assert total == 1 and entries[0].address == "gone@example.org"
    assert (entries[0].source, entries[0].expires_at) == ("bounce", None)

    # Suppressed recipients come with the next claim, whatever their case.
    async with engine.begin() as c:
        await c.run_sync(insert_messages, [new_message("m3", now)])
        [again] = await c.run_sync(claim, now)
    assert again.suppressed.keys() == {"gone@example.org"}
    async with engine.begin() as c:
        assert await remove_entry(c, "shop", "GONE@example.org") is not None


async def test_counters_and_circuits_upsert(engine: AsyncEngine) -> None:
    key = (Scope.UPSTREAM, "ses", Window.DAY, "2027-01-15")
    claim = Claim(Scope.UPSTREAM, "ses", {Window.DAY: 10}, 3, 1_800_000_000.0, ZoneInfo("UTC"))
    async with engine.begin() as c:
        first = await c.run_sync(claim_usage, [claim, claim, claim])
        assert [type(v) for v in first] == [Granted, Granted, Granted]
        assert await c.run_sync(claim_usage, [claim]) == [
            OverLimit(Window.DAY, 10, 9, 1_800_057_600.0)
        ]
        await c.run_sync(give_back, [(claim, 2)])
        await save_circuits(c, {"ses": Circuit(CircuitState.OPEN, 5, 10.0, "refused")}, 10.0)
        await save_circuits(c, {"ses": Circuit(CircuitState.HALF_OPEN, 5, 20.0, "refused")}, 20.0)
    async with engine.connect() as c:
        assert await load_usage(c, ["2027-01-15"]) == [(key, 7)]
        circuits = await load_circuits(c)
    assert circuits["ses"].state is CircuitState.HALF_OPEN


async def test_nodes_claiming_at_once_skip_each_others_rows(engine: AsyncEngine) -> None:
    """A claim in an open transaction is passed over by another node's claim, not waited for."""
    now = 1_800_000_000.0
    async with engine.begin() as c:
        await c.run_sync(insert_messages, [new_message(f"m{i:02}", now + i) for i in range(10)])

    def claim_as(owner: str) -> Callable[[Connection], list[QueuedMessage]]:
        return lambda c: claim_due(c, owner=owner, now=now + 60, lease_seconds=60, limit=6)

    async with engine.connect() as a, engine.connect() as b:
        await a.begin()
        await b.begin()
        first = await a.run_sync(claim_as("a"))  # uncommitted: its rows stay locked
        second = await asyncio.wait_for(b.run_sync(claim_as("b")), 10)  # no waiting on a
        await b.commit()
        await a.commit()
    assert len(first) == 6 and len(second) == 4
    assert {m.id for m in first}.isdisjoint(m.id for m in second)
    async with engine.connect() as c:
        owners = dict((await c.execute(sa.select(messages.c.id, messages.c.lease_owner))).all())
    assert sorted(owners.values()) == ["a"] * 6 + ["b"] * 4


async def test_a_start_releases_the_leases_of_gone_owners_only(engine: AsyncEngine) -> None:
    now = 1_800_000_000.0
    owners = ["gone", "alive", "gone", "delivered", None]
    batch = [
        replace(new_message(f"m{i}", now), lease=(o, now + 600) if o else None)
        for i, o in enumerate(owners)
    ]
    async with engine.begin() as c:
        await c.run_sync(insert_messages, batch)
        await c.execute(
            messages.update()
            .where(messages.c.id == "m3")
            .values(status=MessageStatus.SENT.value)  # finished: its row is history
        )
        released = await release_stale_leases(c, lambda owner: owner in ("gone", "delivered"))
    assert released == {"gone": 2}
    async with engine.connect() as c:
        rows = dict((await c.execute(sa.select(messages.c.id, messages.c.lease_owner))).all())
    assert rows == {"m0": None, "m1": "alive", "m2": None, "m3": "delivered", "m4": None}
