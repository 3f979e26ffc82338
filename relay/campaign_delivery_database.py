"""SQL on the delivery path for campaign messages: attachments spliced back, results recorded.

- ``splice_attachments``: a campaign message's stored content holds each attachment of its
  campaign by reference (``core.campaigns.reference``: its id and a digest of its encoded
  block); the exact encoded block is put back when the message is loaded for delivery or
  served. Blocks are kept in a small per-process LRU by (id, digest): an attachment never
  changes once stored, and the digest tells apart two with one id (two stores in one
  process, or an id SQLite reused after a campaign was deleted), so the cache is never
  stale. A reference whose block is gone (its campaign deleted) is spliced as nothing.
- ``record_campaign_results``: in the transaction that records a delivery pass, the final
  outcome of each campaign message moves its recipient row from ``queued`` to ``sent`` or
  ``failed`` (with the reply as the reason), the campaign's counts with it, and the
  contact's ``last_email_sent`` and ``email_count`` for a sent one. Only rows still
  ``queued`` move, so a pass recorded twice (at-least-once delivery) counts once.
  A recipient suppressed at delivery time fails (reason "suppressed: ...") and counts in
  ``failed_count``: its message existed and was given up.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.campaigns import (
    RecipientState,
    Ref,
    block_digest,
    encoded_block,
    referenced,
    splice,
)
from relay.tables import campaign_attachments, campaign_recipients, campaigns, contacts

_CACHE_ENTRIES = 32
_cache: OrderedDict[Ref, bytes] = OrderedDict()
_lock = threading.Lock()  # the store's writer thread claims, another serves the dashboard


def splice_attachments(connection: Connection, content: bytes) -> bytes:
    """``content`` with its attachment references replaced by the encoded attachments."""
    ids = referenced(content)
    if not ids:
        return content
    return splice(content, _blocks(ids, lambda missing: _load(connection, missing)))


async def splice_attachments_async(connection: AsyncConnection, content: bytes) -> bytes:
    ids = referenced(content)
    if not ids:
        return content
    loaded = await connection.run_sync(lambda c: _blocks(ids, lambda m: _load(c, m)))
    return splice(content, loaded)


def _blocks(ids: set[Ref], load: Any) -> dict[Ref, bytes]:
    with _lock:
        found = {i: _cache[i] for i in ids if i in _cache}
        for i in found:
            _cache.move_to_end(i)
    missing = ids - found.keys()
    if missing:
        loaded = load({i for i, _ in missing})
        with _lock:
            for ref, block in loaded.items():
                if ref in missing:
                    found[ref] = block
                    _cache[ref] = block
            while len(_cache) > _CACHE_ENTRIES:
                _cache.popitem(last=False)
    return found


def _load(connection: Connection, ids: Iterable[int]) -> dict[Ref, bytes]:
    rows = connection.execute(
        sa.select(campaign_attachments.c.id, campaign_attachments.c.content).where(
            campaign_attachments.c.id.in_(sorted(ids))
        )
    )
    blocks = [(row.id, encoded_block(bytes(row.content))) for row in rows]
    return {(i, block_digest(block)): block for i, block in blocks}


def record_campaign_results(
    connection: Connection, outcomes: Mapping[str, tuple[bool, str | None]], now: float
) -> None:
    """``outcomes``: message id -> (sent, reason when not) for campaign messages now final."""
    if not outcomes:
        return
    query = sa.select(
        campaign_recipients.c.campaign_id,
        campaign_recipients.c.contact_id,
        campaign_recipients.c.message_id,
    ).where(
        campaign_recipients.c.message_id.in_(list(outcomes)),
        campaign_recipients.c.status == RecipientState.QUEUED.value,
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = connection.execute(query).all()
    if not rows:
        return
    connection.execute(
        campaign_recipients.update()
        .where(
            campaign_recipients.c.campaign_id == sa.bindparam("b_campaign"),
            campaign_recipients.c.contact_id == sa.bindparam("b_contact"),
        )
        .values(
            status=sa.bindparam("b_status"),
            reason=sa.bindparam("b_reason"),
            updated_at=now,
        ),
        [
            {
                "b_campaign": r.campaign_id,
                "b_contact": r.contact_id,
                "b_status": (
                    RecipientState.SENT if outcomes[r.message_id][0] else RecipientState.FAILED
                ).value,
                "b_reason": outcomes[r.message_id][1],
            }
            for r in rows
        ],
    )
    counts: dict[str, list[int]] = {}
    for r in rows:
        entry = counts.setdefault(r.campaign_id, [0, 0])
        entry[0 if outcomes[r.message_id][0] else 1] += 1
    add_counts(connection, {c: {"sent": s, "failed": f} for c, (s, f) in counts.items()}, now)
    sent = sorted(r.contact_id for r in rows if outcomes[r.message_id][0])
    if sent:
        connection.execute(
            contacts.update()
            .where(contacts.c.id.in_(sent))
            .values(last_email_sent=now, email_count=contacts.c.email_count + 1)
        )


def add_counts(connection: Connection, deltas: Mapping[str, Mapping[str, int]], now: float) -> None:
    """Move messages out of ``queued_count`` into the named counts (sent, failed, skipped)."""
    for campaign_id in sorted(deltas):  # one order on every node: no deadlock between two
        moved = deltas[campaign_id]
        values: dict[str, Any] = {
            "queued_count": campaigns.c.queued_count - sum(moved.values()),
            "updated_at": now,
        }
        for name, count in moved.items():
            if count:
                column = campaigns.c[f"{name}_count"]
                values[f"{name}_count"] = column + count
        connection.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(values))
