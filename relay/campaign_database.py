"""SQL for campaigns: rows, audiences, status changes with their effect on queued mail.

All functions are synchronous jobs of a ``Connection`` inside a transaction (the writer's
``write_apart`` / ``read_apart``); generation's are in ``campaign_generation_database``.

- pause holds the campaign's waiting messages (``held``: delivery never claims them; a pass
  in flight still ends), resume makes them due now, cancel fails the waiting ones that are
  not in flight (recipients ``cancelled``, counted in ``failed_count``); a pass in flight
  completes and counts as it ends. Every status change is counted in the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from relay.campaign_delivery_database import add_counts
from relay.core.campaigns import (
    Action,
    AttachmentInfo,
    Audience,
    Campaign,
    CampaignStatus,
    NotAllowed,
    RecipientState,
    transition,
)
from relay.core.model import MessageStatus, RecipientStatus
from relay.core.outbound_events import OutboxEntry
from relay.core.rollups import Deltas
from relay.core.send_request import Attachment
from relay.outbox_database import add_to_outbox
from relay.rollup_database import record_rollups
from relay.tables import (
    campaign_attachments,
    campaign_recipients,
    campaigns,
    contact_tags,
    contacts,
    messages,
    recipients,
)

Entries = Callable[[Campaign, CampaignStatus], list[OutboxEntry]]  # campaign.finished's
CANCELLED_REASON = "campaign cancelled"
_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)


class StatusConflict(Exception):
    """The action is not allowed from the campaign's status (HTTP 409)."""


# -- rows


def insert_campaign(
    connection: Connection, campaign: Campaign, attachments: Sequence[Attachment]
) -> None:
    connection.execute(campaigns.insert().values(_row(campaign)))
    if attachments:
        connection.execute(
            campaign_attachments.insert(),
            [
                {
                    "campaign_id": campaign.id,
                    "position": i,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": len(a.content),
                    "content": a.content,
                }
                for i, a in enumerate(attachments)
            ],
        )


def _row(c: Campaign) -> dict[str, Any]:
    return {
        "id": c.id,
        "site_id": c.site_id,
        "name": c.name,
        "status": c.status.value,
        "template": c.template,
        "subject": c.subject,
        "text": c.text,
        "html": c.html,
        "audience": c.audience.to_json(),
        "rate_per_minute": c.rate_per_minute,
        "schedule_at": c.schedule_at,
        "cursor": c.cursor,
        "generated": c.generated,
        "total_contacts": c.total_contacts,
        "queued_count": c.queued_count,
        "sent_count": c.sent_count,
        "failed_count": c.failed_count,
        "skipped_count": c.skipped_count,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "started_at": c.started_at,
        "finished_at": c.finished_at,
    }


def _campaign(row: Any, attachments: tuple[AttachmentInfo, ...] = ()) -> Campaign:
    return Campaign(
        id=row.id,
        site_id=row.site_id,
        name=row.name,
        status=CampaignStatus(row.status),
        template=row.template,
        subject=row.subject,
        text=row.text,
        html=row.html,
        audience=Audience.from_json(row.audience),
        rate_per_minute=row.rate_per_minute,
        schedule_at=row.schedule_at,
        cursor=row.cursor,
        generated=bool(row.generated),
        total_contacts=row.total_contacts,
        queued_count=row.queued_count,
        sent_count=row.sent_count,
        failed_count=row.failed_count,
        skipped_count=row.skipped_count,
        lease_owner=row.lease_owner,
        leased_until=row.leased_until,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attachments=attachments,
    )


def load_campaign(connection: Connection, campaign_id: str, lock: bool = False) -> Campaign | None:
    query = sa.select(campaigns).where(campaigns.c.id == campaign_id)
    if lock and connection.dialect.name == "postgresql":
        query = query.with_for_update()
    row = connection.execute(query).first()
    if row is None:
        return None
    infos = connection.execute(
        sa.select(
            campaign_attachments.c.id,
            campaign_attachments.c.filename,
            campaign_attachments.c.content_type,
            campaign_attachments.c.size,
        )
        .where(campaign_attachments.c.campaign_id == campaign_id)
        .order_by(campaign_attachments.c.position)
    )
    return _campaign(row, tuple(AttachmentInfo(*r) for r in infos))


def load_attachments(connection: Connection, campaign_id: str) -> list[tuple[int, Attachment]]:
    rows = connection.execute(
        sa.select(campaign_attachments)
        .where(campaign_attachments.c.campaign_id == campaign_id)
        .order_by(campaign_attachments.c.position)
    )
    return [(r.id, Attachment(r.filename, bytes(r.content), r.content_type)) for r in rows]


def list_campaigns(
    connection: Connection, site_id: str | None, status: str | None, offset: int, limit: int
) -> tuple[list[Campaign], int]:
    where = []
    if site_id:
        where.append(campaigns.c.site_id == site_id)
    if status:
        where.append(campaigns.c.status == status)
    total = connection.scalar(sa.select(sa.func.count()).select_from(campaigns).where(*where))
    rows = connection.execute(
        sa.select(campaigns)
        .where(*where)
        .order_by(campaigns.c.created_at.desc(), campaigns.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [_campaign(r) for r in rows], int(total or 0)


@dataclass(frozen=True)
class RecipientRow:
    contact_id: int
    email: str
    status: str
    reason: str | None
    message_id: str | None
    updated_at: float


def list_recipients(
    connection: Connection, campaign_id: str, status: str | None, offset: int, limit: int
) -> tuple[list[RecipientRow], int]:
    where = [campaign_recipients.c.campaign_id == campaign_id]
    if status:
        where.append(campaign_recipients.c.status == status)
    total = connection.scalar(
        sa.select(sa.func.count()).select_from(campaign_recipients).where(*where)
    )
    rows = connection.execute(
        sa.select(
            campaign_recipients.c.contact_id,
            campaign_recipients.c.email,
            campaign_recipients.c.status,
            campaign_recipients.c.reason,
            campaign_recipients.c.message_id,
            campaign_recipients.c.updated_at,
        )
        .where(*where)
        .order_by(campaign_recipients.c.contact_id)
        .offset(offset)
        .limit(limit)
    )
    return [RecipientRow(*r) for r in rows], int(total or 0)


def delete_campaign(connection: Connection, campaign_id: str, deletable: Sequence[str]) -> bool:
    """Delete it with its attachments and recipient rows, if its status is ``deletable`` and
    none of its messages waits; False otherwise (its messages stay in the log)."""
    connection.execute(
        campaign_recipients.delete().where(
            campaign_recipients.c.campaign_id == campaign_id,
            sa.exists().where(
                campaigns.c.id == campaign_id,
                campaigns.c.status.in_(deletable),
                campaigns.c.queued_count == 0,
            ),
        )
    )
    gone = connection.execute(
        campaigns.delete().where(
            campaigns.c.id == campaign_id,
            campaigns.c.status.in_(deletable),
            campaigns.c.queued_count == 0,
        )
    ).rowcount
    if gone:
        connection.execute(
            campaign_attachments.delete().where(campaign_attachments.c.campaign_id == campaign_id)
        )
    return bool(gone)


# -- audience


def _audience_ids(site_id: str, audience: Audience) -> Any:
    """The contact ids of the audience, as a subquery's column or a condition on contacts."""
    if not audience.tags:
        return contacts.c.site_id == site_id
    tagged = sa.select(contact_tags.c.contact_id).where(
        contact_tags.c.site_id == site_id, contact_tags.c.tag.in_(list(audience.tags))
    )
    return sa.and_(contacts.c.site_id == site_id, contacts.c.id.in_(tagged))


def count_audience(connection: Connection, site_id: str, audience: Audience) -> int:
    total = connection.scalar(
        sa.select(sa.func.count()).select_from(contacts).where(_audience_ids(site_id, audience))
    )
    return int(total or 0)


@dataclass(frozen=True)
class Contact:
    id: int
    email: str
    first_name: str
    last_name: str
    company: str
    attributes: dict[str, Any]
    unsubscribed: bool

    def fields(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "company": self.company,
            "attributes": self.attributes,
        }


def next_contacts(
    connection: Connection, site_id: str, audience: Audience, after: int, limit: int
) -> list[Contact]:
    """The audience's next ``limit`` contacts after contact id ``after``, by id."""
    rows = connection.execute(
        sa.select(
            contacts.c.id,
            contacts.c.email,
            contacts.c.first_name,
            contacts.c.last_name,
            contacts.c.company,
            contacts.c.attributes,
            contacts.c.unsubscribed,
        )
        .where(_audience_ids(site_id, audience), contacts.c.id > after)
        .order_by(contacts.c.id)
        .limit(limit)
    )
    return [
        Contact(
            r.id,
            r.email,
            r.first_name or "",
            r.last_name or "",
            r.company or "",
            r.attributes if isinstance(r.attributes, dict) else {},
            bool(r.unsubscribed),
        )
        for r in rows
    ]


# -- status changes


def change_status(
    connection: Connection, campaign_id: str, action: Action, now: float, finished: Entries
) -> Campaign | None:
    """Apply ``action``; None when there is no such campaign. Raises StatusConflict."""
    if action is not Action.START:
        # Its messages' rows before the campaign's: the order a delivery pass takes them in.
        _campaign_messages(connection, campaign_id, (*_WAITING, MessageStatus.HELD.value))
    campaign = load_campaign(connection, campaign_id, lock=True)
    if campaign is None:
        return None
    target = transition(campaign.status, action)
    if isinstance(target, NotAllowed):
        raise StatusConflict(target.reason)
    values: dict[str, Any] = {"status": target.value, "updated_at": now, "last_error": None}
    if target is CampaignStatus.IN_PROGRESS and campaign.started_at is None:
        values["started_at"] = now
        values["total_contacts"] = count_audience(connection, campaign.site_id, campaign.audience)
    if target is CampaignStatus.CANCELLED:
        values.update(finished_at=now, lease_owner=None, leased_until=None)
    done = connection.execute(
        campaigns.update()
        .where(campaigns.c.id == campaign_id, campaigns.c.status == campaign.status.value)
        .values(values)
    ).rowcount
    if not done:
        raise StatusConflict("the campaign changed meanwhile; try again")
    if action is Action.PAUSE:
        _hold(connection, campaign_id, now)
    elif action is Action.RESUME:
        _release(connection, campaign_id, now)
    elif action is Action.CANCEL:
        cancel_waiting(connection, campaign_id, now)
    changed = load_campaign(connection, campaign_id)
    assert changed is not None
    if target is CampaignStatus.CANCELLED:
        add_to_outbox(connection, finished(changed, target))
    return changed


def _campaign_messages(connection: Connection, campaign_id: str, statuses: Sequence[str]) -> Any:
    """The campaign's waiting messages, found by its recipient rows still ``queued`` (indexed;
    ``messages.campaign_id`` is not), locked on PostgreSQL."""
    query = (
        sa.select(
            messages.c.id,
            messages.c.site_id,
            messages.c.created_at,
            messages.c.status,
            messages.c.attempt_count,
            messages.c.leased_until,
        )
        .join_from(campaign_recipients, messages, campaign_recipients.c.message_id == messages.c.id)
        .where(
            campaign_recipients.c.campaign_id == campaign_id,
            campaign_recipients.c.status == RecipientState.QUEUED.value,
            messages.c.status.in_(statuses),
        )
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(of=messages)
    return connection.execute(query).all()


def _count_moves(
    connection: Connection, rows: Sequence[Any], new: Callable[[Any], MessageStatus]
) -> None:
    """Each message's move from its status to ``new(row)`` in the statistics."""
    deltas = Deltas()
    for r in rows:
        deltas.message(r.site_id, r.created_at, r.status, new(r).value)
    record_rollups(connection, deltas)


def _hold(connection: Connection, campaign_id: str, now: float) -> None:
    rows = _campaign_messages(connection, campaign_id, _WAITING)
    if not rows:
        return
    _count_moves(connection, rows, lambda r: MessageStatus.HELD)
    connection.execute(
        messages.update()
        .where(messages.c.id.in_([r.id for r in rows]))
        .values(status=MessageStatus.HELD.value, updated_at=now)
    )


def _release(connection: Connection, campaign_id: str, now: float) -> None:
    rows = _campaign_messages(connection, campaign_id, (MessageStatus.HELD.value,))
    if not rows:
        return
    _count_moves(
        connection,
        rows,
        lambda r: MessageStatus.DEFERRED if r.attempt_count > 0 else MessageStatus.QUEUED,
    )
    connection.execute(
        messages.update()
        .where(messages.c.id.in_([r.id for r in rows]))
        .values(
            status=sa.case(
                (messages.c.attempt_count > 0, MessageStatus.DEFERRED.value),
                else_=MessageStatus.QUEUED.value,
            ),
            next_attempt_at=now,
            updated_at=now,
        )
    )


def cancel_waiting(connection: Connection, campaign_id: str, now: float) -> int:
    """Fail the campaign's waiting messages that are not in flight; how many."""
    rows = [
        r
        for r in _campaign_messages(connection, campaign_id, (*_WAITING, MessageStatus.HELD.value))
        if r.leased_until is None or r.leased_until < now
    ]
    if not rows:
        return 0
    ids = [r.id for r in rows]
    _count_moves(connection, rows, lambda r: MessageStatus.FAILED)
    connection.execute(
        messages.update()
        .where(messages.c.id.in_(ids))
        .values(
            status=MessageStatus.FAILED.value,
            last_error=CANCELLED_REASON,
            updated_at=now,
            leased_until=None,
            lease_owner=None,
        )
    )
    connection.execute(
        recipients.update()
        .where(
            recipients.c.message_id.in_(ids),
            recipients.c.status == RecipientStatus.PENDING.value,
        )
        .values(status=RecipientStatus.FAILED.value, reply_text=CANCELLED_REASON, updated_at=now)
    )
    moved = connection.execute(
        campaign_recipients.update()
        .where(
            campaign_recipients.c.message_id.in_(ids),
            campaign_recipients.c.status == RecipientState.QUEUED.value,
        )
        .values(status=RecipientState.CANCELLED.value, reason=CANCELLED_REASON, updated_at=now)
    ).rowcount
    add_counts(connection, {campaign_id: {"failed": moved}}, now)
    return int(moved)
