"""SQL of provider events in: the seen-set of provider requests, finding the message a
provider names, and the rows of a message's timeline.

Synchronous functions of one ``Connection``: the controller runs them, with the
suppressions and the outbox rows, in one transaction (``GroupWriter.write_sync``).
``remember`` is exact across processes and nodes: the key is the primary key, and an
insert that meets it does nothing (PostgreSQL waits for a concurrent insert of the same
key to commit or roll back first), so of two deliveries of one request exactly one
counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from relay.core.providers.model import ProviderEvent
from relay.tables import messages, provider_events, provider_refs, provider_replays, recipients

_CANDIDATES = 10  # messages one ref may name (a Message-ID sent again); newest first


@dataclass(frozen=True)
class Match:
    message_id: str  # ours
    site_id: str


def remember(connection: Connection, key: str, expires_at: float) -> bool:
    """Record a provider request's key; False when it was recorded before (a replay)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    inserted = connection.execute(
        dialect.insert(provider_replays)
        .values(key=key, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    return bool(inserted.rowcount)


def find_message(
    connection: Connection, upstream: str, refs: Sequence[str], recipient: str
) -> Match | None:
    """The message the upstream knows by one of ``refs`` (tried in order) that had
    ``recipient`` (lower case) among its recipients, or None."""
    for ref in refs:
        rows = connection.execute(
            _BY_REF, {"upstream": upstream, "ref": ref, "limit": _CANDIDATES}
        ).all()
        for row in rows:
            if connection.scalar(_HAS_RECIPIENT, {"id": row.id, "address": recipient}):
                return Match(row.id, row.site_id)
    return None


def add_event(
    connection: Connection, event: ProviderEvent, match: Match, upstream: str, now: float
) -> None:
    """The event on the message's timeline."""
    connection.execute(
        provider_events.insert().values(
            message_id=match.message_id,
            upstream=upstream,
            recipient=event.recipient,
            kind=event.kind.value,
            raw_type=event.raw_type[:64],
            occurred_at=event.occurred_at.timestamp() if event.occurred_at else None,
            received_at=now,
            smtp_code=event.reply.code if event.reply else None,
            smtp_text=event.reply.text if event.reply else None,
            detail=event.diagnostic,
        )
    )


# Built once: asked for every event of a batch.
_BY_REF = (
    sa.select(messages.c.id, messages.c.site_id)
    .join(provider_refs, provider_refs.c.message_id == messages.c.id)
    .where(
        provider_refs.c.upstream == sa.bindparam("upstream"),
        provider_refs.c.ref == sa.bindparam("ref"),
    )
    .order_by(provider_refs.c.created_at.desc())
    .limit(sa.bindparam("limit"))
)
_HAS_RECIPIENT = (
    sa.select(sa.literal(1))
    .where(
        recipients.c.message_id == sa.bindparam("id"),
        sa.func.lower(recipients.c.address) == sa.bindparam("address"),
    )
    .limit(1)
)
