"""SQL for the admin API's message log: search, one message's headers, statistics per window.

Read-only. Functions take a connection and return frozen dataclasses, never
rows. Everything is portable SQL (SQLite and PostgreSQL): filters are EXISTS
subqueries, text search is ``lower(x) LIKE lower(y)`` with the wildcards of
the search term escaped, and message counts are GROUP BY queries. Attempt
recipients are a JSON list, so the per-upstream recipient counts and the
duration percentile are computed in Python over the window's attempt rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.classify import Outcome
from relay.core.header_diff import header_block
from relay.core.model import MessageClass, MessageStatus
from relay.core.stats import percentile, success_rate
from relay.tables import attempts, messages, recipients

_FINAL = frozenset({MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PARTIAL})


@dataclass(frozen=True)
class MessageQuery:
    """Filters of the message log; every one given must hold (AND)."""

    status: MessageStatus | None = None
    site: str | None = None
    upstream: str | None = None  # an attempt to it, or a recipient delivered through it
    recipient: str | None = None  # a recipient address, case-insensitive exact match
    q: str | None = None  # case-insensitive substring of subject, original sender or id
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    page: int = 1  # 1-based
    page_size: int = 50

    def __post_init__(self) -> None:
        if self.page < 1 or self.page_size < 1:
            raise ValueError(f"page ({self.page}) and page_size ({self.page_size}) start at 1")


@dataclass(frozen=True)
class MessageSummary:
    id: str
    site_id: str
    status: MessageStatus
    message_class: MessageClass
    original_sender: str
    envelope_sender: str
    subject: str
    size: int
    recipients: tuple[str, ...]  # every recipient address, in order
    created_at: float
    updated_at: float
    next_attempt_at: float | None  # None when the status is final (sent, failed, partial)
    attempt_count: int
    last_error: str | None


async def search_messages(
    connection: AsyncConnection, query: MessageQuery
) -> tuple[list[MessageSummary], int]:
    """One page of the matching messages, newest first, and how many match in all."""
    where = _conditions(query)
    total = await connection.scalar(sa.select(sa.func.count()).select_from(messages).where(*where))
    rows = (
        await connection.execute(
            sa.select(
                messages.c.id,
                messages.c.site_id,
                messages.c.status,
                messages.c.message_class,
                messages.c.original_sender,
                messages.c.envelope_sender,
                messages.c.subject,
                messages.c.size,
                messages.c.created_at,
                messages.c.updated_at,
                messages.c.next_attempt_at,
                messages.c.attempt_count,
                messages.c.last_error,
            )
            .where(*where)
            .order_by(messages.c.created_at.desc(), messages.c.id.desc())
            .limit(query.page_size)
            .offset((query.page - 1) * query.page_size)
        )
    ).all()
    addresses = await _recipients(connection, [row.id for row in rows])
    summaries = [_summary(**row._asdict(), recipients=addresses.get(row.id, ())) for row in rows]
    return summaries, int(total or 0)


def _conditions(query: MessageQuery) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if query.status is not None:
        where.append(messages.c.status == query.status.value)
    if query.site is not None:
        where.append(messages.c.site_id == query.site)
    if query.upstream is not None:
        where.append(
            sa.or_(
                _exists(attempts, attempts.c.upstream == query.upstream),
                _exists(recipients, recipients.c.upstream == query.upstream),
            )
        )
    if query.recipient is not None:
        same = sa.func.lower(recipients.c.address) == sa.func.lower(query.recipient)
        where.append(_exists(recipients, same))
    if query.q:
        where.append(
            sa.or_(
                *(
                    column.icontains(query.q, autoescape=True)
                    for column in (messages.c.subject, messages.c.original_sender, messages.c.id)
                )
            )
        )
    if query.since is not None:
        where.append(messages.c.created_at >= query.since)
    if query.until is not None:
        where.append(messages.c.created_at < query.until)
    return where


def _exists(table: sa.Table, condition: sa.ColumnElement[bool]) -> sa.Exists:
    """A row of ``table`` for the outer message meets ``condition``."""
    return sa.exists().where(table.c.message_id == messages.c.id, condition)


async def _recipients(connection: AsyncConnection, ids: list[str]) -> dict[str, tuple[str, ...]]:
    if not ids:
        return {}
    rows = await connection.execute(
        sa.select(recipients.c.message_id, recipients.c.address)
        .where(recipients.c.message_id.in_(ids))
        .order_by(recipients.c.id)
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.message_id, []).append(row.address)
    return {message_id: tuple(addresses) for message_id, addresses in found.items()}


def _summary(
    *, status: str, message_class: str, next_attempt_at: float, **columns: Any
) -> MessageSummary:
    """A summary from a row's columns (``row._asdict()``) and its ``recipients``."""
    final = MessageStatus(status) in _FINAL
    return MessageSummary(
        status=MessageStatus(status),
        message_class=MessageClass(message_class),
        next_attempt_at=None if final else next_attempt_at,
        **columns,
    )


@dataclass(frozen=True)
class MessageHeaders:
    original: bytes  # as the site sent them
    sent: bytes  # header block of the message as it went out
    created_at: float
    original_sender: str
    size: int
    message_class: MessageClass
    next_attempt_at: float | None  # None when final


async def message_headers(connection: AsyncConnection, message_id: str) -> MessageHeaders | None:
    row = (
        await connection.execute(
            sa.select(
                messages.c.original_headers,
                messages.c.content,
                messages.c.created_at,
                messages.c.original_sender,
                messages.c.size,
                messages.c.message_class,
                messages.c.status,
                messages.c.next_attempt_at,
            ).where(messages.c.id == message_id)
        )
    ).first()
    if row is None:
        return None
    final = MessageStatus(row.status) in _FINAL
    return MessageHeaders(
        original=bytes(row.original_headers),
        sent=header_block(bytes(row.content)),
        created_at=row.created_at,
        original_sender=row.original_sender,
        size=row.size,
        message_class=MessageClass(row.message_class),
        next_attempt_at=None if final else row.next_attempt_at,
    )


@dataclass(frozen=True)
class SiteStats:
    site_id: str
    accepted: int  # messages created in the window
    sent: int  # of those, status sent
    failed: int
    partial: int
    deferred: int
    queued: int
    held: int
    success_rate: float | None  # success_rate(sent, failed + partial)


async def site_stats_from_rows(
    connection: AsyncConnection, since: float, until: float | None = None
) -> list[SiteStats]:
    """Messages created in [since, until) per site and status; sites without any are left out.

    Counted from the message rows, to the second: a check of the counters
    (``rollup_database.rollup_stats`` is what the API reads), linear in messages.
    """
    window = [messages.c.created_at >= since]
    if until is not None:
        window.append(messages.c.created_at < until)
    rows = await connection.execute(
        sa.select(messages.c.site_id, messages.c.status, sa.func.count())
        .where(*window)
        .group_by(messages.c.site_id, messages.c.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for site_id, status, count in rows:
        counts.setdefault(site_id, {})[status] = int(count)
    return [site_from_counts(site_id, counts[site_id]) for site_id in sorted(counts)]


def site_from_counts(site_id: str, by_status: dict[str, int]) -> SiteStats:
    """A site's figures from its message count per status value."""

    def count(status: MessageStatus) -> int:
        return by_status.get(status.value, 0)

    sent, failed = count(MessageStatus.SENT), count(MessageStatus.FAILED)
    partial = count(MessageStatus.PARTIAL)
    return SiteStats(
        site_id=site_id,
        accepted=sum(by_status.values()),
        sent=sent,
        failed=failed,
        partial=partial,
        deferred=count(MessageStatus.DEFERRED),
        queued=count(MessageStatus.QUEUED),
        held=count(MessageStatus.HELD),
        success_rate=success_rate(sent, failed + partial),
    )


@dataclass(frozen=True)
class UpstreamStats:
    upstream: str
    attempts: int  # attempt rows started in the window
    sent: int  # recipients in attempts with outcome sent
    failed: int  # recipients, outcome failed
    deferred: int  # recipients, outcome retry or defer
    success_rate: float | None  # success_rate(sent, failed + deferred)
    average_seconds: float | None  # mean attempt duration, rounded to 4 decimals
    p95_seconds: float | None  # percentile(durations, 0.95), rounded to 4 decimals


async def upstream_stats_from_rows(
    connection: AsyncConnection, since: float, until: float | None = None
) -> list[UpstreamStats]:
    """Attempts started in [since, until) per upstream; upstreams without any are left out.

    Counted from the attempt rows, with the exact p95: a check of the counters, linear.
    """
    window = [attempts.c.started_at >= since]
    if until is not None:
        window.append(attempts.c.started_at < until)
    rows = await connection.execute(
        sa.select(
            attempts.c.upstream, attempts.c.outcome, attempts.c.duration, attempts.c.recipients
        ).where(*window)
    )
    tallies: dict[str, _Tally] = {}
    for upstream, outcome, duration, addresses in rows:
        tallies.setdefault(upstream, _Tally()).add(outcome, duration, addresses)
    return [tallies[name].stats(name) for name in sorted(tallies)]


_DEFERRED = frozenset({Outcome.RETRY.value, Outcome.DEFER.value})


class _Tally:
    """One upstream's attempts, added up row by row."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.sent = self.failed = self.deferred = 0

    def add(self, outcome: str, duration: float, addresses: object) -> None:
        self.durations.append(float(duration))
        count = len(addresses) if isinstance(addresses, list) else 0  # JSON: trust nothing
        if outcome == Outcome.SENT.value:
            self.sent += count
        elif outcome == Outcome.FAILED.value:
            self.failed += count
        elif outcome in _DEFERRED:
            self.deferred += count

    def stats(self, upstream: str) -> UpstreamStats:
        p95 = percentile(self.durations, 0.95)
        return UpstreamStats(
            upstream=upstream,
            attempts=len(self.durations),
            sent=self.sent,
            failed=self.failed,
            deferred=self.deferred,
            success_rate=success_rate(self.sent, self.failed + self.deferred),
            average_seconds=round(sum(self.durations) / len(self.durations), 4),
            p95_seconds=round(p95, 4) if p95 is not None else None,
        )
