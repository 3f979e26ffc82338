"""SQL that writes events to the webhook outbox, inside the transaction of their change."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from relay.core.outbound_events import OutboxEntry
from relay.tables import webhook_outbox

PENDING = "pending"


def add_to_outbox(connection: Connection, entries: Sequence[OutboxEntry]) -> None:
    """Queue each entry for its endpoint, due at once."""
    if not entries:
        return
    connection.execute(
        webhook_outbox.insert(),
        [
            {
                "webhook": e.webhook,
                "event_id": e.event.id,
                "event_type": e.event.type.value,
                "site_id": e.event.site,
                "message_id": e.event.message_id,
                "payload": e.body,
                "created_at": e.event.timestamp,
                "status": PENDING,
                "next_attempt_at": e.event.timestamp,
            }
            for e in entries
        ],
    )
