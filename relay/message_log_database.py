"""SQL for the admin API's message log: search, one message's headers; the statistics'
shapes (``rollup_database`` fills them from the counters).

Read-only. Functions take a connection and return frozen dataclasses, never
rows. Everything is portable SQL (SQLite and PostgreSQL). A search walks an
index newest first and stops after a page or a bounded number of messages
(``search_messages``); text search is ``lower(x) LIKE lower(y)`` with the
wildcards of the search term escaped.
The dashboard's charts (``hourly_counts`` per site, ``upstream_hourly_counts`` per
upstream) read the statistics counters instead, one grouped query each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.campaign_delivery_database import splice_attachments_async
from relay.core import rollups
from relay.core.header_diff import header_block
from relay.core.model import MessageClass, MessageStatus
from relay.core.rollups import status_metric
from relay.core.stats import success_rate
from relay.tables import attempts, messages, recipients, stats_rollups

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
    cursor: tuple[float, str] | None = None  # only messages after this (created_at, id)

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


@dataclass(frozen=True)
class SearchPage:
    """One page of the message log, and how far the search got."""

    items: list[MessageSummary]
    total: int  # matching messages: exact when ``total_exact``, else at least this many
    total_exact: bool
    next_cursor: Position | None  # continue after this message; None: nothing further
    complete: bool  # False: SCAN_ROWS examined before the page filled; go on at next_cursor


Position = tuple[float, str]  # (created_at, id) of a message: the log's order, newest first

COUNT_LIMIT = 10_000  # a total above this is reported as "at least" (total_exact false)
SCAN_ROWS = 5_000  # messages a search's unindexed filters examine per request, at most
HOT_RECIPIENT = 2_000  # an address in more messages is checked on the walk, not looked up first


async def search_messages(connection: AsyncConnection, query: MessageQuery) -> SearchPage:
    """One page of the matching messages, newest first, in bounded work.

    The leading filters (time, cursor, a recipient in few messages, and the
    status or the site) are walked in an index in the log's order. The
    others (``q``, ``upstream``, the second of status and site, a recipient
    in many messages) are checked on the walk, which stops at the page's end
    or after ``SCAN_ROWS`` messages: then the answer says so (``complete``
    false) with a cursor to go on from. A total counts up to ``COUNT_LIMIT``
    messages; with checked filters it is the matches the walk met, exact
    only when it met them all (``total_exact``).
    """
    lead, checks = await _split(connection, query)
    offset = (query.page - 1) * query.page_size
    position = [_before(query.cursor)] if query.cursor is not None else []
    if not checks:
        found = await _walk(connection, [*lead, *position], query.page_size + 1, offset)
        counted = await connection.scalar(
            sa.select(sa.func.count()).select_from(
                sa.select(sa.literal(1))
                .select_from(messages)
                .where(*lead)
                .limit(COUNT_LIMIT + 1)
                .subquery()
            )
        )
        total, exact = min(int(counted or 0), COUNT_LIMIT), int(counted or 0) <= COUNT_LIMIT
        scan_end: Position | None = None
    else:
        scan_end = await _scan_end(connection, [*lead, *position])
        window = [_at_or_after(scan_end)] if scan_end is not None else []
        found = await _walk(
            connection, [*lead, *position, *window, *checks], query.page_size + 1, offset
        )
        if len(found) > query.page_size:
            scan_end = None  # the page is full before the window's end
        # The matches this walk met: all of them only when it saw every message.
        total = offset + len(found)
        exact = query.cursor is None and len(found) <= query.page_size and scan_end is None
    page = [(row.created_at, row.id) for row in found[: query.page_size]]
    next_cursor = page[-1] if len(found) > query.page_size else scan_end
    return SearchPage(
        await _summaries(connection, [message_id for _, message_id in page]),
        total,
        exact,
        next_cursor,
        complete=scan_end is None,
    )


def _before(position: Position) -> sa.ColumnElement[bool]:
    return sa.tuple_(messages.c.created_at, messages.c.id) < sa.tuple_(*position)


def _at_or_after(position: Position) -> sa.ColumnElement[bool]:
    return sa.tuple_(messages.c.created_at, messages.c.id) >= sa.tuple_(*position)


async def _walk(
    connection: AsyncConnection, where: list[sa.ColumnElement[bool]], limit: int, offset: int
) -> Sequence[Any]:
    return (
        await connection.execute(
            sa.select(messages.c.created_at, messages.c.id)
            .where(*where)
            .order_by(messages.c.created_at.desc(), messages.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()


async def _scan_end(
    connection: AsyncConnection, lead: list[sa.ColumnElement[bool]]
) -> Position | None:
    """The last of the SCAN_ROWS messages a walk examines, when more follow; else None.

    An index-only walk of the leading filters, without the checks.
    """
    rows = await _walk(connection, lead, 2, SCAN_ROWS - 1)
    return (rows[0].created_at, rows[0].id) if len(rows) == 2 else None


async def _split(
    connection: AsyncConnection, query: MessageQuery
) -> tuple[list[sa.ColumnElement[bool]], list[sa.ColumnElement[bool]]]:
    """The conditions an index walks in the log's order, and those checked on the walk.

    Status leads (few rows per rare status) unless it is ``sent`` with a
    site given: then the site does. A checked column is wrapped (``|| ''``)
    so that no database walks its index instead of the leading one.
    """
    lead: list[sa.ColumnElement[bool]] = []
    checks: list[sa.ColumnElement[bool]] = []
    if query.since is not None:
        lead.append(messages.c.created_at >= query.since)
    if query.until is not None:
        lead.append(messages.c.created_at < query.until)
    if query.recipient is not None:
        same = sa.func.lower(recipients.c.address) == query.recipient.lower()
        if await _in_few_messages(connection, same):
            lead.append(messages.c.id.in_(sa.select(recipients.c.message_id).where(same)))
        else:  # by the message's recipients (message_id), never all of that address's rows
            unindexed = _unindexed(sa.func.lower(recipients.c.address)) == query.recipient.lower()
            checks.append(_any_row(recipients, unindexed))
    status = query.status.value if query.status is not None else None
    status_leads = status is not None and (query.site is None or status != "sent")
    if status is not None:
        (lead if status_leads else checks).append(
            (messages.c.status if status_leads else _unindexed(messages.c.status)) == status
        )
    if query.site is not None:
        (checks if status_leads else lead).append(
            (_unindexed(messages.c.site_id) if status_leads else messages.c.site_id) == query.site
        )
    if query.upstream is not None:
        checks.append(
            sa.or_(
                _any_row(attempts, attempts.c.upstream == query.upstream),
                _any_row(recipients, recipients.c.upstream == query.upstream),
            )
        )
    if query.q:
        checks.append(
            sa.or_(
                *(
                    column.icontains(query.q, autoescape=True)
                    for column in (messages.c.subject, messages.c.original_sender, messages.c.id)
                )
            )
        )
    return lead, checks


def _any_row(table: sa.Table, condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """A row of ``table`` for the message meets ``condition``, looked up by message_id.

    A scalar subquery, not EXISTS: PostgreSQL turns an EXISTS into a hash
    join that reads every row of ``table`` (0.2 s at a million), where the
    walk needs a few index probes per message it examines.
    """
    first = (
        sa.select(sa.literal(1))
        .select_from(table)
        .where(table.c.message_id == messages.c.id, condition)
        .limit(1)
        .scalar_subquery()
    )
    return first.is_not(None)


def _unindexed(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    return column + ""


async def _in_few_messages(connection: AsyncConnection, same: sa.ColumnElement[bool]) -> bool:
    """Whether at most HOT_RECIPIENT recipient rows match (an index-only count)."""
    counted = await connection.scalar(
        sa.select(sa.func.count()).select_from(
            sa.select(sa.literal(1))
            .select_from(recipients)
            .where(same)
            .limit(HOT_RECIPIENT + 1)
            .subquery()
        )
    )
    return int(counted or 0) <= HOT_RECIPIENT


async def _summaries(connection: AsyncConnection, ids: list[str]) -> list[MessageSummary]:
    """The messages of ``ids``, in that order."""
    if not ids:
        return []
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
            ).where(messages.c.id.in_(ids))
        )
    ).all()
    addresses = await _recipients(connection, ids)
    by_id = {
        row.id: _summary(**row._asdict(), recipients=addresses.get(row.id, ())) for row in rows
    }
    return [by_id[message_id] for message_id in ids if message_id in by_id]


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
    # When retention deleted the content (``sent`` is then what was kept of it); else None.
    content_deleted_at: float | None = None


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
                messages.c.content_deleted_at,
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
        content_deleted_at=row.content_deleted_at,
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
    p95_seconds: float | None  # the duration bucket holding the 95th percentile (its bound)


@dataclass(frozen=True)
class HourCount:
    """Messages created in one hour, by where they stand now (the dashboard's chart)."""

    start: float
    sent: int
    failed: int  # failed or partial
    waiting: int  # queued, deferred or held

    @property
    def accepted(self) -> int:
        return self.sent + self.failed + self.waiting


async def hourly_counts(
    connection: AsyncConnection, since: int, hours: int, site: str | None = None
) -> list[HourCount]:
    """``hours`` consecutive hours from ``since`` (of one site, when given), from the sites'
    status counters (never message rows): the hour counters when ``since`` starts a UTC
    hour, else the minute ones, summed per hour in SQL."""
    cells = [dict.fromkeys(("sent", "failed", "waiting"), 0) for _ in range(hours)]
    for _, index, metric, value in await _hour_sums(connection, rollups.SITE, since, hours, site):
        kind = _CHART_KIND.get(metric)
        if kind is not None:
            cells[index][kind] += value
    return [HourCount(since + i * 3600, **cell) for i, cell in enumerate(cells)]


@dataclass(frozen=True)
class UpstreamHour:
    """One upstream's attempts started in one hour: recipients by outcome."""

    start: float
    sent: int
    failed: int
    deferred: int
    attempts: int


async def upstream_hourly_counts(
    connection: AsyncConnection, since: int, hours: int
) -> dict[str, list[UpstreamHour]]:
    """Every upstream's ``hours`` consecutive hours from ``since`` (those with any attempt in
    the window), from the upstream counters in one query, like ``hourly_counts``."""
    wanted = {
        rollups.SENT: "sent",
        rollups.FAILED: "failed",
        rollups.DEFERRED: "deferred",
        rollups.ATTEMPTS: "attempts",
    }
    found: dict[str, list[dict[str, int]]] = {}
    for name, index, metric, value in await _hour_sums(
        connection, rollups.UPSTREAM, since, hours, None, tuple(wanted), by_name=True
    ):
        cells = found.setdefault(name, [dict.fromkeys(wanted.values(), 0) for _ in range(hours)])
        cells[index][wanted[metric]] += value
    return {
        name: [UpstreamHour(since + i * 3600, **cell) for i, cell in enumerate(cells)]
        for name, cells in sorted(found.items())
    }


async def _hour_sums(
    connection: AsyncConnection,
    family: str,
    since: int,
    hours: int,
    name: str | None,
    metrics: tuple[str, ...] = (),
    *,
    by_name: bool = False,
) -> list[tuple[str, int, str, int]]:
    """(name, hour index, metric, sum) of a counter family (``site`` or ``upstream``) over
    ``hours`` hours from ``since``: its hour counters when ``since`` starts a UTC hour, else
    its minute ones; grouped in SQL, per name only ``by_name`` (else the name is "")."""
    scope, step = (f"{family}:hour", 3600) if since % 3600 == 0 else (family, 60)
    c = stats_rollups.c
    hour = ((c.minute - since) / 3600).label("hour")  # integer division on both dialects
    named = c.name if by_name else sa.literal("").label("name")
    rows = await connection.execute(
        sa.select(named, hour, c.metric, sa.func.sum(c.value))
        .where(
            c.scope == scope,
            c.minute >= since,
            c.minute <= since + hours * 3600 - step,
            *([c.name == name] if name is not None else []),
            *([c.metric.in_(metrics)] if metrics else []),
        )
        .group_by(*([c.name] if by_name else []), hour, c.metric)
    )
    return [(str(n), int(index), str(metric), int(value)) for n, index, metric, value in rows]


_CHART_KIND = {
    status_metric(status.value): kind
    for kind, statuses in (
        ("sent", (MessageStatus.SENT,)),
        ("failed", (MessageStatus.FAILED, MessageStatus.PARTIAL)),
        ("waiting", (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.HELD)),
    )
    for status in statuses
}


@dataclass(frozen=True)
class MessageContent:
    content: bytes  # as it went out (only its header block once retention deleted the body)
    deleted_at: float | None  # when retention deleted the body


async def message_content(connection: AsyncConnection, message_id: str) -> MessageContent | None:
    row = (
        await connection.execute(
            sa.select(messages.c.content, messages.c.content_deleted_at).where(
                messages.c.id == message_id
            )
        )
    ).first()
    if row is None:
        return None
    # A campaign's message holds its attachments by reference: served as it went out.
    content = await splice_attachments_async(connection, bytes(row.content))
    return MessageContent(content, row.content_deleted_at)
