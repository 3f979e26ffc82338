"""Counting in the store: messages and DSNs over a site's limit are refused in their transaction.

On a real SQLite file and on PostgreSQL (a throwaway database at
127.0.0.1:5432, skipped with the reason when there is none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.quota import Claim, Granted, OverLimit, Scope, Window
from relay.queue_database import (
    Admission,
    DeliveryRecord,
    record_deliveries,
    store_messages,
)
from relay.store import create_engine, migrate
from relay.tables import messages
from relay.usage_database import load_usage
from tests.test_shared_limits_functional import store_url  # noqa: F401 (a fixture)
from tests.test_store_postgres_functional import new_message

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
MIDNIGHT = 1_800_057_600.0
DAY = (Scope.SITE, "shop", Window.DAY, "2027-01-15")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[AsyncEngine]:  # noqa: F811 (the fixture)
    """A migrated store: a SQLite file, then a throwaway PostgreSQL database."""
    engine = create_engine(store_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def site_claim(limit: int) -> Claim:
    return Claim(Scope.SITE, "shop", {Window.DAY: limit}, 1, NOW, ZoneInfo("UTC"))


async def stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as c:
        return sorted((await c.execute(sa.select(messages.c.id))).scalars())


async def test_messages_over_the_limit_are_neither_counted_nor_stored(store: AsyncEngine) -> None:
    batch = [Admission(new_message(f"m{i}", NOW), site_claim(2)) for i in range(3)]
    batch.append(Admission(new_message("unlimited", NOW)))
    async with store.begin() as c:
        verdicts = await c.run_sync(store_messages, batch)

    assert [type(v) for v in verdicts] == [Granted, Granted, OverLimit, type(None)]
    assert verdicts[2] == OverLimit(Window.DAY, 2, 2, MIDNIGHT)
    assert await stored_ids(store) == ["m0", "m1", "unlimited"]
    async with store.connect() as c:
        assert (DAY, 2) in await load_usage(c, ["2027-01-15"])


async def test_a_dsn_over_the_limit_is_not_queued_with_its_record(store: AsyncEngine) -> None:
    async with store.begin() as c:
        await c.run_sync(store_messages, [Admission(new_message("m0", NOW), site_claim(2))])
    notices = (new_message("dsn1", NOW), new_message("dsn2", NOW))
    record = DeliveryRecord(
        "m0", (), (), NOW + 60, "deferred", NOW, notices=notices, notice_claims=(site_claim(2),) * 2
    )
    gone = DeliveryRecord("deleted", (), (), None, None, NOW, notices=(new_message("x", NOW),))
    async with store.begin() as c:
        [verdicts, none] = await c.run_sync(record_deliveries, [record, gone])

    assert [type(v) for v in verdicts] == [Granted, OverLimit]
    assert none == ()  # its message was deleted: nothing of the record was written
    assert await stored_ids(store) == ["dsn1", "m0"]
