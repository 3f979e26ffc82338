"""The measured performance in the store: batches from several writers all count (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.performance import Sample, batches
from relay.performance_database import load_performance, record_performance
from relay.store import create_engine, migrate
from tests.postgres import throwaway_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
        made = create_engine(url)
        await migrate(made)
        yield made
        await made.dispose()
        return
    async with throwaway_database() as url:
        made = create_engine(url)
        await migrate(made)
        yield made
        await made.dispose()


async def test_batches_add_up_like_one_window(engine: AsyncEngine) -> None:
    first = [Sample("a", True, 0.2), Sample("b", False, 3.0), Sample("a", True, 0.4)]
    second = [Sample("a", False, 1.0), Sample("a", True, 0.2)]
    for samples, now in ((first, 10.0), (second, 20.0)):
        async with engine.begin() as connection:
            await connection.run_sync(record_performance, batches(samples), now)
    async with engine.connect() as connection:
        found = await load_performance(connection)

    expected = None
    for batch in batches(first):
        if batch.upstream == "a":
            expected = batch.apply(None, 10.0)
    (later,) = batches(second)
    expected = later.apply(expected, 20.0)
    assert found["a"].success_rate == pytest.approx(expected.success_rate)
    assert found["a"].latency_seconds == pytest.approx(expected.latency_seconds)
    assert (found["a"].samples, found["a"].updated_at) == (4, 20.0)
    assert (found["b"].success_rate, found["b"].latency_seconds) == (0.0, pytest.approx(3.0))
