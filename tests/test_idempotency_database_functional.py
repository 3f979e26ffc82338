"""An Idempotency-Key's answer commits with its message, in one transaction, or neither does.

Before, the answer was written in a transaction of its own after the message's:
a crash between the two left a stored message under a claim without answer, and
the client's retry, once the claim counted as abandoned, sent it a second time.
On a real SQLite file and on PostgreSQL (a throwaway database at 127.0.0.1:5432,
skipped with the reason when there is none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import idempotency_database
from relay.core import idempotency
from relay.core.quota import Claim, OverLimit, Scope, Window
from relay.idempotency_database import Answer
from relay.queue_database import Admission, admit_messages
from relay.store import create_engine, migrate
from relay.tables import messages
from tests.test_shared_limits_functional import store_url  # noqa: F401 (a fixture)
from tests.test_store_postgres_functional import new_message

NOW = 1_800_000_000.0
BODY_HASH = "ab" * 32


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[AsyncEngine]:  # noqa: F811 (the fixture)
    engine = create_engine(store_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def answer(key: str, message_id: str) -> Answer:
    return Answer("shop", key, message_id, idempotency.stored_answer(202, {"id": message_id}))


async def claim(store: AsyncEngine, key: str) -> object:
    """What a request under ``key`` (same body) gets now: None when it takes the key."""
    async with store.begin() as c:
        held = await c.run_sync(
            idempotency_database.claim, site_id="shop", key=key, body_hash=BODY_HASH, now=NOW
        )
    return None if held is None else idempotency.repeat(BODY_HASH, *held)


async def stored(store: AsyncEngine, message_id: str) -> bool:
    async with store.connect() as c:
        found = await c.scalar(sa.select(sa.func.count()).where(messages.c.id == message_id))
    return found == 1


async def test_the_answer_commits_with_its_message(store: AsyncEngine) -> None:
    assert await claim(store, "k-1") is None
    async with store.begin() as c:
        await c.run_sync(
            admit_messages, [Admission(new_message("m1", NOW), None, answer("k-1", "m1"))]
        )

    assert await stored(store, "m1")
    assert await claim(store, "k-1") == idempotency.Replay(202, {"id": "m1"})


async def test_a_transaction_that_fails_keeps_neither(store: AsyncEngine) -> None:
    """A crash before the commit: no message, and the key still only claimed (409, then
    free once abandoned), so the retry sends the message once."""
    assert await claim(store, "k-2") is None
    with pytest.raises(RuntimeError):
        async with store.begin() as c:
            admission = Admission(new_message("m2", NOW), None, answer("k-2", "m2"))
            await c.run_sync(admit_messages, [admission])
            raise RuntimeError("the process died before the commit")

    assert not await stored(store, "m2")
    assert await claim(store, "k-2") == idempotency.InProgress()


async def test_a_message_refused_by_its_limit_records_no_answer(store: AsyncEngine) -> None:
    limit = Claim(Scope.SITE, "shop", {Window.DAY: 1}, 1, NOW, ZoneInfo("UTC"))
    assert await claim(store, "k-3") is None
    async with store.begin() as c:
        admitted = await c.run_sync(
            admit_messages,
            [
                Admission(new_message("m3", NOW), limit),
                Admission(new_message("m4", NOW), limit, answer("k-3", "m4")),
            ],
        )

    assert isinstance(admitted[1].verdict, OverLimit)
    assert await stored(store, "m3") and not await stored(store, "m4")
    assert await claim(store, "k-3") == idempotency.InProgress()  # released by the controller
