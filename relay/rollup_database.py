"""SQL for the statistics counters (``stats_rollups``): add, read a window, rebuild from rows.

Writes: the jobs that store messages, change their status and record
attempts compute ``Deltas`` and hand them to ``record_rollups`` in their own
transaction. Inside the store's writer (``collecting``) the deltas of every
job of a batch are merged and written once, just before the commit, as one
sorted ``INSERT ... ON CONFLICT DO UPDATE SET value = value + excluded.value``
(SQLite and PostgreSQL): one statement per transaction, and the counters
locked in one order by every node. Outside the writer they are written at
once.

Reads sum the counters of a window's whole minutes with a few indexed range
queries (``core.rollups.segments``): the work is bounded by the number of
sites, upstreams and metrics, never by messages. Retention may delete
message rows: the counters stay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.classify import Outcome
from relay.core.model import MessageStatus
from relay.core.rollups import (
    ATTEMPTS,
    BUCKET_METRICS,
    DEFERRED,
    DURATION_BOUNDS_MS,
    DURATION_US,
    FAILED,
    GRAINS,
    SENT,
    SITE,
    UPSTREAM,
    Deltas,
    percentile_bound,
    segments,
    status_metric,
    totals,
    window_edges,
)
from relay.core.stats import success_rate
from relay.message_log_database import SiteStats, UpstreamStats, site_from_counts
from relay.tables import attempts, messages, stats_rollups

_PENDING = "relay.rollups.pending"  # key in Connection.info while a writer batch collects


def record_rollups(connection: Connection, deltas: Deltas) -> None:
    """Add ``deltas`` in the connection's transaction (merged into the batch's, if collecting)."""
    pending = connection.info.get(_PENDING)
    if pending is not None:
        pending.merge(deltas)
    elif deltas:
        write_rollups(connection, deltas)


async def record_rollups_async(connection: AsyncConnection, deltas: Deltas) -> None:
    if deltas:
        await connection.run_sync(record_rollups, deltas)


@contextmanager
def collecting(connection: Connection) -> Iterator[None]:
    """Deltas recorded inside are written once when the block ends without an error."""
    pending = Deltas()
    connection.info[_PENDING] = pending
    try:
        yield
    finally:  # the info dict outlives the transaction (it is the pooled connection's)
        connection.info.pop(_PENDING, None)
    if pending:
        write_rollups(connection, pending)


def begin_collecting(connection: Connection) -> None:
    """``collecting`` in two halves, for a transaction run by awaited jobs."""
    connection.info[_PENDING] = Deltas()


def end_collecting(connection: Connection, write: bool = True) -> None:
    pending = connection.info.pop(_PENDING, None)
    if write and pending:
        write_rollups(connection, pending)


def write_rollups(connection: Connection, deltas: Deltas) -> None:
    rows = deltas.rows()
    if rows:
        connection.execute(
            _upsert(connection.dialect.name),
            [
                {"scope": scope, "name": name, "minute": start, "metric": metric, "value": value}
                for scope, name, start, metric, value in rows
            ],
        )


@cache
def _upsert(dialect_name: str) -> sa.Executable:
    """Built once per dialect: building it per transaction cost ~0.3 ms, using it ~0.05."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(stats_rollups)
    upsert: sa.Executable = statement.on_conflict_do_update(
        index_elements=["scope", "name", "minute", "metric"],
        set_={"value": stats_rollups.c.value + statement.excluded.value},
    )
    return upsert


# -- reading


async def rollup_stats(
    connection: AsyncConnection,
    since: float,
    until: float,
    upstream: str | None = None,
    minutes_from: float = 0,
) -> tuple[int, int, list[SiteStats], list[UpstreamStats]]:
    """The window's whole minutes (start, end) and the counters summed per site and upstream.

    Sites and upstreams without any counter in the window are left out; with
    ``upstream``, only that upstream is read (and no site). Edges before
    ``minutes_from`` (where retention deleted the minute counters) are whole hours.
    """
    start, end = window_edges(since, until, minutes_from)
    families = (UPSTREAM,) if upstream is not None else (SITE, UPSTREAM)
    found: list[tuple[str, str, str, int]] = []
    for suffix, low, high in segments(start, end):
        query = (
            sa.select(
                stats_rollups.c.scope,
                stats_rollups.c.name,
                stats_rollups.c.metric,
                sa.func.sum(stats_rollups.c.value),
            )
            .where(
                stats_rollups.c.scope.in_([family + suffix for family in families]),
                stats_rollups.c.minute >= low,
                stats_rollups.c.minute < high,
            )
            .group_by(stats_rollups.c.scope, stats_rollups.c.name, stats_rollups.c.metric)
        )
        if upstream is not None:
            query = query.where(stats_rollups.c.name == upstream)
        found.extend(tuple(row) for row in await connection.execute(query))
    summed = totals(found)
    sites = [
        site_from_counts(name, _statuses(counts))
        for name, counts in sorted(summed.get(SITE, {}).items())
        if any(counts.values())
    ]
    upstreams = [
        _upstream(name, counts)
        for name, counts in sorted(summed.get(UPSTREAM, {}).items())
        if counts.get(ATTEMPTS, 0) > 0
    ]
    return start, end, sites, upstreams


def _statuses(counts: dict[str, int]) -> dict[str, int]:
    return {s.value: counts.get(status_metric(s.value), 0) for s in MessageStatus}


def _upstream(name: str, counts: dict[str, int]) -> UpstreamStats:
    tries = counts[ATTEMPTS]
    sent, failed, deferred = (counts.get(m, 0) for m in (SENT, FAILED, DEFERRED))
    p95 = percentile_bound(counts, 0.95)
    return UpstreamStats(
        upstream=name,
        attempts=tries,
        sent=sent,
        failed=failed,
        deferred=deferred,
        success_rate=success_rate(sent, failed + deferred),
        average_seconds=round(counts.get(DURATION_US, 0) / tries / 1_000_000, 4),
        p95_seconds=round(p95, 4) if p95 is not None else None,
    )


# -- rebuilding from the rows


def rollup_statements(dialect: str) -> list[sa.Executable]:
    """The statements that replace every counter by what the message and attempt rows say.

    Portable: integer division floors the (positive) times, ``json_array_length``
    counts an attempt's recipients on both databases. Used by migration 0008 to
    fill the counters of a store written before them, and by the benchmark's filler.
    """
    rollups = sa.table(
        "stats_rollups",
        sa.column("scope"),
        sa.column("name"),
        sa.column("minute"),
        sa.column("metric"),
        sa.column("value"),
    )
    columns = ["scope", "name", "minute", "metric", "value"]

    def insert(select: sa.Select[tuple[object, ...]]) -> sa.Executable:
        return rollups.insert().from_select(columns, select)

    statements: list[sa.Executable] = [rollups.delete()]
    created = _minute(messages.c.created_at, dialect)
    statements.append(
        insert(
            sa.select(
                sa.literal(SITE),
                messages.c.site_id,
                created,
                sa.literal("status:") + messages.c.status,
                sa.func.count(),
            ).group_by(messages.c.site_id, created, messages.c.status)
        )
    )
    started = _minute(attempts.c.started_at, dialect)
    micros = _floor(attempts.c.duration * 1_000_000 + 0.5, dialect)
    size = sa.func.json_array_length(attempts.c.recipients)

    def per_attempt(metric: sa.ColumnElement[str], value: sa.ColumnElement[int]) -> sa.Executable:
        return insert(
            sa.select(sa.literal(UPSTREAM), attempts.c.upstream, started, metric, value).group_by(
                attempts.c.upstream, started, metric
            )
        )

    def outcome_is(*outcomes: str) -> sa.ColumnElement[bool]:
        return attempts.c.outcome.in_(outcomes)

    statements.append(per_attempt(sa.literal(ATTEMPTS), sa.func.count()))
    statements.append(per_attempt(sa.literal(DURATION_US), sa.func.sum(micros)))
    bucket = sa.case(
        *(
            (micros <= round(bound * 1000), metric)
            for bound, metric in zip(DURATION_BOUNDS_MS[:-1], BUCKET_METRICS[:-1], strict=True)
        ),
        else_=BUCKET_METRICS[-1],
    )
    statements.append(per_attempt(bucket, sa.func.count()))
    for metric, outcomes in (
        (SENT, (Outcome.SENT.value,)),
        (FAILED, (Outcome.FAILED.value,)),
        (DEFERRED, (Outcome.RETRY.value, Outcome.DEFER.value)),
    ):
        statements.append(
            insert(
                sa.select(
                    sa.literal(UPSTREAM),
                    attempts.c.upstream,
                    started,
                    sa.literal(metric),
                    sa.func.sum(size),
                )
                .where(outcome_is(*outcomes))
                .group_by(attempts.c.upstream, started)
                .having(sa.func.sum(size) > 0)
            )
        )
    minute_rows = stats_rollups.c.scope.in_([SITE, UPSTREAM])
    for seconds, suffix in GRAINS[1:]:
        start = stats_rollups.c.minute // seconds * seconds  # integers: floors
        statements.append(
            insert(
                sa.select(
                    stats_rollups.c.scope + suffix,
                    stats_rollups.c.name,
                    start,
                    stats_rollups.c.metric,
                    sa.func.sum(stats_rollups.c.value),
                )
                .where(minute_rows)
                .group_by(
                    stats_rollups.c.scope, stats_rollups.c.name, start, stats_rollups.c.metric
                )
            )
        )
    return statements


def _floor(value: sa.ColumnElement[float], dialect: str) -> sa.ColumnElement[int]:
    """Floor of a non-negative number (SQLite's CAST truncates; PostgreSQL's rounds)."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(value), sa.BigInteger)
    return sa.cast(value, sa.BigInteger)


def _minute(at: sa.ColumnElement[float], dialect: str) -> sa.ColumnElement[int]:
    return _floor(at / 60.0, dialect) * 60


def rebuild_rollups(connection: Connection) -> None:
    """Every counter recomputed from the rows, in the caller's transaction (sync: alembic)."""
    for statement in rollup_statements(connection.dialect.name):
        connection.execute(statement)


async def rebuild_rollups_async(connection: AsyncConnection) -> None:
    await connection.run_sync(rebuild_rollups)
