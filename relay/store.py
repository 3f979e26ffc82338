"""The database engine, migrations, and group commit.

Every write goes through one ``GroupWriter``: jobs from concurrent sessions
and delivery workers that arrive while a transaction commits are run
together in the next one, so durability costs one fsync per batch, not per
message. SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on
disk (WAL fsynced) before the job's caller is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)
T = TypeVar("T")
Item = TypeVar("Item")
WriteJob = Callable[[AsyncConnection], Awaitable[T]]
ItemsJob = Callable[[AsyncConnection, list[Item]], Awaitable[None]]


class _Item(Generic[Item]):
    """One item for an ItemsJob; stands in the queue where a WriteJob would."""

    __slots__ = ("item", "job")

    def __init__(self, job: ItemsJob[Item], item: Item) -> None:
        self.job, self.item = job, item

    async def __call__(self, connection: AsyncConnection) -> None:
        await self.job(connection, [self.item])


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (run by `relay serve` at start)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upsert(
    connection: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert rows, or overwrite the other columns where the key exists (SQLite and PostgreSQL)."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    await connection.execute(
        statement.on_conflict_do_update(index_elements=keys, set_=updates), rows
    )


class GroupWriter:
    """Runs write jobs in shared transactions, one commit per batch."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self._max_batch = max_batch
        self._pending: list[tuple[WriteJob[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # commits done, for metrics and tests
        self.jobs = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-writer")

    async def write(self, job: WriteJob[T]) -> T:
        if self._task is None or self._task.done() or self._closing:
            raise RuntimeError("the store writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._wake.set()
        return await future

    async def write_item(self, job: ItemsJob[Item], item: Item) -> None:
        """Like write(), but the items of one ``job`` in a batch go to it in one call.

        For the hot paths (store a message, record a delivery): one statement
        per batch instead of one per message.
        """
        await self.write(_Item(job, item))

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None

    async def _run(self) -> None:
        while not self._closing or self._pending:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[WriteJob[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self.engine.begin() as connection:
                items: dict[ItemsJob[Any], list[Any]] = {}
                for job, _ in batch:
                    if isinstance(job, _Item):
                        items.setdefault(job.job, []).append(job.item)
                for items_job, grouped in items.items():
                    await items_job(connection, grouped)
                results = [
                    None if isinstance(job, _Item) else await job(connection) for job, _ in batch
                ]
        except Exception as error:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(error)
                return
            log.warning("a batch of %d writes failed (%s); retrying one by one", len(batch), error)
            for item in batch:  # isolate the failing job, commit the others
                await self._commit([item])
            return
        self.batches += 1
        self.jobs += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
