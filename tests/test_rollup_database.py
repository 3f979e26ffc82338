"""The statistics counters on a real store: what they say equals what the rows say.

A mixed workload with explicit times across an hour boundary and a day
boundary (UTC, and midnight in Europe/Berlin and Asia/Kolkata) goes through
the store layer the way the relay writes it: admissions and delivery records
batched by the GroupWriter, operators' hold, release, retry and delete, DSNs.
Every window's counters are then compared with the message and attempt rows
counted over the same whole minutes, and a rebuild from the rows gives the
very counters the transactions wrote. SQLite, and PostgreSQL when one answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import store
from relay.core.model import Attempt, RecipientStatus, SmtpReply
from relay.core.rollups import duration_bucket
from relay.queue_database import (
    Admission,
    DeliveryRecord,
    RecipientState,
    admit_messages,
    delete_message,
    hold,
    record_deliveries,
    release,
    retry_now,
)
from relay.rollup_database import rebuild_rollups_async, rollup_stats
from relay.store import GroupWriter, create_engine, migrate
from relay.tables import stats_rollups
from tests.postgres import throwaway_database
from tests.stats_from_rows import site_stats_from_rows, upstream_stats_from_rows
from tests.test_message_log_database import new_message

MIDNIGHT = 1_800_057_600.0  # 2027-01-16 00:00 UTC
START = MIDNIGHT - 2 * 3600 - 17  # a little before 22:00 UTC
OK = SmtpReply(250, "2.0.0 OK")


@pytest.fixture(params=["sqlite", "postgresql"])
async def writer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GroupWriter]:
    """A writer on a new store at the newest schema."""
    async with _writer(request.param, tmp_path, None) as found:
        yield found


@pytest.fixture(params=["sqlite", "postgresql"])
async def writer_0007(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GroupWriter]:
    """A writer on a new store at schema 0007: before the counters were filled or read."""
    async with _writer(request.param, tmp_path, "0007") as found:
        yield found


@asynccontextmanager
async def _writer(kind: str, tmp_path: Path, revision: str | None) -> AsyncIterator[GroupWriter]:
    async with AsyncExitStack() as stack:
        url = f"sqlite+aiosqlite:///{tmp_path}/relay.db"
        if kind == "postgresql":
            url = await stack.enter_async_context(throwaway_database())
        engine = create_engine(url)
        stack.push_async_callback(engine.dispose)
        if revision is None:
            await migrate(engine)
        else:
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade_to, revision)
        writer = GroupWriter(engine)
        writer.start()
        stack.push_async_callback(writer.close)
        yield writer


async def mixed_workload(writer: GroupWriter) -> None:
    """About 150 messages of three sites over four hours, every kind of status change."""
    rng = random.Random(20)  # noqa: S311 -- a repeatable workload
    sites = ("shop", "blog", "news")
    upstreams = ("ses", "mg", "backup")
    created = [START + i * 97.3 + rng.random() for i in range(150)]  # 4 hours
    ids = [f"m{i:03d}" for i in range(len(created))]
    # Admitted in batches of ten at once: one transaction each, as concurrent sessions are.
    for first in range(0, len(ids), 10):
        await asyncio.gather(
            *(
                writer.write_item(
                    admit_messages,
                    Admission(
                        new_message(
                            ids[i],
                            created[i],
                            site=sites[i // 6 % 3],
                            recipients=("a@example.org", "b@example.org")[: 1 + i % 2],
                        )
                    ),
                )
                for i in range(first, min(first + 10, len(ids)))
            )
        )
    records = []
    for i, message_id in enumerate(ids):
        kind = i % 6
        later = created[i] + 30 + rng.random() * 400  # often in the next minute or hour
        addresses = ("a@example.org", "b@example.org")[: 1 + i % 2]
        upstream = upstreams[i // 2 % 3]

        def tried(
            outcome: str, to: tuple[str, ...] = addresses, at: float = later, via: str = upstream
        ) -> Attempt:
            return Attempt(via, at, rng.choice((0.004, 0.12, 0.9, 2.5, 31.0)), OK, outcome, to)

        if kind == 0:  # sent
            states = tuple(
                RecipientState(a, RecipientStatus.SENT, upstream, 250, "ok") for a in addresses
            )
            records.append(
                DeliveryRecord(
                    message_id,
                    (tried("retry"), tried("sent", at=later + 61)),
                    states,
                    None,
                    None,
                    later + 62,
                )
            )
        elif kind == 1:  # failed, with a DSN to the sender
            states = tuple(
                RecipientState(a, RecipientStatus.FAILED, upstream, 550, "no") for a in addresses
            )
            dsn = new_message(f"dsn-{message_id}", later + 1, site=sites[i // 6 % 3])
            records.append(
                DeliveryRecord(
                    message_id, (tried("failed"),), states, None, "550", later, notices=(dsn,)
                )
            )
        elif kind == 2:  # deferred
            records.append(
                DeliveryRecord(message_id, (tried("defer"),), (), later + 600, "421", later)
            )
        elif kind == 3:  # partial (i is odd: two recipients)
            states = (
                RecipientState(addresses[0], RecipientStatus.SENT, upstream, 250, "ok"),
                RecipientState(addresses[1], RecipientStatus.FAILED, upstream, 550, "no"),
            )
            records.append(
                DeliveryRecord(
                    message_id,
                    (tried("sent", addresses[:1]), tried("failed", addresses[1:])),
                    states,
                    None,
                    None,
                    later,
                )
            )
        elif kind == 4:  # a connection that failed before RCPT, then deferred
            records.append(
                DeliveryRecord(message_id, (tried("retry", ()),), (), later + 300, "timeout", later)
            )
    for first in range(0, len(records), 8):
        await asyncio.gather(
            *(writer.write_item(record_deliveries, r) for r in records[first : first + 8])
        )
    # Operators: hold waiting mail (one is then delivered while held: it stays held), release,
    # retry, and delete a queued message.
    for i in (11, 17, 23, 29):  # queued (kind 5: never tried)
        await writer.write(lambda c, m=ids[i]: hold(c, m, MIDNIGHT + 7200))
    await writer.write(lambda c: release(c, ids[17], MIDNIGHT + 7300))
    await writer.write(lambda c: hold(c, ids[2], MIDNIGHT + 7200))  # deferred -> held
    await writer.write(lambda c: retry_now(c, ids[23], MIDNIGHT + 7400))  # held -> queued
    await writer.write(lambda c: retry_now(c, ids[8], MIDNIGHT + 7400))  # deferred: stays
    await writer.write_item(
        record_deliveries, DeliveryRecord(ids[2], (), (), MIDNIGHT + 9000, "421", MIDNIGHT + 7500)
    )  # delivered while held: held still
    await writer.write(lambda c: delete_message(c, ids[5]))  # queued, never tried


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(store.__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def windows() -> list[tuple[float, float]]:
    berlin = dt.datetime(2027, 1, 16, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    kolkata = dt.datetime(2027, 1, 16, tzinfo=ZoneInfo("Asia/Kolkata")).timestamp()
    hour = MIDNIGHT - 3600
    rng = random.Random(7)  # noqa: S311 -- repeatable windows
    found = [
        (START - 86_400, START + 86_400),  # everything
        (hour - 1800, hour + 1800),  # across an hour
        (MIDNIGHT - 60, MIDNIGHT + 60),  # across the UTC day
        (MIDNIGHT, MIDNIGHT + 86_400),  # the UTC day after
        (berlin - 86_400, berlin),  # the day before Berlin's midnight
        (berlin, berlin + 5400.5),
        (kolkata - 3600 * 3 - 0.5, kolkata + 1),  # Kolkata: a half-hour zone
        (hour + 59.5, hour + 60.5),
    ]
    for _ in range(12):
        since = START + rng.random() * 14_400
        found.append((since, since + rng.random() * 10_000))
    return found


async def assert_counters_equal_rows(c: AsyncConnection, since: float, until: float) -> None:
    start, end, sites, upstreams = await rollup_stats(c, since, until)
    assert start <= since < start + 60 and until <= end < until + 60
    assert sites == await site_stats_from_rows(c, start, end), (since, until)
    exact = await upstream_stats_from_rows(c, start, end)
    assert [replace(u, p95_seconds=None) for u in upstreams] == [
        replace(u, p95_seconds=None) for u in exact
    ], (since, until)
    for counted, row in zip(upstreams, exact, strict=True):
        assert row.p95_seconds is not None
        assert counted.p95_seconds == float(duration_bucket(row.p95_seconds)[3:]) / 1000


async def counters(c: AsyncConnection) -> list[tuple[object, ...]]:
    rows = await c.execute(
        sa.select(stats_rollups).where(stats_rollups.c.value != 0).order_by(*stats_rollups.c)
    )
    return [tuple(row) for row in rows]


async def test_counters_equal_the_rows_in_every_window(writer: GroupWriter) -> None:
    await mixed_workload(writer)
    async with writer.engine.connect() as c:
        [whole] = [s for s in (await rollup_stats(c, 0, MIDNIGHT * 2))[2] if s.site_id == "shop"]
        assert whole.held and whole.deferred and whole.sent and whole.failed and whole.partial
        for since, until in windows():
            await assert_counters_equal_rows(c, since, until)


async def test_a_rebuild_gives_the_counters_the_transactions_wrote(writer: GroupWriter) -> None:
    await mixed_workload(writer)
    await writer.write(lambda c: delete_message(c, "never-there"))
    async with writer.engine.begin() as c:
        written = await counters(c)
        await rebuild_rollups_async(c)
        assert await counters(c) == written
        assert len(written) > 100


async def test_migration_0008_fills_the_counters_of_an_older_store(
    writer_0007: GroupWriter,
) -> None:
    writer = writer_0007
    await mixed_workload(writer)  # at 0007, where nothing read the counters
    async with writer.engine.begin() as c:
        written = await counters(c)
        await c.execute(stats_rollups.delete())
    await migrate(writer.engine)
    async with writer.engine.connect() as c:
        assert await counters(c) == written
        for since, until in windows():
            await assert_counters_equal_rows(c, since, until)
