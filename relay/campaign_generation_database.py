"""SQL for generating campaigns: leases, batches at a cursor, scheduled starts, completion.

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
- A campaign completes once every contact is reached and none of its messages waits, with
  its ``campaign.finished`` event in that transaction (``finish_campaigns``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from relay.campaign_database import Entries, count_audience, load_campaign
from relay.core.campaigns import Audience, Campaign, CampaignStatus, RecipientState
from relay.core.model import NewMessage
from relay.core.outbound_events import OutboxEntry
from relay.core.quota import Claim, OverLimit
from relay.outbox_database import add_to_outbox
from relay.queue_database import insert_messages
from relay.tables import campaign_recipients, campaigns, contacts
from relay.usage_database import claim_usage


class LostLease(Exception):
    """The campaign moved on (another process, a pause, a cancel): the batch is not written."""


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
    items = _recheck_unsubscribed(connection, list(batch.items))
    claims = [i.claim for i in items if i.message is not None and i.claim is not None]
    # The site's counts before the campaign's row: a delivery pass takes them in this order
    # too (a DSN's count, then its campaign's counts), so two nodes never wait on each other.
    verdicts = iter(claim_usage(connection, claims))
    campaign = load_campaign(connection, batch.campaign_id, lock=True)
    if (
        campaign is None
        or campaign.status is not CampaignStatus.IN_PROGRESS
        or campaign.cursor != batch.cursor
        or campaign.lease_owner != batch.owner
    ):
        raise LostLease(batch.campaign_id)  # rolled back: the claims with the rest
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
