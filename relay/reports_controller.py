"""What the admin API reads about mail: the message log, one message in full, statistics.

Read-only; each call uses its own connection. Quota use is read from the
store's counters in the same connection as the statistics, so it is exact
for every process and node that shares the store, not this process's cache.
Statistics come from the per-minute counters (``rollup_database``), so
their window is whole minutes: ``Stats.since`` and ``until`` say which.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.core.directory import Directory
from relay.core.header_diff import HeaderChange, header_diff
from relay.core.quota import Key, Scope, Window, limits_of, period
from relay.core.retention import RetentionPolicy
from relay.message_log_database import (
    HourCount,
    MessageContent,
    MessageHeaders,
    MessageQuery,
    SearchPage,
    SiteStats,
    UpstreamHour,
    UpstreamStats,
    hourly_counts,
    message_content,
    message_headers,
    search_messages,
    upstream_hourly_counts,
)
from relay.queue_database import MessageDetail, QueueStats, load_message, queue_stats
from relay.rollup_database import rollup_stats
from relay.store import GroupWriter
from relay.usage_controller import UsageController
from relay.usage_database import load_usage

_DIFF_ON_LOOP_BYTES = 65_536  # of header blocks: a diff of a few ms at most


@dataclass(frozen=True)
class QuotaUse:
    window: Window
    used: int
    limit: int


@dataclass(frozen=True)
class FullMessage:
    detail: MessageDetail
    headers: MessageHeaders
    changes: list[HeaderChange]  # what the rewrite and signing changed


@dataclass(frozen=True)
class Stats:
    since: float  # the window counted: the first whole minute ...
    until: float  # ... and the end of the last one (the minute holding ``until``), or now
    sites: list[tuple[SiteStats, list[QuotaUse]]]
    upstreams: list[tuple[UpstreamStats, list[QuotaUse]]]
    queue: QueueStats


class ReportsController:
    def __init__(
        self,
        writer: GroupWriter,
        usage: UsageController,
        directory: Callable[[], Directory],
        retention: Callable[[], RetentionPolicy] = RetentionPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = writer.engine
        self._usage = usage
        self._directory = directory
        self._retention = retention
        self._clock = clock

    async def search(self, query: MessageQuery) -> SearchPage:
        async with self._engine.connect() as connection:
            return await search_messages(connection, query)

    async def message(self, message_id: str) -> FullMessage | None:
        async with self._engine.connect() as connection:
            detail = await load_message(connection, message_id)
            headers = await message_headers(connection, message_id)
        if detail is None or headers is None:
            return None
        if len(headers.original) + len(headers.sent) <= _DIFF_ON_LOOP_BYTES:
            return FullMessage(detail, headers, header_diff(headers.original, headers.sent))
        # Linear, but 0.2 s for two blocks of 1 MB (stored before max_header_bytes, or
        # under a bigger one): not on the loop that answers SMTP.
        changes = await asyncio.to_thread(header_diff, headers.original, headers.sent)
        return FullMessage(detail, headers, changes)

    async def stats(
        self, since: float, until: float | None = None, upstream: str | None = None
    ) -> Stats:
        """Every site and upstream of the directory, with zeros where nothing happened.

        With ``upstream``, that upstream alone (and no site).
        """
        directory = self._directory()
        now = self._clock()
        zone = self._usage.book.zone
        async with self._engine.connect() as connection:
            # No until: everything up to now, the current minute included.
            start, end, sites, upstreams = await rollup_stats(
                connection,
                since,
                now + 1 if until is None else until,
                upstream,
                minutes_from=self._retention().cutoffs(now).log,
            )
            queue = await queue_stats(connection)
            used = dict(await load_usage(connection, {period(w, now, zone) for w in Window}))
        by_site = {s.site_id: s for s in sites}
        by_upstream = {u.upstream: u for u in upstreams}
        for site in directory.sites if upstream is None else ():
            by_site.setdefault(site.id, SiteStats(site.id, 0, 0, 0, 0, 0, 0, 0, None))
        names = [u.name for u in directory.upstreams] if upstream is None else [upstream]
        for name in names:
            by_upstream.setdefault(name, UpstreamStats(name, 0, 0, 0, 0, None, None, None))
        return Stats(
            float(start),
            float(end) if until is not None else now,
            [
                (s, self._quota(used, Scope.SITE, s.site_id, now))
                for _, s in sorted(by_site.items())
            ],
            [
                (u, self._quota(used, Scope.UPSTREAM, u.upstream, now))
                for _, u in sorted(by_upstream.items())
            ],
            queue,
        )

    async def content(self, message_id: str) -> MessageContent | None:
        """The message as it went out (the dashboard's preview and .eml download)."""
        async with self._engine.connect() as connection:
            return await message_content(connection, message_id)

    async def hourly(self, since: float, hours: int, site: str | None = None) -> list[HourCount]:
        """Messages created per hour from ``since`` (of one site), by their status now."""
        async with self._engine.connect() as connection:
            return await hourly_counts(connection, int(since), hours, site)

    async def upstream_hourly(self, since: float, hours: int) -> dict[str, list[UpstreamHour]]:
        """Each upstream's recipients per hour from ``since`` by outcome (those with attempts)."""
        async with self._engine.connect() as connection:
            return await upstream_hourly_counts(connection, int(since), hours)

    def _quota(self, used: dict[Key, int], scope: Scope, name: str, now: float) -> list[QuotaUse]:
        directory = self._directory()
        owner = directory.site(name) if scope is Scope.SITE else directory.upstream(name)
        if owner is None:  # gone from the configuration; its history stays
            return []
        zone = self._usage.book.zone
        return [
            QuotaUse(window, used.get((scope, name, window, period(window, now, zone)), 0), limit)
            for window, limit in limits_of(owner).items()
        ]
