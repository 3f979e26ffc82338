"""The GroupWriter on a real SQLite file: sync jobs in its thread, async ones beside them.

Jobs queued together commit together; a failing job fails alone and the
others of its batch are committed exactly once; the writer's own
connection keeps the durability pragmas (WAL, synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import GroupWriter, create_engine

KEYS = sa.table("keys", sa.column("k", sa.String))


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[GroupWriter]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/w.db")
    async with engine.begin() as c:
        await c.execute(sa.text("CREATE TABLE keys (k TEXT PRIMARY KEY)"))
    w = GroupWriter(engine)
    w.start()
    yield w
    await w.close()
    await engine.dispose()


async def stored(w: GroupWriter) -> list[str]:
    async with w.engine.connect() as c:
        return sorted((await c.execute(sa.select(KEYS.c.k))).scalars())


async def test_the_writers_connection_is_durable(writer: GroupWriter) -> None:
    def pragmas(c: Connection) -> tuple[str, int]:
        mode = c.execute(sa.text("PRAGMA journal_mode")).scalar()
        level = c.execute(sa.text("PRAGMA synchronous")).scalar()
        return str(mode), int(level or 0)

    assert await writer.write_sync(pragmas) == ("wal", 2)  # 2 = FULL


async def test_items_sync_and_async_jobs_of_one_batch(writer: GroupWriter) -> None:
    calls: list[list[str]] = []

    def insert(c: Connection, keys: list[str]) -> None:
        calls.append(keys)
        c.execute(KEYS.insert(), [{"k": k} for k in keys])

    async def insert_async(c: AsyncConnection) -> str:
        await c.execute(KEYS.insert().values(k="async"))
        return "async done"

    results = await asyncio.gather(
        *(writer.write_item(insert, f"item{n}") for n in range(5)),
        writer.write_sync(lambda c: c.execute(KEYS.insert().values(k="sync")).rowcount),
        writer.write(insert_async),
    )
    assert results == [None] * 5 + [1, "async done"]
    assert calls == [[f"item{n}" for n in range(5)]]  # the items in one call
    assert await stored(writer) == ["async", "item0", "item1", "item2", "item3", "item4", "sync"]


async def test_an_items_job_answers_each_item_in_order(writer: GroupWriter) -> None:
    calls: list[list[str]] = []

    def insert_new(c: Connection, keys: list[str]) -> list[bool]:
        """Inserts the keys not stored yet; per key, whether it was new (decided in order)."""
        calls.append(keys)
        seen = set(c.execute(sa.select(KEYS.c.k)).scalars())
        answers = []
        for k in keys:
            answers.append(k not in seen)
            seen.add(k)
        c.execute(KEYS.insert(), [{"k": k} for k, new in zip(keys, answers, strict=True) if new])
        return answers

    await writer.write_item(insert_new, "a")
    results = await asyncio.gather(*(writer.write_item(insert_new, k) for k in "abcb"))

    assert results == [False, True, True, False]
    assert calls[1:] == [list("abcb")]  # one call for the four concurrent items
    assert await stored(writer) == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_job_fails_alone(writer: GroupWriter, kind: str) -> None:
    await writer.write_sync(lambda c: c.execute(KEYS.insert().values(k="taken")))

    def insert(c: Connection, keys: list[str]) -> None:
        c.execute(KEYS.insert(), [{"k": k} for k in keys])

    async def clash_async(c: AsyncConnection) -> None:
        await c.execute(KEYS.insert().values(k="taken"))

    def clash_sync(c: Connection) -> None:
        c.execute(KEYS.insert().values(k="taken"))

    clash = writer.write(clash_async) if kind == "async" else writer.write_sync(clash_sync)
    results = await asyncio.gather(
        writer.write_item(insert, "a"),
        clash,
        writer.write_item(insert, "b"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert await stored(writer) == ["a", "b", "taken"]  # each exactly once


async def test_a_held_write_lock_is_waited_for_off_the_loop(
    writer: GroupWriter, tmp_path: Path
) -> None:
    """A free lock is taken on the event loop; a held one (SQLite's, by a connection that
    does not take the writer's lock; or the writer's lock, by another process's writer) is
    waited for in the writer's thread, while the loop goes on."""

    def insert(c: Connection) -> None:
        c.execute(KEYS.insert().values(k="after"))

    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO keys VALUES ('other')")
    job = asyncio.ensure_future(writer.write_sync(insert))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(0.2)
    assert loop.time() - started < 5  # not stuck in SQLite's busy wait (30 s) on the loop
    assert not job.done()
    other.execute("COMMIT")
    await asyncio.wait_for(job, 10)
    assert await stored(writer) == ["after", "other"]

    lock = open(f"{tmp_path}/w.db.write.lock", "a")  # noqa: SIM115, ASYNC230 -- a second writer's
    fcntl.flock(lock, fcntl.LOCK_EX)
    job = asyncio.ensure_future(writer.write_sync(lambda c: c.execute(KEYS.insert().values(k="x"))))
    await asyncio.sleep(0.2)
    assert not job.done()
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    await asyncio.wait_for(job, 10)
    assert await stored(writer) == ["after", "other", "x"]
    other.close()
