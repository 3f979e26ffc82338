"""Housekeeping: retention in small batches, by one process of the cluster at a time.

Every node runs the loop every ``retention.interval_seconds``; only the one
holding the ``housekeeping`` lease works. Each batch is a transaction of
its own (``GroupWriter.write_apart``: off the event loop, between the hot
writes) that first renews the lease, so a process that lost it does nothing
more, and after each batch the loop pauses twice as long as the batch took:
the hot writes get at least two thirds of the store's time. A run:

1. content of final messages older than ``content_hours`` -> their header block,
2. final messages older than ``log_days``, with recipients and attempts,
3. audit log, statistics rollups, used form nonces, idempotency keys, AUTH
   failures, provider requests remembered against replays past their time,
4. SQLite: free pages beyond a tenth of the file given back (incremental vacuum),

then measures the store for the metrics (its size on every process, every
run; messages per status by the holder, every five minutes). The lease
lasts three intervals, so a dead holder's work passes to another process
within that; a stopping one releases it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection

from relay.config import RetentionConfig
from relay.core.model import MessageStatus
from relay.core.retention import FINAL, Cutoffs
from relay.metrics import Metrics
from relay.retention_database import (
    HOUSEKEEPING,
    content_frontier,
    delete_content,
    delete_expired,
    delete_finished,
    lease_of,
    messages_per_status,
    release_lease,
    store_size,
    take_lease,
    vacuum_pages,
)
from relay.store import GroupWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_ROWS = 200  # rows per transaction (measured: ~11 ms of the write lock on SQLite)
CONTENT_BATCH_ROWS = 100  # messages per transaction when content goes (up to 64 KB read each)
VACUUM_PAGES = 500  # pages given back per transaction
MIN_PAUSE = 0.005  # seconds between batches, at least
PAUSE_RATIO = 2.0  # a pause twice as long as the batch: the hot writes get two thirds of the time
# Content is looked for again from this long before where the last batch stopped: a node
# whose clock is a little behind may finish a message "earlier" than one already done.
FRONTIER_MARGIN = 60.0
# Messages per status are counted at most this often: the GROUP BY reads the whole status
# index (200,000 messages: 17-51 ms; a month at a million a day, seconds, in a thread).
COUNT_SECONDS = 300.0


class LeaseLost(Exception):
    """Another process holds the housekeeping lease: this one stops working."""


class Housekeeping:
    def __init__(
        self,
        writer: GroupWriter,
        retention: Callable[[], RetentionConfig],
        auth_window: float,
        metrics: Metrics,
        owner: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._retention = retention
        self._auth_window = auth_window
        self._metrics = metrics
        self._owner = owner
        self._clock = clock
        self._frontier: dict[MessageStatus, float] = {}  # while we hold the lease
        self.leading = False
        self._counted_at = -math.inf  # monotonic
        self._running = asyncio.Lock()  # one run at a time (the loop's, or a test's)
        # (start, end) on the monotonic clock and what was done, of the last runs that worked.
        self.runs: deque[tuple[float, float, dict[str, int]]] = deque(maxlen=100)

    @property
    def lease_seconds(self) -> float:
        return 3 * self._retention().interval_seconds

    async def run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._retention().interval_seconds)

    async def run_once(self) -> dict[str, int] | None:
        """One run: what it removed, or None when another process holds the lease."""
        async with self._running:
            return await self._run()

    async def _run(self) -> dict[str, int] | None:
        started = time.monotonic()
        counts: Counter[str] = Counter()
        try:
            await self._measure_size()
            if not await self._lease_free():
                self._lost()
                self._metrics.housekeeping_runs.labels("skipped").inc()
                return None
            await self._work(self._retention().policy.cutoffs(self._clock()), counts)
            await self._measure_statuses()
        except LeaseLost:
            self._lost()
            self._metrics.housekeeping_runs.labels("skipped").inc()
            return None
        except Exception as error:  # the next run tries again; the relay goes on
            self._frontier.clear()
            self._metrics.housekeeping_runs.labels("failed").inc()
            log.warning("housekeeping failed: %s", error)
            return None
        ended = time.monotonic()
        done = dict(counts)
        self.runs.append((started, ended, done))
        self._metrics.housekeeping_runs.labels("done").inc()
        level = logging.INFO if any(done.values()) else logging.DEBUG
        log.log(
            level,
            "housekeeping: %s in %.2f s",
            ", ".join(f"{kind} {count}" for kind, count in sorted(done.items())) or "nothing",
            ended - started,
        )
        return done

    async def stop(self) -> None:
        """Let another process take over at once (the lease would lapse anyway)."""
        if not self.leading:
            return
        self.leading = False
        try:
            await self._writer.write_apart(
                partial(release_lease, name=HOUSEKEEPING, owner=self._owner)
            )
        except Exception as error:  # it lapses after lease_seconds
            log.warning("housekeeping lease not released: %s", error)

    def _lost(self) -> None:
        if self.leading:
            log.info("housekeeping: another process holds the lease now")
            self._metrics.forget_message_counts()  # the holder's counts are the current ones
            self._counted_at = -math.inf
        self.leading = False
        self._frontier.clear()

    async def _lease_free(self) -> bool:
        """Whether the lease is ours or has lapsed (a read: no write for the others)."""
        lease = await self._writer.read_apart(partial(lease_of, name=HOUSEKEEPING))
        return lease is None or lease.owner == self._owner or lease.leased_until < self._clock()

    async def _work(self, cut: Cutoffs, counts: Counter[str]) -> None:
        for status in FINAL:
            await self._content(status, cut.content, counts)
        for status in FINAL:
            while True:
                gone = await self._batch(
                    partial(delete_finished, status=status, before=cut.log, limit=BATCH_ROWS)
                )
                self._count(counts, "messages", gone.messages)
                self._count(counts, "recipients", gone.recipients)
                self._count(counts, "attempts", gone.attempts)
                if gone.messages < BATCH_ROWS:
                    break
        now = self._clock()
        for kind, before in (
            ("audit_log", cut.audit),
            ("stats_minutes", float(cut.log)),
            ("stats_rollups", float(cut.stats_minute)),
            ("form_nonces", now),
            ("idempotency_keys", now),
            ("message_fingerprints", now),
            ("auth_failures", now - self._auth_window),
            ("suppressions", now),
            ("provider_replays", now),
            ("webhook_outbox", cut.log),
            ("webhook_attempts", cut.log),
        ):
            while True:
                count = await self._batch(
                    partial(delete_expired, kind=kind, before=before, limit=BATCH_ROWS)
                )
                self._count(counts, kind, count)
                if count < BATCH_ROWS:
                    break
        while await self._batch(partial(vacuum_pages, most=VACUUM_PAGES)) >= VACUUM_PAGES:
            pass

    async def _content(self, status: MessageStatus, before: float, counts: Counter[str]) -> None:
        since = self._frontier.get(status)
        if since is None:  # a new holder: where the previous one stopped
            since = await self._writer.read_apart(
                partial(content_frontier, status=status, before=before)
            )
        since = since - FRONTIER_MARGIN if since is not None else None
        while True:
            batch = await self._batch(
                partial(
                    delete_content,
                    status=status,
                    since=since,
                    before=before,
                    now=self._clock(),
                    limit=CONTENT_BATCH_ROWS,
                )
            )
            self._count(counts, "content", batch.count)
            if batch.last is not None:
                since = self._frontier[status] = batch.last
            if batch.count < CONTENT_BATCH_ROWS:
                return

    def _count(self, counts: Counter[str], kind: str, count: int) -> None:
        """As each batch commits: a run cut short still counts what it did."""
        counts[kind] += count
        self._metrics.retention_deleted.labels(kind).inc(count)

    async def _batch(self, job: Callable[[Connection], T]) -> T:
        """``job`` in a transaction that first renewed the lease; then a pause as long."""
        started = time.monotonic()
        seconds = self.lease_seconds

        def leased(connection: Connection) -> T | None:
            if not take_lease(connection, HOUSEKEEPING, self._owner, self._clock(), seconds):
                return None
            return job(connection)

        result = await self._writer.write_apart(leased)
        if result is None:
            raise LeaseLost
        if not self.leading:
            log.info("housekeeping: this process holds the lease")
            self.leading = True
        await asyncio.sleep(max(PAUSE_RATIO * (time.monotonic() - started), MIN_PAUSE))
        return result

    async def _measure_size(self) -> None:
        size = await self._writer.read_apart(store_size)
        self._metrics.store_size.set(size.size_bytes)
        self._metrics.store_free.set(size.free_bytes)

    async def _measure_statuses(self) -> None:
        if time.monotonic() - self._counted_at < COUNT_SECONDS:
            return
        self._counted_at = time.monotonic()
        counted = await self._writer.read_apart(messages_per_status)
        for status in MessageStatus:
            self._metrics.messages_by_status.labels(status.value).set(counted.get(status.value, 0))
