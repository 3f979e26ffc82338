"""SQL for campaigns: rows, status changes with their effect on queued mail, leases, batches.

All functions are synchronous jobs of a ``Connection`` inside a transaction (the writer's
``write_apart`` / ``read_apart``). Guarantees:

- A batch (``commit_batch``) stores its messages, their recipient rows and the campaign's
  new cursor and counts in one transaction, and only while the campaign's cursor is the
  one the batch started from, the lease is still its owner's and the campaign is still in
  progress; otherwise nothing of it is written (``LostLease``). A crash anywhere resumes
  at the committed cursor; the ``campaign_recipients`` key (campaign, contact) refuses a
  second row for a contact whatever happens.
- One process generates a campaign at a time (``lease_next``: free, expired or its own
  lease; PostgreSQL skips rows another node is leasing in its open transaction).
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
from relay.core.model import MessageStatus, NewMessage, RecipientStatus
from relay.core.outbound_events import OutboxEntry
from relay.core.quota import Claim, OverLimit
from relay.core.rollups import Deltas
from relay.core.send_request import Attachment
from relay.outbox_database import add_to_outbox
from relay.queue_database import insert_messages
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
from relay.usage_database import claim_usage

Entries = Callable[[Campaign, CampaignStatus], list[OutboxEntry]]  # campaign.finished's
CANCELLED_REASON = "campaign cancelled"
_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)


class LostLease(Exception):
    """The campaign moved on (another process, a pause, a cancel): the batch is not written."""


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
    query = sa.select(
        messages.c.id,
        messages.c.site_id,
        messages.c.created_at,
        messages.c.status,
        messages.c.attempt_count,
        messages.c.leased_until,
    ).where(messages.c.campaign_id == campaign_id, messages.c.status.in_(statuses))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    return connection.execute(query).all()


def _hold(connection: Connection, campaign_id: str, now: float) -> None:
    rows = _campaign_messages(connection, campaign_id, _WAITING)
    if not rows:
        return
    deltas = Deltas()
    for r in rows:
        deltas.message(r.site_id, r.created_at, r.status, MessageStatus.HELD.value)
    record_rollups(connection, deltas)
    connection.execute(
        messages.update()
        .where(messages.c.id.in_([r.id for r in rows]))
        .values(status=MessageStatus.HELD.value, updated_at=now)
    )


def _release(connection: Connection, campaign_id: str, now: float) -> None:
    rows = _campaign_messages(connection, campaign_id, (MessageStatus.HELD.value,))
    if not rows:
        return
    deltas = Deltas()
    for r in rows:
        new = MessageStatus.DEFERRED if r.attempt_count > 0 else MessageStatus.QUEUED
        deltas.message(r.site_id, r.created_at, r.status, new.value)
    record_rollups(connection, deltas)
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
    deltas = Deltas()
    for r in rows:
        deltas.message(r.site_id, r.created_at, r.status, MessageStatus.FAILED.value)
    record_rollups(connection, deltas)
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


# -- generation


@dataclass(frozen=True)
class Pending:
    """What needs a look: campaigns to generate, start, finish or clean up (cheap to read)."""

    generate: bool
    start: bool
    finish: bool
    sweep: tuple[str, ...]  # cancelled campaigns with waiting messages left


def pending_work(connection: Connection, now: float) -> Pending:
    in_progress = campaigns.c.status == CampaignStatus.IN_PROGRESS.value
    rows = connection.execute(
        sa.select(
            campaigns.c.id,
            campaigns.c.status,
            campaigns.c.generated,
            campaigns.c.queued_count,
            campaigns.c.schedule_at,
        ).where(
            sa.or_(
                in_progress,
                sa.and_(
                    campaigns.c.status == CampaignStatus.SCHEDULED.value,
                    campaigns.c.schedule_at <= now,
                ),
                sa.and_(
                    campaigns.c.status == CampaignStatus.CANCELLED.value,
                    campaigns.c.queued_count > 0,
                ),
            )
        )
    ).all()
    return Pending(
        generate=any(r.status == "in_progress" and not r.generated for r in rows),
        start=any(r.status == "scheduled" for r in rows),
        finish=any(r.status == "in_progress" and r.generated and r.queued_count <= 0 for r in rows),
        sweep=tuple(r.id for r in rows if r.status == "cancelled"),
    )


def start_due(connection: Connection, now: float) -> list[str]:
    """Scheduled campaigns whose time has come start; their ids."""
    rows = connection.execute(
        sa.select(campaigns.c.id, campaigns.c.site_id, campaigns.c.audience).where(
            campaigns.c.status == CampaignStatus.SCHEDULED.value, campaigns.c.schedule_at <= now
        )
    ).all()
    started = []
    for r in rows:
        total = count_audience(connection, r.site_id, Audience.from_json(r.audience))
        done = connection.execute(
            campaigns.update()
            .where(campaigns.c.id == r.id, campaigns.c.status == CampaignStatus.SCHEDULED.value)
            .values(
                status=CampaignStatus.IN_PROGRESS.value,
                started_at=now,
                updated_at=now,
                total_contacts=total,
            )
        ).rowcount
        if done:
            started.append(r.id)
    return started


def lease_next(
    connection: Connection, owner: str, now: float, lease_seconds: float
) -> Campaign | None:
    """Lease one campaign to generate (this owner's first, then the oldest free one)."""
    free = sa.or_(
        campaigns.c.leased_until.is_(None),
        campaigns.c.leased_until < now,
        campaigns.c.lease_owner == owner,
    )
    query = (
        sa.select(campaigns.c.id)
        .where(
            campaigns.c.status == CampaignStatus.IN_PROGRESS.value,
            campaigns.c.generated == sa.false(),
            free,
        )
        .order_by(
            sa.case((campaigns.c.lease_owner == owner, 0), else_=1),
            campaigns.c.started_at,
            campaigns.c.id,
        )
        .limit(1)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    campaign_id = connection.scalar(query)
    if campaign_id is None:
        return None
    done = connection.execute(
        campaigns.update()
        .where(campaigns.c.id == campaign_id, free)
        .values(lease_owner=owner, leased_until=now + lease_seconds)
    ).rowcount
    return load_campaign(connection, campaign_id) if done else None


def release_lease(connection: Connection, campaign_id: str, owner: str) -> None:
    connection.execute(
        campaigns.update()
        .where(campaigns.c.id == campaign_id, campaigns.c.lease_owner == owner)
        .values(lease_owner=None, leased_until=None)
    )


def release_leases_of(connection: Connection, owner: str) -> int:
    return int(
        connection.execute(
            campaigns.update()
            .where(campaigns.c.lease_owner == owner)
            .values(lease_owner=None, leased_until=None)
        ).rowcount
    )


def release_gone_leases(connection: Connection, gone: Callable[[str], bool]) -> int:
    """Free the leases of owners that are gone (a restart after a crash resumes at once)."""
    owners = connection.scalars(
        sa.select(campaigns.c.lease_owner).distinct().where(campaigns.c.lease_owner.is_not(None))
    ).all()
    released = 0
    for owner in [o for o in owners if gone(o)]:
        released += connection.execute(
            campaigns.update()
            .where(campaigns.c.lease_owner == owner)
            .values(lease_owner=None, leased_until=None)
        ).rowcount
    return released


def note(connection: Connection, campaign_id: str, owner: str, text: str | None) -> None:
    """Say why generation waits (shown by GET as ``last_error``), while the lease is ours."""
    connection.execute(
        campaigns.update()
        .where(
            campaigns.c.id == campaign_id,
            campaigns.c.lease_owner == owner,
            sa.or_(campaigns.c.last_error.is_(None), campaigns.c.last_error != text)
            if text is not None
            else campaigns.c.last_error.is_not(None),
        )
        .values(last_error=text)
    )


def fail_campaign(connection: Connection, campaign_id: str, reason: str, now: float) -> None:
    connection.execute(
        campaigns.update()
        .where(
            campaigns.c.id == campaign_id,
            campaigns.c.status == CampaignStatus.IN_PROGRESS.value,
        )
        .values(
            status=CampaignStatus.FAILED.value,
            last_error=reason,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            leased_until=None,
        )
    )


@dataclass(frozen=True)
class Item:
    """One contact of a batch: its message (queued), or why it has none (skipped, failed)."""

    contact_id: int
    email: str
    status: RecipientState
    reason: str | None = None
    message: NewMessage | None = None
    claim: Claim | None = None  # the site's count for the message (within the reserve)
    outbox: tuple[OutboxEntry, ...] = ()  # message.accepted, when wanted


@dataclass(frozen=True)
class Batch:
    campaign_id: str
    owner: str
    cursor: int  # where the batch started: it commits only if the campaign is still there
    items: tuple[Item, ...]  # by contact id
    exhausted: bool  # no contact after the last item: the audience is done
    now: float
    lease_seconds: float


@dataclass(frozen=True)
class Committed:
    queued: int
    over: OverLimit | None  # the site's reserve stopped the batch at this limit
    generated: bool
    outcomes: dict[str, int]  # contacts written per recipient status


def commit_batch(connection: Connection, batch: Batch) -> Committed:
    campaign = load_campaign(connection, batch.campaign_id, lock=True)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.IN_PROGRESS
        or campaign.cursor != batch.cursor
        or campaign.lease_owner != batch.owner
    ):
        raise LostLease(batch.campaign_id)
    items = _recheck_unsubscribed(connection, list(batch.items))
    claims = [i.claim for i in items if i.message is not None and i.claim is not None]
    verdicts = iter(claim_usage(connection, claims))
    kept: list[Item] = []
    over: OverLimit | None = None
    for item in items:  # site limits: stop at the first message over the reserve
        if item.message is not None and item.claim is not None:
            verdict = next(verdicts)
            if isinstance(verdict, OverLimit):
                over = verdict
                break
        kept.append(item)
    sent = [i.message for i in kept if i.message is not None]
    insert_messages(connection, sent)
    add_to_outbox(connection, [e for i in kept for e in i.outbox])
    if kept:
        connection.execute(
            campaign_recipients.insert(),
            [
                {
                    "campaign_id": batch.campaign_id,
                    "contact_id": i.contact_id,
                    "email": i.email,
                    "status": i.status.value,
                    "reason": i.reason,
                    "message_id": i.message.id if i.message is not None else None,
                    "updated_at": batch.now,
                }
                for i in kept
            ],
        )
    generated = batch.exhausted and over is None
    counts = {s: sum(1 for i in kept if i.status is s) for s in RecipientState}
    values: dict[str, Any] = {
        "cursor": kept[-1].contact_id if kept else batch.cursor,
        "queued_count": campaigns.c.queued_count + counts[RecipientState.QUEUED],
        "skipped_count": campaigns.c.skipped_count + counts[RecipientState.SKIPPED],
        "failed_count": campaigns.c.failed_count + counts[RecipientState.FAILED],
        "generated": generated,
        "leased_until": batch.now + batch.lease_seconds,
        "updated_at": batch.now,
        "last_error": None if over is None else campaign.last_error,
    }
    if generated:
        values["total_contacts"] = campaign.reached + len(kept)
        values["lease_owner"] = None
        values["leased_until"] = None
    done = connection.execute(
        campaigns.update()
        .where(
            campaigns.c.id == batch.campaign_id,
            campaigns.c.cursor == batch.cursor,
            campaigns.c.lease_owner == batch.owner,
            campaigns.c.status == CampaignStatus.IN_PROGRESS.value,
        )
        .values(values)
    ).rowcount
    if not done:
        raise LostLease(batch.campaign_id)
    return Committed(len(sent), over, generated, {s.value: n for s, n in counts.items() if n})


def _recheck_unsubscribed(connection: Connection, items: list[Item]) -> list[Item]:
    """A contact that unsubscribed since its message was built is skipped after all."""
    ids = [i.contact_id for i in items if i.message is not None]
    if not ids:
        return items
    gone = set(
        connection.scalars(
            sa.select(contacts.c.id).where(contacts.c.id.in_(ids), contacts.c.unsubscribed)
        )
    )
    if not gone:
        return items
    return [
        Item(i.contact_id, i.email, RecipientState.SKIPPED, "unsubscribed")
        if i.contact_id in gone
        else i
        for i in items
    ]


def finish_campaigns(connection: Connection, now: float, finished: Entries) -> list[str]:
    """Complete every campaign whose contacts are all reached and whose messages are all
    final, with its ``campaign.finished`` event in the same transaction."""
    query = sa.select(campaigns.c.id).where(
        campaigns.c.status == CampaignStatus.IN_PROGRESS.value,
        campaigns.c.generated == sa.true(),
        campaigns.c.queued_count <= 0,
    )
    done = []
    for campaign_id in connection.scalars(query).all():
        updated = connection.execute(
            campaigns.update()
            .where(
                campaigns.c.id == campaign_id,
                campaigns.c.status == CampaignStatus.IN_PROGRESS.value,
                campaigns.c.queued_count <= 0,
            )
            .values(
                status=CampaignStatus.COMPLETED.value,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                leased_until=None,
                last_error=None,
            )
        ).rowcount
        if updated:
            campaign = load_campaign(connection, campaign_id)
            assert campaign is not None
            add_to_outbox(connection, finished(campaign, CampaignStatus.COMPLETED))
            done.append(campaign_id)
    return done
