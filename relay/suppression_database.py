"""SQL for the suppression list as the admin API, RCPT and the send API see it.

Addresses are stored in lower case; the key (site, address) is the primary
key, so one recipient's check is one primary-key lookup. An entry whose
``expires_at`` has come suppresses no more (housekeeping deletes it later:
relay/retention_database.py). The delivery engine's own reads and hard-bounce
writes are in relay/engine_database.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.tables import suppressions

_LIVE = sa.or_(suppressions.c.expires_at.is_(None), suppressions.c.expires_at > sa.bindparam("now"))


@dataclass(frozen=True)
class Entry:
    site_id: str
    address: str  # lower case
    reason: str
    source: str  # bounce | complaint | manual | provider | unsubscribe
    message_id: str | None
    created_at: float
    expires_at: float | None


@dataclass(frozen=True)
class Search:
    site_id: str | None = None
    q: str | None = None  # a case-insensitive substring of the address
    offset: int = 0
    limit: int = 50


async def list_entries(connection: AsyncConnection, search: Search) -> tuple[list[Entry], int]:
    """One page of the list, newest first, and how many match (expired ones included until
    housekeeping deletes them: their ``expires_at`` says so)."""
    where: list[sa.ColumnElement[bool]] = []
    if search.site_id is not None:
        where.append(suppressions.c.site_id == search.site_id)
    if search.q:
        # Addresses are stored in lower case: the term is lowered, its wildcards escaped.
        where.append(suppressions.c.address.contains(search.q.lower(), autoescape=True))
    total = await connection.scalar(
        sa.select(sa.func.count()).select_from(suppressions).where(*where)
    )
    rows = await connection.execute(
        sa.select(suppressions)
        .where(*where)
        .order_by(
            suppressions.c.created_at.desc(),
            suppressions.c.site_id.desc(),
            suppressions.c.address.desc(),
        )
        .offset(search.offset)
        .limit(search.limit)
    )
    return [_entry(r) for r in rows], int(total or 0)


async def get_entry(connection: AsyncConnection, site_id: str, address: str) -> Entry | None:
    row = (
        await connection.execute(
            sa.select(suppressions).where(
                suppressions.c.site_id == site_id, suppressions.c.address == address.lower()
            )
        )
    ).first()
    return _entry(row) if row is not None else None


async def put_entry(connection: AsyncConnection, entry: Entry) -> Entry | None:
    """Add ``entry``, or replace the reason, source and expiry of the one there (its
    ``created_at`` and ``message_id`` stay). The entry that was there before, or None.

    The insert yields to an existing key (ON CONFLICT DO NOTHING) rather than failing, so
    two nodes adding one address at once both succeed."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    inserted = await connection.execute(
        dialect.insert(suppressions)
        .values(
            site_id=entry.site_id,
            address=entry.address.lower(),
            reason=entry.reason,
            source=entry.source,
            message_id=entry.message_id,
            created_at=entry.created_at,
            expires_at=entry.expires_at,
        )
        .on_conflict_do_nothing(index_elements=["site_id", "address"])
    )
    if inserted.rowcount:
        return None
    before = await get_entry(connection, entry.site_id, entry.address)
    await connection.execute(
        suppressions.update()
        .where(
            suppressions.c.site_id == entry.site_id,
            suppressions.c.address == entry.address.lower(),
        )
        .values(reason=entry.reason, source=entry.source, expires_at=entry.expires_at)
    )
    return before


async def remove_entry(connection: AsyncConnection, site_id: str, address: str) -> Entry | None:
    """Delete one entry; what it was, or None when there was none."""
    before = await get_entry(connection, site_id, address)
    if before is None:
        return None
    await connection.execute(
        suppressions.delete().where(
            suppressions.c.site_id == site_id, suppressions.c.address == address.lower()
        )
    )
    return before


def reason_for(connection: Connection, site_id: str, address: str, now: float) -> str | None:
    """Why the site may not send to ``address`` at ``now``, or None: one primary-key lookup.
    Synchronous: run by ``GroupWriter.read_now``, the hot path's read."""
    reason = connection.scalar(
        _REASON, {"site_id": site_id, "address": address.lower(), "now": now}
    )
    return None if reason is None else str(reason)


def reasons_for(
    connection: Connection, site_id: str, addresses: Sequence[str], now: float
) -> dict[str, str]:
    """``reason_for`` of several addresses at once, keyed by the lower-cased address."""
    if not addresses:
        return {}
    lowered = sorted({a.lower() for a in addresses})
    rows = connection.execute(_REASONS, {"site_id": site_id, "addresses": lowered, "now": now})
    return {r.address: r.reason for r in rows}


# Built once: asked at every RCPT.
_REASON = sa.select(suppressions.c.reason).where(
    suppressions.c.site_id == sa.bindparam("site_id"),
    suppressions.c.address == sa.bindparam("address"),
    _LIVE,
)
_REASONS = sa.select(suppressions.c.address, suppressions.c.reason).where(
    suppressions.c.site_id == sa.bindparam("site_id"),
    suppressions.c.address.in_(sa.bindparam("addresses", expanding=True)),
    _LIVE,
)


def _entry(row: sa.Row[Any]) -> Entry:
    return Entry(
        row.site_id,
        row.address,
        row.reason,
        row.source,
        row.message_id,
        row.created_at,
        row.expires_at,
    )


def has_entries(connection: Connection, site_id: str) -> bool:
    """Whether the site has any entry: one probe of the primary key's index."""
    return connection.scalar(_HAS_ENTRIES, {"site_id": site_id}) is not None


_HAS_ENTRIES = (
    sa.select(sa.literal(1)).where(suppressions.c.site_id == sa.bindparam("site_id")).limit(1)
)
