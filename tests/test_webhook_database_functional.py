"""The outbox's SQL on SQLite and PostgreSQL: claims under leases, per-endpoint limits across
owners, per-message order, disabled endpoints, tries, replay and retention.

Each owner stands for a process (or node); on PostgreSQL many claim at once
from their own connections, as nodes do.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import webhook_database as db
from relay.core.outbound_events import (
    Event,
    EventType,
    Subscription,
    Subscriptions,
    event,
    message_event,
)
from relay.core.webhook_delivery import Outcome, Verdict
from relay.outbox_database import add_to_outbox
from relay.retention_database import delete_expired
from relay.store import create_engine, migrate
from relay.tables import webhook_attempts, webhook_outbox
from tests.postgres import throwaway_database

T = TypeVar("T")
NOW = 1_800_000_000.0
LEASE = 60.0
EVERYONE = Subscriptions((Subscription("a"), Subscription("b")))


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        made = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
        await migrate(made)
        yield made
        await made.dispose()
        return
    async with throwaway_database() as url:
        made = create_engine(url)
        await migrate(made)
        yield made
        await made.dispose()


async def run(engine: AsyncEngine, job: Callable[[Connection], T]) -> T:
    async with engine.begin() as c:
        return await c.run_sync(job)


async def add(engine: AsyncEngine, events: list[Event], to: Subscriptions = EVERYONE) -> None:
    await run(engine, lambda c: add_to_outbox(c, to.fan_out(events)))


def circuit_events(count: int, now: float = NOW) -> list[Event]:
    return [
        event(EventType.CIRCUIT_CHANGED, now, os.urandom(10), upstream="u") for _ in range(count)
    ]


async def claim(
    engine: AsyncEngine, owner: str, limits: dict[str, int], now: float = NOW, limit: int = 100
) -> list[db.Claimed]:
    return await run(
        engine,
        lambda c: db.claim_due(
            c, owner=owner, now=now, lease_seconds=LEASE, limits=limits, limit=limit
        ),
    )


async def settle(
    engine: AsyncEngine, claimed: db.Claimed, owner: str, verdict: Verdict, at: float = NOW
) -> float | None:
    code = 200 if verdict.outcome is Outcome.DELIVERED else 503
    attempt = db.Try(claimed, owner, at, 0.01, code, None, "ok", verdict)
    return (await run(engine, lambda c: db.record_tries(c, [attempt])))[0]


async def test_an_endpoints_limit_holds_across_owners(engine: AsyncEngine) -> None:
    await add(engine, circuit_events(10))
    limits = {"a": 3, "b": 2}
    first = await claim(engine, "node-1", limits)
    assert Counter(c.webhook for c in first) == {"a": 3, "b": 2}
    assert await claim(engine, "node-2", limits) == []  # every slot is leased
    delivered = next(c for c in first if c.webhook == "a")
    await settle(engine, delivered, "node-1", Verdict(Outcome.DELIVERED))
    (more,) = await claim(engine, "node-2", limits)
    assert more.webhook == "a"
    # A lapsed lease frees its slot (the owner crashed): its row is claimed again.
    again = await claim(engine, "node-3", limits, now=NOW + LEASE + 1)
    assert Counter(c.webhook for c in again) == {"a": 3, "b": 2}
    assert {c.id for c in first if c.id != delivered.id} <= {c.id for c in again}


async def test_concurrent_claimers_never_share_a_row_nor_exceed_the_limit(
    engine: AsyncEngine,
) -> None:
    await add(engine, circuit_events(40))
    limits = {"a": 5, "b": 40}
    results = await asyncio.gather(
        *(claim(engine, f"node-{i}", limits, limit=7) for i in range(12)),
        return_exceptions=True,
    )
    claimed = [c for r in results if isinstance(r, list) for c in r]
    ids = [c.id for c in claimed]
    assert len(ids) == len(set(ids))
    assert Counter(c.webhook for c in claimed)["a"] <= 5
    async with engine.connect() as c:
        leased = await c.scalar(
            sa.select(sa.func.count()).where(
                webhook_outbox.c.webhook == "a", webhook_outbox.c.leased_until.is_not(None)
            )
        )
    assert leased <= 5
    if engine.dialect.name == "postgresql":  # SQLite may refuse a writer as busy; PG never
        assert all(isinstance(r, list) for r in results), results


async def test_a_messages_events_go_in_order(engine: AsyncEngine) -> None:
    one = Subscriptions((Subscription("a"),))
    types = [EventType.ACCEPTED, EventType.DEFERRED, EventType.DELIVERED]
    events = [
        message_event(t, NOW + i, os.urandom(10), message_id=m, site="shop")
        for i, t in enumerate(types)
        for m in ("m1", "m2")
    ]
    await add(engine, events, one)
    batch = await claim(engine, "n", {"a": 10})
    assert [c.event_type for c in batch] == ["message.accepted"] * 2
    await settle(engine, batch[0], "n", Verdict(Outcome.RETRY, NOW + 30))
    await settle(engine, batch[1], "n", Verdict(Outcome.DELIVERED))
    # m1's first is waiting to be tried again: its later events wait behind it.
    (next_of_m2,) = await claim(engine, "n", {"a": 10}, now=NOW + 5)
    assert next_of_m2.event_type == "message.deferred"
    later = await claim(engine, "n", {"a": 10}, now=NOW + 31)
    assert [c.event_type for c in later] == ["message.accepted"]  # m1's first, again


async def test_a_disabled_endpoint_is_not_claimed(engine: AsyncEngine) -> None:
    await add(engine, circuit_events(2))
    assert await run(engine, lambda c: db.disable(c, "a", "test", NOW))
    assert not await run(engine, lambda c: db.disable(c, "a", "again", NOW))
    batch = await claim(engine, "n", {"a": 4, "b": 4})
    assert {c.webhook for c in batch} == {"b"}
    # Parked: not due, so no claim reads them while the endpoint is disabled.
    async with engine.connect() as c:
        due = await c.scalars(
            sa.select(webhook_outbox.c.next_attempt_at).where(webhook_outbox.c.webhook == "a")
        )
        assert set(due) == {db.PARKED}
    await run(engine, lambda c: db.enable(c, "a", NOW + 1))
    assert {c.webhook for c in await claim(engine, "n", {"a": 4, "b": 4}, now=NOW + 1)} == {"a"}


async def test_failing_since_is_kept_until_a_success(engine: AsyncEngine) -> None:
    await add(engine, circuit_events(3), Subscriptions((Subscription("a"),)))
    first, second, third = await claim(engine, "n", {"a": 3})
    assert await settle(engine, first, "n", Verdict(Outcome.RETRY, NOW + 5)) == NOW
    failing = await settle(engine, second, "n", Verdict(Outcome.FAILED), at=NOW + 9)
    assert failing == NOW  # the first failure since the last success
    assert await settle(engine, third, "n", Verdict(Outcome.DELIVERED), at=NOW + 10) is None
    states = await run(engine, db.load_states)
    assert states["a"].failing_since is None and states["a"].last_success_at == NOW + 10.01
    async with engine.connect() as c:
        rows = (await c.execute(sa.select(webhook_outbox).order_by(webhook_outbox.c.id))).all()
        tries = await c.scalar(sa.select(sa.func.count()).select_from(webhook_attempts))
    assert [r.status for r in rows] == ["pending", "failed", "delivered"]
    assert [r.attempt_count for r in rows] == [1, 1, 1]
    assert rows[0].next_attempt_at == NOW + 5 and rows[0].lease_owner is None
    assert rows[1].finished_at is not None and tries == 3


async def test_replay_queues_each_event_once_with_its_id_and_body(engine: AsyncEngine) -> None:
    events = circuit_events(3, now=NOW - 100)
    await add(engine, events)
    assert await run(engine, lambda c: db.replay(c, "a", NOW - 200, NOW)) == 3
    assert await run(engine, lambda c: db.replay(c, "a", NOW - 200, NOW + 1)) == 3  # not 6
    assert await run(engine, lambda c: db.replay(c, "a", NOW + 2, NOW + 2)) == 0
    async with engine.connect() as c:
        rows = (
            await c.execute(
                sa.select(webhook_outbox)
                .where(webhook_outbox.c.webhook == "a")
                .order_by(webhook_outbox.c.id)
            )
        ).all()
    assert [r.event_id for r in rows] == [e.id for e in events] * 3
    assert len({(r.event_id, r.payload) for r in rows}) == 3
    assert all(r.status == "pending" for r in rows)
    assert [r.next_attempt_at for r in rows[3:]] == [NOW] * 3 + [NOW + 1] * 3


async def test_retention_removes_finished_events_and_old_tries_only(engine: AsyncEngine) -> None:
    await add(engine, circuit_events(2), Subscriptions((Subscription("a"),)))
    done, waiting = await claim(engine, "n", {"a": 2})
    await settle(engine, done, "n", Verdict(Outcome.DELIVERED))
    await settle(engine, waiting, "n", Verdict(Outcome.RETRY, NOW + 5))
    assert await run(engine, lambda c: delete_expired(c, "webhook_outbox", NOW + 60, 100)) == 1
    assert await run(engine, lambda c: delete_expired(c, "webhook_attempts", NOW + 60, 100)) == 2
    async with engine.connect() as c:
        left = (await c.execute(sa.select(webhook_outbox.c.status))).scalars().all()
    assert left == ["pending"]  # waiting events stay, whatever their age


async def test_the_log_pages_by_time_and_id(engine: AsyncEngine) -> None:
    await add(engine, circuit_events(5), Subscriptions((Subscription("a"),)))
    for i, claimed in enumerate(await claim(engine, "n", {"a": 5})):
        await settle(engine, claimed, "n", Verdict(Outcome.DELIVERED), at=NOW + i // 2)
    pages: list[list[Any]] = []
    after = None
    while True:
        page = await run(engine, lambda c, after=after: db.deliveries(c, "a", after, 2))
        if not page:
            break
        pages.append(page)
        after = (page[-1].at, page[-1].id)
    seen = [d for page in pages for d in page]
    assert len(seen) == 5 and len({d.id for d in seen}) == 5
    assert [(d.at, d.id) for d in seen] == sorted(((d.at, d.id) for d in seen), reverse=True)


async def test_events_of_an_endpoint_no_longer_configured_fail_after_the_retry_window(
    engine: AsyncEngine,
) -> None:
    await add(engine, circuit_events(2))  # to "a" and "b"
    await add(engine, circuit_events(1, NOW + 100))
    # "b" left the file: its events wait out the retry window (it may come back), then fail.
    assert await run(engine, lambda c: db.fail_orphans(c, ["a"], NOW, NOW + 200)) == 0
    assert await run(engine, lambda c: db.fail_orphans(c, ["a"], NOW + 50, NOW + 200)) == 2
    async with engine.connect() as c:
        rows = (await c.execute(sa.select(webhook_outbox).order_by(webhook_outbox.c.id))).all()
    assert [(r.webhook, r.status) for r in rows] == [
        ("a", "pending"),
        ("b", "failed"),
        ("a", "pending"),
        ("b", "failed"),
        ("a", "pending"),
        ("b", "pending"),
    ]
    failed = [r for r in rows if r.status == "failed"]
    assert all(r.last_error == "the endpoint is no longer configured" for r in failed)
    assert {r.finished_at for r in failed} == {NOW + 200}  # retention takes them in time


async def test_a_try_under_way_is_never_claimed_again_by_its_own_process(
    engine: AsyncEngine,
) -> None:
    """Its lease lapsed by the clock (a fake one jumps): another process may take it over,
    the one sending it may not, and one that failed here is released for anyone."""
    await add(engine, circuit_events(1), Subscriptions((Subscription("a"),)))
    (first,) = await claim(engine, "p1", {"a": 4})
    later = NOW + LEASE + 1
    assert await claim(engine, "p1", {"a": 4}, now=later) == []
    (taken,) = await claim(engine, "p2", {"a": 4}, now=later)
    assert taken.id == first.id
    await run(engine, lambda c: db.release_lease(c, taken.id, "p2"))
    (again,) = await claim(engine, "p1", {"a": 4}, now=later)
    assert again.id == first.id
