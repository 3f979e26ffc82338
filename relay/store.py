"""The database engine, migrations, and group commit.

Every write goes through one ``GroupWriter``: jobs from concurrent sessions
and delivery workers that arrive while a transaction commits are run
together in the next one, so durability costs one fsync per batch, not per
message. SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on
disk (WAL fsynced) before the job's caller is answered.

The hot jobs (store a message, record a delivery, claim due mail) are
synchronous functions of a ``Connection``. On SQLite the writer runs a
batch's sync jobs on a plain pysqlite connection to the same file: the
write lock is taken (BEGIN IMMEDIATE) on the event loop when it is free and
in the writer's thread when it must be waited for, the commit's fsync is
done in that thread, where waiting costs nothing, and the statements run on
the event loop, which takes well under a millisecond and no hand-off between
threads per statement. Through aiosqlite every statement was a round trip
between its thread and a busy loop (a batch of 40 jobs took 24 ms); with
every statement in a thread, each one waited for the loop to let go of the
GIL. On PostgreSQL the jobs run through ``AsyncConnection.run_sync``.

The statistics counters the jobs of a batch add to are merged and written
once, just before the commit (``rollup_database.collecting``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from relay.rollup_database import begin_collecting, collecting, end_collecting

log = logging.getLogger(__name__)
T = TypeVar("T")
Item = TypeVar("Item")
WriteJob = Callable[[AsyncConnection], Awaitable[T]]
SyncJob = Callable[[Connection], T]
# An ItemsJob returns None, or one result per item (in order): each item's caller gets its own.
ItemsJob = Callable[[Connection, list[Item]], Sequence[Any] | None]


class _Sync(Generic[T]):
    """A SyncJob in the queue, where a WriteJob would stand."""

    __slots__ = ("job",)

    def __init__(self, job: SyncJob[T]) -> None:
        self.job = job


class _Item(Generic[Item]):
    """One item for an ItemsJob: the items of one job in a batch go to it in one call."""

    __slots__ = ("item", "job")

    def __init__(self, job: ItemsJob[Item], item: Item) -> None:
        self.job, self.item = job, item


Job = WriteJob[Any] | _Sync[Any] | _Item[Any]
Pending = tuple[Job, "asyncio.Future[Any]"]


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _ensure_sqlite_dir(url: str) -> None:
    path = _sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def restrict_sqlite_files(url: str) -> None:
    """The database file and its -wal, -shm, -journal: 0600, whatever the umask made them.

    SQLite gives the files it creates later the database file's mode.
    """
    path = _sqlite_path(url) if url.startswith("sqlite") else ""
    if not path:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            continue


def _sqlite_path(url: str) -> str:
    """The database file of a SQLite URL; empty for an in-memory database."""
    path = url.split("///", 1)[1] if "///" in url else ""
    return "" if path in ("", ":memory:") else path


def _sync_twin(engine: AsyncEngine) -> Engine | None:
    """A plain pysqlite engine on the same SQLite file, for the writer; else None.

    Its connections are used from the loop and the writer's thread, one at a time.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or not _sqlite_path(str(url)):
        return None
    arguments = {"timeout": 30, "check_same_thread": False}
    twin = sa.create_engine(url.set(drivername="sqlite+pysqlite"), connect_args=arguments)
    event.listen(twin, "connect", _sqlite_pragmas)
    return twin


_BUSY_TIMEOUT_MS = 30_000  # SQLite waits this long for another connection's write lock


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Takes effect only on a new, empty file (before WAL and the first table): freed pages
    # can then be given back with PRAGMA incremental_vacuum. An existing store keeps its
    # mode until a VACUUM (README "Retention and disk"); both reuse freed pages. Only set
    # on an empty file: on a store in use it waits for the write lock (on the event loop).
    cursor.execute("PRAGMA page_count")
    if cursor.fetchone()[0] == 0:
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cursor.close()


_MIGRATION_LOCK = 0x4D494752  # "MIGR": PostgreSQL's advisory lock while one node migrates


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (run by `relay serve` at start).

    Nodes that start together take turns: the first migrates, the others then
    find the schema at the newest revision (PostgreSQL: an advisory lock held
    by the migration's transaction; SQLite: a lock file beside the database).
    """
    path = _sqlite_path(str(engine.url)) if engine.dialect.name == "sqlite" else ""
    if not path:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
        return
    lock = await asyncio.to_thread(_lock_file, Path(path + ".migrate.lock"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    finally:
        lock.close()


def _lock_file(path: Path) -> Any:
    """``path`` opened and locked (flock, exclusive): closing it lets the next one in."""
    file = open(path, "a")  # noqa: SIM115 -- closed by the caller after the migration
    fcntl.flock(file, fcntl.LOCK_EX)
    return file


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def upsert(
    connection: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert rows, or overwrite the other columns where the key exists (SQLite and PostgreSQL)."""
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)


class GroupWriter:
    """Runs write jobs in shared transactions, one commit per batch."""

    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self._max_batch = max_batch
        self._sync_engine = _sync_twin(engine)
        path = _sqlite_path(str(engine.url)) if self._sync_engine is not None else ""
        self._write_lock = WriteLock(Path(path + ".write.lock")) if path else None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")  # SQLite's
        # Background work (housekeeping) in transactions of its own, one at a time.
        self._apart_lock = WriteLock(Path(path + ".write.lock")) if path else None
        self._apart_thread = ThreadPoolExecutor(1, thread_name_prefix="store-apart")
        self._reader: Connection | None = None  # read_now's, on SQLite
        self._pending: list[Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # commits done, for metrics and tests
        self.jobs = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-writer")

    async def write(self, job: WriteJob[T]) -> T:
        """Run an async job in the next transaction; its result once committed."""
        result: T = await self._enqueue(job)
        return result

    async def write_sync(self, job: SyncJob[T]) -> T:
        """Like write(), for a synchronous job (the hot paths): no hand-off per statement."""
        result: T = await self._enqueue(_Sync(job))
        return result

    async def write_alone(self, job: SyncJob[T]) -> T:
        """Like write_sync(), in a transaction of its own where writers run side by side.

        For a short job that takes a lock other nodes wait for (PostgreSQL's
        advisory locks): in a batch it would be held through every other job's
        statements and could wait, in turn, on their row locks. SQLite has one
        writer at a time anyway: there the job joins the next batch.
        """
        if self.engine.dialect.name == "sqlite":
            return await self.write_sync(job)
        async with self.engine.begin() as connection:
            return await connection.run_sync(job)

    async def write_apart(self, job: SyncJob[T]) -> T:
        """Run a background job (housekeeping) in a transaction of its own, beside the batches.

        On SQLite the job runs in a thread of its own on its own connection,
        between other writers' transactions (it takes the write lock file as
        they do): its statements and commit never hold up the event loop,
        and the hot writes wait at most for this one short transaction. On
        PostgreSQL it runs on a connection of its own, as ``write_alone``.
        """
        if self._sync_engine is None:
            async with self.engine.begin() as connection:
                return await connection.run_sync(job)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._apart_thread, self._apart, job, True)

    async def read_apart(self, job: SyncJob[T]) -> T:
        """Like write_apart() for a read: no write lock (SQLite's readers never wait in WAL)."""
        if self._sync_engine is None:
            async with self.engine.connect() as connection:
                return await connection.run_sync(job)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._apart_thread, self._apart, job, False)

    async def read_now(self, job: SyncJob[T]) -> T:
        """A short read for the hot path (one indexed lookup). On SQLite it runs on the plain
        pysqlite twin on the event loop: readers never wait for writers in WAL, and a
        lookup takes tens of microseconds, where a hand-off to a thread and back cost a
        fifth of a message's CPU. On PostgreSQL, a pooled connection."""
        if self._sync_engine is None:
            async with self.engine.connect() as connection:
                return await connection.run_sync(job)
        return self._read(job)

    def _read(self, job: SyncJob[T]) -> T:
        """On the hot path's own connection, kept open (a pool checkout and return per
        lookup cost as much as the lookup)."""
        assert self._sync_engine is not None
        if self._reader is None:
            self._reader = self._sync_engine.connect()
        try:
            return job(self._reader)
        except BaseException:
            self._reader.close()  # a broken connection is not used again
            self._reader = None
            raise
        finally:
            if self._reader is not None:
                self._reader.rollback()  # no read transaction held between lookups

    def _apart(self, job: SyncJob[T], write: bool) -> T:
        assert self._sync_engine is not None and self._apart_lock is not None
        with self._sync_engine.connect() as connection:
            if not write:
                try:
                    return job(connection)
                finally:
                    connection.rollback()
            self._apart_lock.begin(connection)
            try:
                result = job(connection)
            except BaseException:
                self._apart_lock.end(connection.rollback)
                raise
            self._apart_lock.end(connection.commit)
            return result

    async def write_item(self, job: ItemsJob[Item], item: Item) -> Any:
        """Like write_sync(), but the items of one ``job`` in a batch go to it in one call.

        For the hot paths (store a message, record a delivery): one statement
        per batch instead of one per message. Returns the item's result, if
        the job gives results.
        """
        return await self._enqueue(_Item(job, item))

    async def _enqueue(self, job: Job) -> Any:
        if self._task is None or self._task.done() or self._closing:
            raise RuntimeError("the store writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()
        self._thread.shutdown()
        self._apart_thread.shutdown()  # after any job in it: its lock is closed there
        if self._apart_lock is not None:
            self._apart_lock.close()

    async def _run(self) -> None:
        while not self._closing or self._pending:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        """The sync jobs in one transaction, the async ones in another."""
        sync = [p for p in batch if isinstance(p[0], _Sync | _Item)]
        others = [p for p in batch if not isinstance(p[0], _Sync | _Item)]
        if sync:
            await self._commit_part(sync, self._run_sync)
        if others:
            await self._commit_part(others, self._run_async)

    async def _commit_part(
        self, part: list[Pending], run: Callable[[list[Any]], Awaitable[list[Any]]]
    ) -> None:
        try:
            results = await run([job for job, _ in part])
        except Exception as error:
            if len(part) == 1:
                if not part[0][1].done():
                    part[0][1].set_exception(error)
                return
            log.warning("a batch of %d writes failed (%s); retrying one by one", len(part), error)
            for pending in part:  # isolate the failing job, commit the others
                await self._commit_part([pending], run)
            return
        self.batches += 1
        self.jobs += len(part)
        for (_, future), result in zip(part, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _run_async(self, jobs: list[WriteJob[Any]]) -> list[Any]:
        async with self.engine.begin() as connection:
            await connection.run_sync(begin_collecting)
            try:
                results = [await job(connection) for job in jobs]
            except BaseException:
                await connection.run_sync(end_collecting, False)
                raise
            await connection.run_sync(end_collecting)
            return results

    async def _run_sync(self, jobs: list[_Sync[Any] | _Item[Any]]) -> list[Any]:
        """The sync jobs in one transaction (see the module's docstring for SQLite's)."""
        if self._sync_engine is None:
            async with self.engine.begin() as connection:
                return await connection.run_sync(_run_jobs, jobs)
        loop = asyncio.get_running_loop()
        lock = self._write_lock
        assert lock is not None
        with self._sync_engine.connect() as connection:
            # Waiting for another process's write lock must not stall the loop: a free one is
            # taken here, a held one waited for in the writer's thread.
            if not lock.begin_at_once(connection):
                await loop.run_in_executor(self._thread, lock.begin, connection)
            try:
                results = _run_jobs(connection, jobs)
            except BaseException:
                await loop.run_in_executor(self._thread, lock.end, connection.rollback)
                raise
            await loop.run_in_executor(self._thread, lock.end, connection.commit)  # the fsync
            return results


class WriteLock:
    """An exclusive flock on a file beside the SQLite database, held by a writer's transaction.

    Processes sharing the file (workers) take turns here before BEGIN IMMEDIATE:
    a waiter wakes the moment the holder lets go, where SQLite's busy handler
    polls with sleeps of up to 100 ms (two workers' accept p99 went to
    100-470 ms). The kernel releases it if its holder dies. Used by one writer, one
    batch at a time: taken on the event loop when free, else in the writer's thread.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: Any = None

    def begin(self, connection: Connection) -> None:
        fcntl.flock(self._opened(), fcntl.LOCK_EX)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            raise

    def begin_at_once(self, connection: Connection) -> bool:
        """begin() if neither this lock nor SQLite's is held (one process: always); else False,
        having waited for nothing. Saves the hand-off to a thread, and the one back, per batch.
        """
        try:
            fcntl.flock(self._opened(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # A writer that does not take this lock (another tool on the file) may hold SQLite's:
        # no busy wait on the event loop, then. (The pragmas straight to the driver: through
        # SQLAlchemy they cost as much as the hand-off they save.)
        driver = connection.connection.dbapi_connection
        assert driver is not None
        try:
            driver.execute("PRAGMA busy_timeout=0")
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            finally:
                driver.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        except sa.exc.OperationalError:  # SQLITE_BUSY: wait in the thread
            fcntl.flock(self._file, fcntl.LOCK_UN)
            return False
        except BaseException:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            raise
        return True

    def _opened(self) -> Any:
        if self._file is None:
            self._file = open(self._path, "a")  # noqa: SIM115 -- kept open: one lock per writer
        return self._file

    def end(self, finish: Callable[[], None]) -> None:
        """Commit or roll back (``finish``), then let the next writer in."""
        try:
            finish()
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _run_jobs(connection: Connection, jobs: list[_Sync[Any] | _Item[Any]]) -> list[Any]:
    """Each ItemsJob once with its items, then each SyncJob; results in ``jobs`` order.

    The statistics counters the jobs add to are written once, at the end (``collecting``).
    """
    with collecting(connection):
        return _run_each(connection, jobs)


def _run_each(connection: Connection, jobs: list[_Sync[Any] | _Item[Any]]) -> list[Any]:
    items: dict[ItemsJob[Any], list[Any]] = {}
    for job in jobs:
        if isinstance(job, _Item):
            items.setdefault(job.job, []).append(job.item)
    answers = {}
    for items_job, grouped in items.items():
        results = items_job(connection, grouped)
        answers[items_job] = iter(results if results is not None else [None] * len(grouped))
    return [
        job.job(connection) if isinstance(job, _Sync) else next(answers[job.job]) for job in jobs
    ]
