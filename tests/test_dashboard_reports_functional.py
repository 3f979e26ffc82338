"""The dashboard's two queries on the real stores (SQLite and PostgreSQL): messages per hour
by status (from the statistics counters, rebuilt here from the rows), and one message's
content with retention's mark."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.model import MessageStatus
from relay.message_log_database import hourly_counts, message_content, upstream_hourly_counts
from relay.rollup_database import rebuild_rollups_async
from relay.store import create_engine, migrate
from relay.tables import attempts, messages
from tests.postgres import throwaway_database

HOUR = 3600.0
START = 1_800_000_000 - 1_800_000_000 % 3600  # an hour's start


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


def row(
    number: int, status: MessageStatus, created_at: float, **extra: object
) -> dict[str, object]:
    return {
        "id": f"m{number:031d}",
        "site_id": "shop",
        "client_ip": "127.0.0.1",
        "original_sender": "a@shop.example.com",
        "envelope_sender": "sales@example.com",
        "size": 10,
        "content": b"Subject: x\r\n\r\nbody\r\n",
        "original_headers": b"Subject: x\r\n",
        "status": status.value,
        "created_at": created_at,
        "updated_at": created_at,
        "next_attempt_at": created_at,
        **extra,
    }


async def test_hourly_counts_by_status_with_exact_hour_boundaries(engine: AsyncEngine) -> None:
    rows = [
        row(1, MessageStatus.SENT, START),  # the first instant of hour 0
        row(2, MessageStatus.FAILED, START + HOUR - 0.001),  # the last of hour 0
        row(3, MessageStatus.PARTIAL, START + HOUR),  # hour 1
        row(4, MessageStatus.DEFERRED, START + HOUR + 5),
        row(5, MessageStatus.HELD, START + 2 * HOUR + 1),
        row(6, MessageStatus.SENT, START - 1),  # before the window
        row(7, MessageStatus.SENT, START + 3 * HOUR),  # after it
    ]
    async with engine.begin() as connection:
        await connection.execute(messages.insert(), rows)
        await rebuild_rollups_async(connection)
    async with engine.connect() as connection:
        hours = await hourly_counts(connection, START, 3)
        half = await hourly_counts(connection, START + 1800, 2)  # from the minute counters
    assert [(h.start, h.sent, h.failed, h.waiting) for h in hours] == [
        (START, 1, 1, 0),
        (START + HOUR, 0, 1, 1),
        (START + 2 * HOUR, 0, 0, 1),
    ]
    assert [h.accepted for h in hours] == [2, 2, 1]
    assert [(h.start, h.sent, h.failed, h.waiting) for h in half] == [
        (START + 1800, 0, 2, 1),
        (START + 1800 + HOUR, 0, 0, 1),
    ]
    async with engine.begin() as connection:
        other = row(8, MessageStatus.SENT, START + 10, site_id="blog")
        await connection.execute(messages.insert(), other)
        await rebuild_rollups_async(connection)
    async with engine.connect() as connection:
        blog = await hourly_counts(connection, START, 3, site="blog")
        shop = await hourly_counts(connection, START, 3, site="shop")
    assert [h.accepted for h in blog] == [1, 0, 0]
    assert [h.accepted for h in shop] == [2, 2, 1]


def attempt(upstream: str, started_at: float, outcome: str, recipients: int) -> dict[str, object]:
    return {
        "message_id": f"m{1:031d}",
        "upstream": upstream,
        "started_at": started_at,
        "duration": 0.2,
        "outcome": outcome,
        "recipients": [f"r{i}@example.org" for i in range(recipients)],
    }


async def test_upstream_hourly_counts_recipients_by_outcome(engine: AsyncEngine) -> None:
    """Recipients per hour per upstream by outcome, from the counters the attempts added."""
    tries = [
        attempt("alpha", START, "sent", 3),  # hour 0, first instant
        attempt("alpha", START + HOUR - 0.001, "failed", 1),  # hour 0, last instant
        attempt("alpha", START + HOUR, "retry", 2),  # hour 1: retry and defer are deferred
        attempt("alpha", START + HOUR + 60, "defer", 1),
        attempt("beta", START + 2 * HOUR + 5, "sent", 1),
        attempt("alpha", START - 1, "sent", 7),  # before the window
        attempt("beta", START + 3 * HOUR, "sent", 7),  # after it
    ]
    async with engine.begin() as connection:
        await connection.execute(messages.insert(), row(1, MessageStatus.SENT, START))
        await connection.execute(attempts.insert(), tries)
        await rebuild_rollups_async(connection)
    async with engine.connect() as connection:
        hours = await upstream_hourly_counts(connection, START, 3)
        half = await upstream_hourly_counts(connection, START + 1800, 2)  # minute counters
        nothing = await upstream_hourly_counts(connection, START + 10 * HOUR, 3)

    def cells(found: dict[str, list]) -> dict[str, list[tuple[float, int, int, int, int]]]:
        return {
            name: [(h.start, h.sent, h.failed, h.deferred, h.attempts) for h in hs]
            for name, hs in found.items()
        }

    assert cells(hours) == {
        "alpha": [(START, 3, 1, 0, 2), (START + HOUR, 0, 0, 3, 2), (START + 2 * HOUR, 0, 0, 0, 0)],
        "beta": [(START, 0, 0, 0, 0), (START + HOUR, 0, 0, 0, 0), (START + 2 * HOUR, 1, 0, 0, 1)],
    }
    assert cells(half) == {
        "alpha": [(START + 1800, 0, 1, 3, 3), (START + 1800 + HOUR, 0, 0, 0, 0)],
        "beta": [(START + 1800, 0, 0, 0, 0), (START + 1800 + HOUR, 1, 0, 0, 1)],
    }
    assert nothing == {}


async def test_message_content_and_retentions_mark(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(messages.insert(), row(1, MessageStatus.SENT, START))
        deleted_body = row(
            2,
            MessageStatus.SENT,
            START,
            content=b"Subject: x\r\n\r\n",
            content_deleted_at=START + 10,
        )
        await connection.execute(messages.insert(), deleted_body)
    async with engine.connect() as connection:
        kept = await message_content(connection, f"m{1:031d}")
        deleted = await message_content(connection, f"m{2:031d}")
        missing = await message_content(connection, "nope")
    assert kept is not None and kept.content.endswith(b"body\r\n") and kept.deleted_at is None
    assert deleted is not None and deleted.deleted_at == START + 10
    assert missing is None
