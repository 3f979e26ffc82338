"""SQL for the message queue: store, claim under lease, record outcomes.

Functions take a connection inside a transaction (the GroupWriter's for
writes) and return core objects, never rows. Claims are leases: a claimed
message carries ``leased_until`` and its owner; a crashed owner's leases
simply expire, and a restarted node releases its own at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.model import (
    Attempt,
    MessageStatus,
    NewMessage,
    QueuedMessage,
    RecipientStatus,
    SmtpReply,
)
from relay.core.outcome import message_status
from relay.tables import attempts, messages, recipients

_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)


async def insert_messages(connection: AsyncConnection, batch: Sequence[NewMessage]) -> None:
    await connection.execute(
        messages.insert(),
        [
            {
                "id": m.id,
                "site_id": m.site_id,
                "username": m.username,
                "client_ip": m.client_ip,
                "original_sender": m.original_sender,
                "envelope_sender": m.envelope_sender,
                "subject": m.subject,
                "size": len(m.content),
                "content": m.content,
                "original_headers": m.original_headers,
                "status": MessageStatus.QUEUED.value,
                "created_at": m.created_at,
                "updated_at": m.created_at,
                "next_attempt_at": m.created_at,
            }
            for m in batch
        ],
    )
    await connection.execute(
        recipients.insert(),
        [
            {
                "message_id": m.id,
                "address": address,
                "status": RecipientStatus.PENDING.value,
                "updated_at": m.created_at,
            }
            for m in batch
            for address in m.recipients
        ],
    )


async def claim_due(
    connection: AsyncConnection,
    *,
    owner: str,
    now: float,
    lease_seconds: float,
    limit: int,
    exclude: Iterable[str] = (),
) -> list[QueuedMessage]:
    """Lease up to ``limit`` due messages to ``owner`` and load what delivery needs."""
    free = sa.or_(messages.c.leased_until.is_(None), messages.c.leased_until < now)
    due = (
        sa.select(messages.c.id)
        .where(messages.c.status.in_(_WAITING), messages.c.next_attempt_at <= now, free)
        .order_by(messages.c.next_attempt_at)
        .limit(limit)
    )
    excluded = set(exclude)
    ids = [row.id for row in await connection.execute(due) if row.id not in excluded]
    if not ids:
        return []
    await connection.execute(
        messages.update()
        .where(messages.c.id.in_(ids), free)
        .values(leased_until=now + lease_seconds, lease_owner=owner)
    )
    rows = await connection.execute(
        sa.select(
            messages.c.id,
            messages.c.site_id,
            messages.c.envelope_sender,
            messages.c.content,
            messages.c.created_at,
            messages.c.attempt_count,
        ).where(messages.c.id.in_(ids), messages.c.lease_owner == owner)
    )
    pending = await _pending_recipients(connection, ids)
    return [
        QueuedMessage(
            id=row.id,
            site_id=row.site_id,
            envelope_sender=row.envelope_sender,
            pending_recipients=tuple(pending.get(row.id, ())),
            content=row.content,
            created_at=row.created_at,
            attempt_count=row.attempt_count,
        )
        for row in rows
    ]


async def _pending_recipients(connection: AsyncConnection, ids: list[str]) -> dict[str, list[str]]:
    rows = await connection.execute(
        sa.select(recipients.c.message_id, recipients.c.address)
        .where(
            recipients.c.message_id.in_(ids), recipients.c.status == RecipientStatus.PENDING.value
        )
        .order_by(recipients.c.id)
    )
    pending: dict[str, list[str]] = {}
    for row in rows:
        pending.setdefault(row.message_id, []).append(row.address)
    return pending


async def release_leases(connection: AsyncConnection, owner: str) -> int:
    result = await connection.execute(
        messages.update()
        .where(messages.c.lease_owner == owner, messages.c.status.in_(_WAITING))
        .values(leased_until=None, lease_owner=None)
    )
    return result.rowcount


@dataclass(frozen=True)
class RecipientState:
    """A recipient's status as a delivery pass writes it and the admin API reads it."""

    address: str
    status: RecipientStatus
    upstream: str | None
    reply_code: int | None
    reply_text: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    """Everything one delivery pass learned about one message, written at once."""

    message_id: str
    attempts: tuple[Attempt, ...]
    recipients: tuple[RecipientState, ...]
    retry_at: float | None  # when recipients are still pending
    last_error: str | None
    now: float


async def record_delivery(connection: AsyncConnection, record: DeliveryRecord) -> None:
    if record.attempts:
        await connection.execute(
            attempts.insert(),
            [
                {
                    "message_id": record.message_id,
                    "upstream": a.upstream,
                    "started_at": a.started_at,
                    "duration": a.duration,
                    "reply_code": a.reply.code if a.reply else None,
                    "reply_text": a.reply.text if a.reply else None,
                    "outcome": a.outcome,
                    "recipients": list(a.recipients),
                    "detail": a.detail,
                }
                for a in record.attempts
            ],
        )
    for update in record.recipients:
        await connection.execute(
            recipients.update()
            .where(
                recipients.c.message_id == record.message_id, recipients.c.address == update.address
            )
            .values(
                status=update.status.value,
                upstream=update.upstream,
                reply_code=update.reply_code,
                reply_text=update.reply_text,
                updated_at=record.now,
            )
        )
    statuses = await connection.execute(
        sa.select(recipients.c.status).where(recipients.c.message_id == record.message_id)
    )
    status = message_status((RecipientStatus(s) for s in statuses.scalars()), retry=True)
    await connection.execute(
        messages.update()
        .where(messages.c.id == record.message_id)
        .values(
            status=status.value,
            next_attempt_at=record.retry_at or record.now,
            attempt_count=messages.c.attempt_count + (1 if record.attempts else 0),
            last_error=record.last_error,
            leased_until=None,
            lease_owner=None,
            updated_at=record.now,
        )
    )


async def next_due_at(connection: AsyncConnection) -> float | None:
    """When the earliest waiting message is due (leased ones included: their lease may lapse)."""
    lease_ends_later = messages.c.leased_until > messages.c.next_attempt_at
    due = sa.case((lease_ends_later, messages.c.leased_until), else_=messages.c.next_attempt_at)
    result = await connection.execute(
        sa.select(sa.func.min(due)).where(messages.c.status.in_(_WAITING))
    )
    due = result.scalar()
    return float(due) if due is not None else None


async def queue_depth(connection: AsyncConnection) -> int:
    result = await connection.execute(
        sa.select(sa.func.count()).select_from(messages).where(messages.c.status.in_(_WAITING))
    )
    return int(result.scalar() or 0)


@dataclass(frozen=True)
class MessageDetail:
    """One message as the admin API and the tests see it."""

    id: str
    site_id: str
    status: MessageStatus
    envelope_sender: str
    subject: str
    attempt_count: int
    last_error: str | None
    recipients: tuple[RecipientState, ...]
    attempts: tuple[Attempt, ...]


async def load_message(connection: AsyncConnection, message_id: str) -> MessageDetail | None:
    row = (await connection.execute(sa.select(messages).where(messages.c.id == message_id))).first()
    if row is None:
        return None
    rcpts = await connection.execute(
        sa.select(recipients).where(recipients.c.message_id == message_id).order_by(recipients.c.id)
    )
    tries = await connection.execute(
        sa.select(attempts).where(attempts.c.message_id == message_id).order_by(attempts.c.id)
    )
    return MessageDetail(
        id=row.id,
        site_id=row.site_id,
        status=MessageStatus(row.status),
        envelope_sender=row.envelope_sender,
        subject=row.subject,
        attempt_count=row.attempt_count,
        last_error=row.last_error,
        recipients=tuple(
            RecipientState(
                r.address, RecipientStatus(r.status), r.upstream, r.reply_code, r.reply_text
            )
            for r in rcpts
        ),
        attempts=tuple(
            Attempt(
                upstream=a.upstream,
                started_at=a.started_at,
                duration=a.duration,
                reply=SmtpReply(a.reply_code, a.reply_text) if a.reply_code is not None else None,
                outcome=a.outcome,
                recipients=tuple(a.recipients),
                detail=a.detail,
            )
            for a in tries
        ),
    )
