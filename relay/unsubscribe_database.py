"""SQL of the one-click unsubscribe: the contact a verified token names, and marking it.

A token names (campaign id, contact id). The contact is found through that campaign's
recipient row: its address is the one the message went to, and the contact unsubscribed is
the campaign's site's contact of that address. So a token never reaches another address:
not when a contact was deleted and its id given to someone else (SQLite reuses the highest
rowid), nor when a contact's address changed. No recipient row (the campaign, and with it
its rows, deleted) or no such contact: nothing to unsubscribe.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from relay.core.unsubscribe import Unsubscribe
from relay.tables import campaign_recipients, campaigns, contacts


@dataclass(frozen=True)
class Recipient:
    """The contact a token names, as the store has it now."""

    contact_id: int
    site_id: str
    email: str
    unsubscribed: bool
    campaign_id: str
    message_id: str | None  # the campaign's message to them, once generated


def find_recipient(connection: Connection, token: Unsubscribe) -> Recipient | None:
    row = connection.execute(
        sa.select(
            contacts.c.id,
            contacts.c.site_id,
            contacts.c.email,
            contacts.c.unsubscribed,
            campaign_recipients.c.message_id,
        )
        .select_from(
            campaign_recipients.join(
                campaigns, campaigns.c.id == campaign_recipients.c.campaign_id
            ).join(
                contacts,
                sa.and_(
                    contacts.c.site_id == campaigns.c.site_id,
                    contacts.c.email == campaign_recipients.c.email,
                ),
            )
        )
        .where(
            campaign_recipients.c.campaign_id == token.campaign_id,
            campaign_recipients.c.contact_id == token.contact_id,
        )
    ).first()
    if row is None:
        return None
    return Recipient(
        contact_id=row.id,
        site_id=row.site_id,
        email=row.email,
        unsubscribed=bool(row.unsubscribed),
        campaign_id=token.campaign_id,
        message_id=row.message_id,
    )


def mark_unsubscribed(connection: Connection, contact_id: int, now: float) -> bool:
    """Unsubscribe the contact; False when it already was (two posts at once, on two nodes:
    exactly one of them changes the row, and only that one reports it)."""
    result = connection.execute(
        contacts.update()
        .where(contacts.c.id == contact_id, contacts.c.unsubscribed == sa.false())
        .values(unsubscribed=True, unsubscribed_at=now, updated_at=now)
    )
    return result.rowcount == 1
