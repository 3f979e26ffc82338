"""SQL for housekeeping: the lease, retention in batches, and what the store measures.

Functions take a connection (inside the caller's transaction for writes)
and return numbers or frozen dataclasses. Each batch is bounded (``limit``
rows) and walks an index: final messages by ``ix_messages_finished``
(status, updated_at), one status at a time so no sort is needed; the other
tables by their time column's index (``auth_failures`` has none on ``at``
alone: it is scanned, and kept small by its own cap per key). Portable between SQLite and
PostgreSQL: ``substr``/``length`` work on BLOB and bytea alike, composite
keys are matched with row values.

The lease is one row of ``leases``: a process works only in a transaction
that first renewed it (``take_lease``), so on PostgreSQL the row's lock
orders two nodes and on SQLite the one writer does; work is never done by
two processes at once, and a dead holder's lease lapses after its time.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from relay.core.model import MessageStatus
from relay.core.retention import KEEP_HEADER_BYTES, kept_headers, pages_to_vacuum
from relay.core.rollups import MINUTE_SCOPES
from relay.tables import (
    attempts,
    audit_log,
    auth_failures,
    form_nonces,
    idempotency_keys,
    leases,
    message_fingerprints,
    messages,
    provider_events,
    provider_refs,
    provider_replays,
    recipients,
    stats_rollups,
    suppressions,
    webhook_attempts,
    webhook_outbox,
)

HOUSEKEEPING = "housekeeping"


# -- The lease


@dataclass(frozen=True)
class Lease:
    owner: str | None
    leased_until: float


def lease_of(connection: Connection, name: str) -> Lease | None:
    row = connection.execute(
        sa.select(leases.c.owner, leases.c.leased_until).where(leases.c.name == name)
    ).first()
    return Lease(row.owner, float(row.leased_until)) if row is not None else None


def take_lease(connection: Connection, name: str, owner: str, now: float, seconds: float) -> bool:
    """Take or renew the lease until ``now + seconds``: whether ``owner`` holds it now.

    It is taken only when it has lapsed or is ``owner``'s already. A missing row
    (a store made by hand) is made first.
    """
    result = connection.execute(
        leases.update()
        .where(
            leases.c.name == name,
            sa.or_(leases.c.leased_until < now, leases.c.owner == owner),
        )
        .values(owner=owner, leased_until=now + seconds)
    )
    if result.rowcount == 1:
        return True
    if lease_of(connection, name) is None:
        connection.execute(
            leases.insert().values(name=name, owner=owner, leased_until=now + seconds)
        )
        return True
    return False


def release_lease(connection: Connection, name: str, owner: str) -> None:
    """Let another process take the lease at once (a process that stops)."""
    connection.execute(
        leases.update()
        .where(leases.c.name == name, leases.c.owner == owner)
        .values(owner=None, leased_until=0.0)
    )


# -- Content of final messages


def content_frontier(connection: Connection, status: MessageStatus, before: float) -> float | None:
    """Where the final messages of ``status`` that still have content start (updated_at).

    Content goes oldest first, so the messages whose content is gone are the
    first ones in (status, updated_at) order: found by bisection in a few dozen
    index lookups, not by walking the rows. None: none has lost its content yet.
    """
    first = _first_from(connection, status, None, before)
    if first is None or first[1] is None:
        return None
    low, high = first[0], before  # the first row at or after low has lost its content
    for _ in range(64):
        if high - low < 1.0:
            break
        middle = (low + high) / 2
        found = _first_from(connection, status, middle, before)
        if found is None or found[1] is None:
            high = middle
        else:
            low = max(found[0], middle)
    return low


def _first_from(
    connection: Connection, status: MessageStatus, since: float | None, before: float
) -> tuple[float, float | None] | None:
    """(updated_at, content_deleted_at) of the first final message at or after ``since``."""
    c = messages.c
    where = [c.status == status.value, c.updated_at < before]
    if since is not None:
        where.append(c.updated_at >= since)
    row = connection.execute(
        sa.select(c.updated_at, c.content_deleted_at).where(*where).order_by(c.updated_at).limit(1)
    ).first()
    return (float(row.updated_at), row.content_deleted_at) if row is not None else None


@dataclass(frozen=True)
class ContentBatch:
    count: int  # messages whose content went
    last: float | None  # the updated_at of the last one (where the next batch starts)


def delete_content(
    connection: Connection,
    status: MessageStatus,
    since: float | None,
    before: float,
    now: float,
    limit: int,
) -> ContentBatch:
    """Replace the content of up to ``limit`` final messages by their header block."""
    c = messages.c
    where = [
        c.status == status.value,
        c.updated_at < before,
        c.content_deleted_at.is_(None),
    ]
    if since is not None:
        where.append(c.updated_at >= since)
    rows = connection.execute(
        sa.select(
            c.id,
            c.updated_at,
            sa.func.length(c.content).label("length"),
            sa.func.substr(c.content, 1, KEEP_HEADER_BYTES, type_=sa.LargeBinary).label("head"),
        )
        .where(*where)
        .order_by(c.updated_at)
        .limit(limit)
    ).all()
    if not rows:
        return ContentBatch(0, None)
    connection.execute(
        _KEEP_HEADERS_SQLITE if connection.dialect.name == "sqlite" else _KEEP_HEADERS,
        [
            {
                "b_id": row.id,
                "b_content": kept_headers(bytes(row.head), int(row.length)),
                "b_now": now,
                "b_status": status.value,
            }
            for row in rows
        ],
    )
    return ContentBatch(len(rows), float(rows[-1].updated_at))


_KEEP_HEADERS = (
    messages.update()
    .where(
        messages.c.id == sa.bindparam("b_id", type_=sa.String),
        messages.c.status == sa.bindparam("b_status", type_=sa.String),
        messages.c.content_deleted_at.is_(None),
    )
    .values(
        content=sa.bindparam("b_content", type_=sa.LargeBinary),
        content_deleted_at=sa.bindparam("b_now", type_=sa.Float),
    )
)


# SQLite keeps a row where it is when it shrinks: a page that held one message of a few KB
# then holds a few hundred bytes until log_days. Given a new rowid (the table's end, where
# rows are packed), the row leaves its page, which is merged with its neighbours or freed.
# ``id`` stays, and with it every reference.
_KEEP_HEADERS_SQLITE = sa.text(
    "UPDATE messages SET content = :b_content, content_deleted_at = :b_now,"
    " rowid = (SELECT max(rowid) FROM messages) + 1"
    " WHERE id = :b_id AND status = :b_status AND content_deleted_at IS NULL"
).bindparams(
    sa.bindparam("b_content", type_=sa.LargeBinary),
    sa.bindparam("b_now", type_=sa.Float),
    sa.bindparam("b_id", type_=sa.String),
    sa.bindparam("b_status", type_=sa.String),
)


# -- Rows of final messages


@dataclass(frozen=True)
class Deleted:
    messages: int
    recipients: int
    attempts: int


def delete_finished(
    connection: Connection, status: MessageStatus, before: float, limit: int
) -> Deleted:
    """Delete up to ``limit`` final messages of ``status`` with their recipients, attempts
    and provider refs and events (a message's webhook events live on in the outbox, as sent).

    The children go by name: SQLite enforces ON DELETE CASCADE only where
    ``PRAGMA foreign_keys`` is on, and a store opened by another tool may not have it.
    """
    c = messages.c
    ids = list(
        connection.scalars(
            sa.select(c.id)
            .where(c.status == status.value, c.updated_at < before)
            .order_by(c.updated_at)
            .limit(limit)
        )
    )
    if not ids:
        return Deleted(0, 0, 0)
    gone_recipients = connection.execute(
        recipients.delete().where(recipients.c.message_id.in_(ids))
    ).rowcount
    gone_attempts = connection.execute(
        attempts.delete().where(attempts.c.message_id.in_(ids))
    ).rowcount
    for table in (provider_refs, provider_events):  # what providers said of them
        connection.execute(table.delete().where(table.c.message_id.in_(ids)))
    gone = connection.execute(
        messages.delete().where(c.id.in_(ids), c.status == status.value, c.updated_at < before)
    ).rowcount
    return Deleted(int(gone or 0), int(gone_recipients or 0), int(gone_attempts or 0))


# -- Tables whose rows expire by a time column


@dataclass(frozen=True)
class Expiring:
    """A table whose rows go once ``column`` is before a cutoff, found by their ``key``."""

    table: sa.Table
    column: str
    key: tuple[str, ...]
    only: sa.ColumnElement[bool] | None = None  # the rows of the table this kind covers


EXPIRING = {
    "audit_log": Expiring(audit_log, "at", ("id",)),
    # Minute counters go with the rows they count; hour and day ones after stats_days.
    "stats_minutes": Expiring(
        stats_rollups,
        "minute",
        ("scope", "name", "minute", "metric"),
        stats_rollups.c.scope.in_(MINUTE_SCOPES),
    ),
    "stats_rollups": Expiring(stats_rollups, "minute", ("scope", "name", "minute", "metric")),
    "form_nonces": Expiring(form_nonces, "expires_at", ("nonce",)),
    "idempotency_keys": Expiring(idempotency_keys, "expires_at", ("site_id", "key")),
    # SMTP messages' fingerprints past the duplicate window (a retry now is new mail).
    "message_fingerprints": Expiring(
        message_fingerprints, "expires_at", ("site_id", "fingerprint")
    ),
    "auth_failures": Expiring(auth_failures, "at", ("id",)),
    # Soft suppressions past their ``expires_at`` (they already suppress no more).
    "suppressions": Expiring(suppressions, "expires_at", ("site_id", "address")),
    # Provider requests remembered against replays, past the provider's window.
    "provider_replays": Expiring(provider_replays, "expires_at", ("key",)),
    # Webhook events delivered or given up, and the log of tries (pending ones have no
    # finished_at, so they stay whatever their age).
    "webhook_outbox": Expiring(webhook_outbox, "finished_at", ("id",)),
    "webhook_attempts": Expiring(webhook_attempts, "at", ("id",)),
}


def delete_expired(connection: Connection, kind: str, before: float, limit: int) -> int:
    """Delete up to ``limit`` rows of the ``kind`` table from before ``before``; how many."""
    expiring = EXPIRING[kind]
    table = expiring.table
    keys = [table.c[name] for name in expiring.key]
    old = table.c[expiring.column] < before
    chosen = sa.select(*keys).where(old if expiring.only is None else old & expiring.only)
    chosen = chosen.limit(limit)
    match = keys[0].in_(chosen) if len(keys) == 1 else sa.tuple_(*keys).in_(chosen)
    return int(connection.execute(table.delete().where(match)).rowcount or 0)


# -- What the store measures


@dataclass(frozen=True)
class StoreSize:
    size_bytes: int  # the database (SQLite: its main file's pages)
    free_bytes: int  # SQLite: pages on the free list, reused before the file grows; else 0


def store_size(connection: Connection) -> StoreSize:
    if connection.dialect.name == "sqlite":
        page_size = _pragma(connection, "page_size")
        return StoreSize(
            _pragma(connection, "page_count") * page_size,
            _pragma(connection, "freelist_count") * page_size,
        )
    size = connection.scalar(sa.select(sa.func.pg_database_size(sa.func.current_database())))
    return StoreSize(int(size or 0), 0)


def messages_per_status(connection: Connection) -> dict[str, int]:
    """Messages per status (one GROUP BY over the status indexes)."""
    rows = connection.execute(
        sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)
    )
    return {str(status): int(count) for status, count in rows}


def vacuum_pages(connection: Connection, most: int) -> int:
    """SQLite with ``auto_vacuum=INCREMENTAL``: give free pages back to the file system,
    keeping a tenth of the file free (``core.retention.pages_to_vacuum``); how many went.

    One page per statement: Python's sqlite3 steps a statement once, and
    ``PRAGMA incremental_vacuum(N)`` frees one page per step.
    """
    if connection.dialect.name != "sqlite" or _pragma(connection, "auto_vacuum") != 2:
        return 0
    free = _pragma(connection, "freelist_count")
    wanted = pages_to_vacuum(_pragma(connection, "page_count"), free, most)
    for _ in range(wanted):
        connection.exec_driver_sql("PRAGMA incremental_vacuum(1)").close()
    return free - _pragma(connection, "freelist_count")


def _pragma(connection: Connection, name: str) -> int:
    return int(connection.exec_driver_sql(f"PRAGMA {name}").scalar() or 0)
