"""SQL for the message queue: store, claim under lease, record outcomes.

Functions take a connection inside a transaction (the GroupWriter's for
writes) and return core objects, never rows. Claims are leases: a claimed
message carries ``leased_until`` and its owner (one per process, see
``core.leases``); a crashed owner's leases expire, and at start a process
releases those of owners it can tell are gone. Several nodes claim from one
PostgreSQL without waiting for each other: the due rows are picked with
``FOR UPDATE SKIP LOCKED``, and the lease is written only where it is still
free, so a message is never leased twice. SQLite has one writer at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.campaign_delivery_database import record_campaign_results, splice_attachments
from relay.core.model import (
    Attempt,
    MessageClass,
    MessageStatus,
    NewMessage,
    QueuedMessage,
    RecipientStatus,
    SmtpReply,
)
from relay.core.outbound_events import OutboxEntry
from relay.core.outcome import message_status
from relay.core.performance import Sample, batches
from relay.core.quota import Claim, Granted, OverLimit
from relay.core.rollups import Deltas
from relay.engine_database import Suppression, add_suppressions, suppressed
from relay.fingerprint_database import Fingerprint, forget_fingerprints, record_fingerprints
from relay.form_database import FormGate, Passage, forget_nonces, pass_gates
from relay.idempotency_database import Answer, record_answers
from relay.outbox_database import add_to_outbox
from relay.performance_database import record_performance
from relay.rollup_database import record_rollups, record_rollups_async
from relay.tables import (
    attempts,
    messages,
    provider_events,
    provider_refs,
    recipients,
    webhook_outbox,
)
from relay.usage_database import claim_usage

_WAITING = (MessageStatus.QUEUED.value, MessageStatus.DEFERRED.value)


@dataclass(frozen=True)
class Admission:
    """A message to store, its site's claim when the site has limits, the answer of its
    request's Idempotency-Key and its events for webhooks, recorded only when the message is
    stored, and a form post's gate, which decides before anything else whether the message
    may be stored; an SMTP message's ``fingerprint``, which keeps out a client's retry of a
    message stored within the duplicate window."""

    message: NewMessage
    claim: Claim | None = None
    answer: Answer | None = None
    gate: FormGate | None = None
    outbox: tuple[OutboxEntry, ...] = ()
    fingerprint: Fingerprint | None = None


@dataclass(frozen=True)
class Admitted:
    """What the store said of an admission (``store_messages``), and, for a stored message
    leased to its writer, its recipients on the site's suppression list with the reasons.

    ``gate``: a form post's passage (``form_database.pass_gates``); the site's claim is only
    decided (``verdict``) for a post that passed it.

    ``duplicate_of``: the message whose retry this is (nothing stored, nothing counted)."""

    verdict: Granted | OverLimit | None
    suppressed: dict[str, str]
    gate: Passage | None = None
    duplicate_of: str | None = None

    @property
    def stored(self) -> bool:
        return (
            _passed(self.gate)
            and self.duplicate_of is None
            and not isinstance(self.verdict, OverLimit)
        )


def _passed(gate: Passage | None) -> bool:
    return gate is None or gate is True


def admit_messages(connection: Connection, batch: Sequence[Admission]) -> list[Admitted]:
    """``store_messages`` for the admissions whose gate (if any) lets them in, plus, in the
    same transaction, the Idempotency-Key answers of the stored ones and the suppression
    lookup of the leased ones (their delivery starts without a store read of its own).

    A form post's nonce whose message its site's limit refused is forgotten again: the
    visitor may post once more. Nothing refused fails the batch's other admissions.
    """
    passages = iter(pass_gates(connection, [a.gate for a in batch if a.gate is not None]))
    gates = [next(passages) if a.gate is not None else None for a in batch]
    # Before the site's count: a retry is neither stored nor counted.
    prints = [a.fingerprint for a, g in zip(batch, gates, strict=True) if _passed(g)]
    holders = iter(record_fingerprints(connection, [p for p in prints if p is not None]))
    duplicates = [
        next(holders) if _passed(g) and a.fingerprint is not None else None
        for a, g in zip(batch, gates, strict=True)
    ]
    new = [_passed(g) and d is None for g, d in zip(gates, duplicates, strict=True)]
    decided = iter(store_messages(connection, [a for a, n in zip(batch, new, strict=True) if n]))
    results = [
        Admitted(next(decided) if n else None, {}, g, d)
        for g, d, n in zip(gates, duplicates, new, strict=True)
    ]
    forget_fingerprints(
        connection,
        [
            a.fingerprint
            for a, n, r in zip(batch, new, results, strict=True)
            if n and a.fingerprint is not None and not r.stored
        ],
    )
    stored = [a for a, r in zip(batch, results, strict=True) if r.stored]
    forget_nonces(
        connection,
        [
            a.gate.nonce.nonce
            for a, r in zip(batch, results, strict=True)
            if a.gate is not None and r.gate is True and not r.stored
        ],
    )
    record_answers(connection, [a.answer for a in stored if a.answer is not None])
    add_to_outbox(connection, [e for a in stored for e in a.outbox])
    leased = [a.message for a in stored if a.message.lease is not None]
    listed = suppressed(
        connection,
        ((m.site_id, r) for m in leased for r in m.recipients),
        max((m.created_at for m in leased), default=0.0),
    )
    if not listed:
        return results
    return [
        replace(
            r,
            suppressed={
                address: listed[(a.message.site_id, address.lower())]
                for address in a.message.recipients
                if (a.message.site_id, address.lower()) in listed
            },
        )
        if r.stored
        else r
        for a, r in zip(batch, results, strict=True)
    ]


def store_messages(
    connection: Connection, batch: Sequence[Admission]
) -> list[Granted | OverLimit | None]:
    """Count each message against its site's limits, in order, and store those within them.

    The count and the message commit together: a message is stored exactly
    when it was counted. Per admission: the new counts, the limit that refused
    it (nothing stored), or None (the site has no limits: nothing counted).
    """
    verdicts = iter(claim_usage(connection, [a.claim for a in batch if a.claim is not None]))
    results = [next(verdicts) if a.claim is not None else None for a in batch]
    insert_messages(
        connection,
        [a.message for a, r in zip(batch, results, strict=True) if not isinstance(r, OverLimit)],
    )
    return results


def insert_messages(connection: Connection, batch: Sequence[NewMessage]) -> None:
    """Store new messages, queued, and count each in its site's statistics."""
    if not batch:
        return
    deltas = Deltas()
    for m in batch:
        deltas.message(m.site_id, m.created_at, None, MessageStatus.QUEUED.value)
    record_rollups(connection, deltas)
    campaign = any(m.campaign_id is not None for m in batch)
    connection.execute(
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
                "size": m.size if m.size is not None else len(m.content),
                "content": m.content,
                # Named only in a campaign's batch, so that the code writes to a store from
                # before migration 0012 as it did (the migration tests do).
                **({"campaign_id": m.campaign_id} if campaign else {}),
                "original_headers": m.original_headers,
                "status": MessageStatus.QUEUED.value,
                "created_at": m.created_at,
                "updated_at": m.created_at,
                "next_attempt_at": m.created_at,
                "message_class": m.message_class.value,
                "lease_owner": m.lease[0] if m.lease else None,
                "leased_until": m.lease[1] if m.lease else None,
            }
            for m in batch
        ],
    )
    connection.execute(
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


def claim_due(
    connection: Connection,
    *,
    owner: str,
    now: float,
    lease_seconds: float,
    limit: int,
    exclude: Iterable[str] = (),
    bulk_limit: int | None = None,
) -> list[QueuedMessage]:
    """Lease up to ``limit`` due messages to ``owner`` and load what delivery needs.

    Transactional mail first, then bulk mail (at most ``bulk_limit``; None: no cap) for
    the rest: a bulk backlog, however old, never sits ahead of a transactional message.
    One query per class on the class-first index, each as cheap as one over all.
    """
    free = sa.or_(messages.c.leased_until.is_(None), messages.c.leased_until < now)
    excluded = set(exclude)
    locked = connection.dialect.name == "postgresql"

    def take(kind: MessageClass, room: int) -> int:
        query = _DUE[kind, locked]
        found = [row.id for row in connection.execute(query, {"now": now, "limit": room})]
        ids.extend(i for i in found if i not in excluded)
        return len(found)

    ids: list[str] = []
    if take(MessageClass.TRANSACTIONAL, limit) < limit:  # slots left for bulk mail
        room = limit - len(ids) if bulk_limit is None else min(limit - len(ids), bulk_limit)
        if room > 0:
            take(MessageClass.BULK, room)
    if not ids:
        return []
    connection.execute(
        messages.update()
        .where(messages.c.id.in_(ids), free)
        .values(leased_until=now + lease_seconds, lease_owner=owner)
    )
    rows = (
        connection.execute(
            sa.select(
                messages.c.id,
                messages.c.site_id,
                messages.c.envelope_sender,
                messages.c.original_sender,
                messages.c.content,
                messages.c.created_at,
                messages.c.attempt_count,
                messages.c.message_class,
                messages.c.delay_notified,
                messages.c.campaign_id,
            ).where(messages.c.id.in_(ids), messages.c.lease_owner == owner)
        )
    ).all()
    rank = {message_id: n for n, message_id in enumerate(ids)}
    rows = sorted(rows, key=lambda row: rank[row.id])  # started in claim order
    pending = _pending_recipients(connection, ids)
    listed = suppressed(
        connection, ((r.site_id, a) for r in rows for a in pending.get(r.id, ())), now
    )
    return [
        QueuedMessage(
            id=row.id,
            site_id=row.site_id,
            envelope_sender=row.envelope_sender,
            pending_recipients=tuple(pending.get(row.id, ())),
            # A campaign's attachments are stored once: put back in what goes out.
            content=splice_attachments(connection, row.content) if row.campaign_id else row.content,
            created_at=row.created_at,
            attempt_count=row.attempt_count,
            campaign_id=row.campaign_id,
            original_sender=row.original_sender,
            message_class=MessageClass(row.message_class),
            delay_notified=row.delay_notified,
            suppressed={
                address: listed[(row.site_id, address.lower())]
                for address in pending.get(row.id, ())
                if (row.site_id, address.lower()) in listed
            },
        )
        for row in rows
    ]


def _due(kind: MessageClass, locked: bool) -> sa.Select[Any]:
    """Up to ``:limit`` messages of one class due and unleased at ``:now``, earliest first."""
    now: sa.BindParameter[float] = sa.bindparam("now")
    due = (
        sa.select(messages.c.id)
        .where(
            messages.c.message_class == kind.value,
            messages.c.status.in_(_WAITING),
            messages.c.next_attempt_at <= now,
            sa.or_(messages.c.leased_until.is_(None), messages.c.leased_until < now),
            # Only final messages lose their content; one that did is never sent, whatever
            # its status says.
            messages.c.content_deleted_at.is_(None),
        )
        .order_by(messages.c.next_attempt_at)
        .limit(sa.bindparam("limit"))
    )
    if locked:
        # Rows another node is claiming in its open transaction are passed over, not waited
        # for: without it both read the same due rows, one waits on the other's update and
        # gets nothing, or the two lock them in different orders and one is aborted.
        due = due.with_for_update(skip_locked=True)
    return due


# Built once: the claim is on the hot path, and building a statement costs as much as running
# it on SQLite. Locked on PostgreSQL.
_DUE = {(kind, locked): _due(kind, locked) for kind in MessageClass for locked in (False, True)}


def _pending_recipients(connection: Connection, ids: list[str]) -> dict[str, list[str]]:
    rows = connection.execute(
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
    """Make ``owner``'s waiting messages claimable at once; how many there were."""
    result = await connection.execute(
        messages.update()
        .where(messages.c.lease_owner == owner, messages.c.status.in_(_WAITING))
        .values(leased_until=None, lease_owner=None)
    )
    return result.rowcount


async def release_stale_leases(
    connection: AsyncConnection, stale: Callable[[str], bool]
) -> dict[str, int]:
    """Release the leases of every owner ``stale`` says is gone: {owner: messages released}."""
    owners = await connection.scalars(
        sa.select(messages.c.lease_owner)
        .distinct()
        .where(messages.c.lease_owner.is_not(None), messages.c.status.in_(_WAITING))
    )
    released = {}
    for owner in [o for o in owners if stale(o)]:
        released[owner] = await release_leases(connection, owner)
    return released


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
    notices: tuple[NewMessage, ...] = ()  # DSNs to queue with this record
    notice_claims: tuple[Claim | None, ...] = ()  # each DSN's count for its site, when limited
    suppress: tuple[Suppression, ...] = ()  # hard bounces for the site's suppression list
    delay_notified: bool = False  # a "delayed" DSN went out (with this record or before)
    counted: bool = True  # whether this pass counts as an attempt for backoff
    outbox: tuple[OutboxEntry, ...] = ()  # its events for webhooks
    # (upstream, ref): how an upstream whose events come in names the message it took
    refs: tuple[tuple[str, str], ...] = ()
    # the attempts' verdicts on the upstreams, when a route orders by them (core.performance)
    samples: tuple[Sample, ...] = ()
    campaign_id: str | None = None  # a campaign's message: its final outcome counts there


NoticeVerdicts = tuple[Granted | OverLimit | None, ...]  # per notice of a record, in order


def record_delivery(connection: Connection, record: DeliveryRecord) -> NoticeVerdicts:
    return record_deliveries(connection, [record])[0]


def record_deliveries(
    connection: Connection, records: list[DeliveryRecord]
) -> list[NoticeVerdicts]:
    """Write delivery passes together: a few statements per batch, not per message.

    Each record's DSNs are counted against their site's limits like the
    site's own messages (``store_messages``): a DSN over a limit is not
    stored. Per record, the verdict on each of its DSNs (none for a record
    whose message was deleted meanwhile: nothing of it is written).
    """
    rows = [_recipient_row(r, u) for r in records for u in r.recipients]
    if rows:
        connection.execute(_UPDATE_RECIPIENT, rows)
    statuses: dict[str, list[RecipientStatus]] = {}
    counted: dict[str, _Counted] = {}  # where each message is counted in the statistics
    ids = list({r.message_id for r in records})
    for row in connection.execute(_recipient_statuses(connection), {"ids": ids}):
        statuses.setdefault(row.message_id, []).append(RecipientStatus(row.status))
        counted[row.message_id] = (row.site_id, row.created_at, row.message_status)
    live = [r for r in records if r.message_id in statuses]  # others: deleted meanwhile
    admissions = [
        Admission(n, claim)
        for r in live
        for n, claim in itertools.zip_longest(r.notices, r.notice_claims)
    ]
    verdicts = iter(store_messages(connection, admissions))
    answers = [
        tuple(next(verdicts) for _ in r.notices) if r.message_id in statuses else ()
        for r in records
    ]
    add_suppressions(connection, [e for r in live for e in r.suppress])
    add_to_outbox(connection, [e for r in live for e in r.outbox])
    _add_refs(connection, live)
    samples = [s for r in records for s in r.samples]  # about the upstreams: all count
    if samples:
        record_performance(connection, batches(samples), records[-1].now)
    tries = [_attempt_row(r, a) for r in live for a in r.attempts]
    if tries:
        connection.execute(attempts.insert(), tries)
    if live:
        new_status = {
            r.message_id: message_status(statuses[r.message_id], retry=True) for r in live
        }
        _count_deliveries(connection, live, new_status, counted)
        _record_campaigns(connection, [r for r in live if r.campaign_id], new_status)
        connection.execute(
            _UPDATE_MESSAGE,
            [
                {
                    "b_id": r.message_id,
                    "b_status": new_status[r.message_id].value,
                    "b_next_attempt_at": r.retry_at or r.now,
                    "b_counted": 1 if r.counted else 0,
                    "b_delay_notified": r.delay_notified,
                    "b_last_error": r.last_error,
                    "b_updated_at": r.now,
                }
                for r in live
            ],
        )
    return answers


_Counted = tuple[str, float, str]  # site, created_at, status before this batch
_FINAL = (MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PARTIAL)


def _record_campaigns(
    connection: Connection, records: list[DeliveryRecord], new_status: dict[str, MessageStatus]
) -> None:
    """Campaign messages that became final: their campaign's recipient rows and counts."""
    outcomes: dict[str, tuple[bool, str | None]] = {}
    for r in records:
        status = new_status[r.message_id]
        if status not in _FINAL:
            continue
        failed = [u for u in r.recipients if u.status is RecipientStatus.FAILED]
        reason = None
        if status is not MessageStatus.SENT:
            u = failed[0] if failed else None
            reason = (
                f"{u.reply_code} {u.reply_text}".strip()
                if u is not None and u.reply_code is not None
                else (u.reply_text if u is not None and u.reply_text else r.last_error)
            ) or "failed"
        outcomes[r.message_id] = (status is MessageStatus.SENT, reason)
    if outcomes:
        record_campaign_results(connection, outcomes, records[-1].now)


def _add_refs(connection: Connection, live: list[DeliveryRecord]) -> None:
    """The records' provider refs, once each (a message sent again keeps its Message-ID)."""
    rows = {(upstream, ref, r.message_id): r.now for r in live for upstream, ref in r.refs}
    if rows:
        connection.execute(
            _ADD_REF[connection.dialect.name],
            [
                {"upstream": u, "ref": ref, "message_id": m, "created_at": now}
                for (u, ref, m), now in rows.items()
            ],
        )


_ADD_REF = {
    name: dialect.insert(provider_refs).on_conflict_do_nothing(
        index_elements=["upstream", "ref", "message_id"]
    )
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}


def _count_deliveries(
    connection: Connection,
    live: list[DeliveryRecord],
    new_status: dict[str, MessageStatus],
    counted: dict[str, _Counted],
) -> None:
    """The statistics of the records' status changes and attempts, as ``_UPDATE_MESSAGE``
    will leave them (a held message stays held while it waits)."""
    current = {message_id: MessageStatus(status) for message_id, (_, _, status) in counted.items()}
    deltas = Deltas()
    for r in live:
        for a in r.attempts:
            deltas.attempt(a.upstream, a.started_at, a.outcome, len(a.recipients), a.duration)
        old = current[r.message_id]
        new = new_status[r.message_id]
        if old is MessageStatus.HELD and new is MessageStatus.DEFERRED:
            new = old
        current[r.message_id] = new
        site, created_at, _ = counted[r.message_id]
        deltas.message(site, created_at, old.value, new.value)
    record_rollups(connection, deltas)


def _locked(query: sa.Select[Any], connection: Connection | AsyncConnection) -> sa.Select[Any]:
    """The rows locked until the transaction ends (PostgreSQL; SQLite has one writer anyway):
    a status read to count its change must not change under the writer."""
    if connection.dialect.name == "postgresql":
        return query.with_for_update()
    return query


_RECIPIENT_STATUSES = (
    sa.select(
        recipients.c.message_id,
        recipients.c.status,
        messages.c.site_id,
        messages.c.created_at,
        messages.c.status.label("message_status"),
    )
    .join_from(recipients, messages, recipients.c.message_id == messages.c.id)
    .where(recipients.c.message_id.in_(sa.bindparam("ids", expanding=True)))
)
# PostgreSQL: the messages' rows stay locked until the commit, so the status counted as the
# old one is the one the update replaces (an operator's hold meanwhile waits for it).
_RECIPIENT_STATUSES_LOCKED = _RECIPIENT_STATUSES.with_for_update(of=messages)


def _recipient_statuses(connection: Connection) -> sa.Select[Any]:
    if connection.dialect.name == "postgresql":
        return _RECIPIENT_STATUSES_LOCKED
    return _RECIPIENT_STATUSES


_UPDATE_MESSAGE = (
    messages.update()
    .where(messages.c.id == sa.bindparam("b_id", type_=sa.String))
    .values(
        # Held while this pass ran and still waiting: it stays held.
        status=sa.case(
            (
                sa.and_(
                    messages.c.status == MessageStatus.HELD.value,
                    sa.bindparam("b_status", type_=sa.String) == MessageStatus.DEFERRED.value,
                ),
                messages.c.status,
            ),
            else_=sa.bindparam("b_status", type_=sa.String),
        ),
        next_attempt_at=sa.bindparam("b_next_attempt_at", type_=sa.Float),
        attempt_count=messages.c.attempt_count + sa.bindparam("b_counted", type_=sa.Integer),
        delay_notified=sa.bindparam("b_delay_notified", type_=sa.Boolean),
        last_error=sa.bindparam("b_last_error", type_=sa.Text),
        leased_until=None,
        lease_owner=None,
        updated_at=sa.bindparam("b_updated_at", type_=sa.Float),
    )
)


_UPDATE_RECIPIENT = (
    recipients.update()
    .where(
        recipients.c.message_id == sa.bindparam("b_message_id"),
        recipients.c.address == sa.bindparam("b_address"),
    )
    .values(
        status=sa.bindparam("b_status"),
        upstream=sa.bindparam("b_upstream"),
        reply_code=sa.bindparam("b_reply_code"),
        reply_text=sa.bindparam("b_reply_text"),
        updated_at=sa.bindparam("b_updated_at"),
    )
)


def _recipient_row(record: DeliveryRecord, update: RecipientState) -> dict[str, Any]:
    return {
        "b_message_id": record.message_id,
        "b_address": update.address,
        "b_status": update.status.value,
        "b_upstream": update.upstream,
        "b_reply_code": update.reply_code,
        "b_reply_text": update.reply_text,
        "b_updated_at": record.now,
    }


def _attempt_row(record: DeliveryRecord, a: Attempt) -> dict[str, Any]:
    return {
        "message_id": record.message_id,
        "upstream": a.upstream,
        "started_at": a.started_at,
        "duration": a.duration,
        "reply_code": a.reply.code if a.reply else None,
        "reply_text": a.reply.text if a.reply else None,
        "outcome": a.outcome,
        "recipients": list(a.recipients),
        "detail": a.detail,
        "route": a.route,
    }


async def next_due_at(
    connection: AsyncConnection, message_class: MessageClass | None = None
) -> float | None:
    """When the earliest waiting message (of ``message_class``, None: any) is due (leased ones
    included: their lease may lapse)."""
    lease_ends_later = messages.c.leased_until > messages.c.next_attempt_at
    due = sa.case((lease_ends_later, messages.c.leased_until), else_=messages.c.next_attempt_at)
    query = sa.select(sa.func.min(due)).where(messages.c.status.in_(_WAITING))
    if message_class is not None:
        query = query.where(messages.c.message_class == message_class.value)
    result = await connection.execute(query)
    due = result.scalar()
    return float(due) if due is not None else None


@dataclass(frozen=True)
class QueueStats:
    depth: int  # waiting for delivery: queued or deferred
    held: int
    oldest_created_at: float | None  # of the waiting ones

    def oldest_age(self, now: float) -> float:
        return max(now - self.oldest_created_at, 0.0) if self.oldest_created_at else 0.0


async def queue_stats(connection: AsyncConnection) -> QueueStats:
    waiting = await connection.execute(
        sa.select(sa.func.count(), sa.func.min(messages.c.created_at)).where(
            messages.c.status.in_(_WAITING)
        )
    )
    depth, oldest = waiting.one()
    held = await connection.scalar(
        sa.select(sa.func.count())
        .select_from(messages)
        .where(messages.c.status == MessageStatus.HELD.value)
    )
    return QueueStats(int(depth or 0), int(held or 0), float(oldest) if oldest else None)


class QueueConflict(Exception):
    """The operation does not apply to the message in its current state (HTTP 409)."""


async def _status(connection: AsyncConnection, message_id: str) -> MessageStatus | None:
    status = await connection.scalar(
        sa.select(messages.c.status).where(messages.c.id == message_id)
    )
    return MessageStatus(status) if status is not None else None


@dataclass(frozen=True)
class _State:
    status: MessageStatus
    site_id: str
    created_at: float


async def _state(connection: AsyncConnection, message_id: str) -> _State | None:
    """The message's status, locked for the change that follows, and where it is counted."""
    query = sa.select(messages.c.status, messages.c.site_id, messages.c.created_at).where(
        messages.c.id == message_id
    )
    row = (await connection.execute(_locked(query, connection))).first()
    return _State(MessageStatus(row.status), row.site_id, row.created_at) if row else None


async def _count_change(
    connection: AsyncConnection, state: _State, new: MessageStatus | None
) -> None:
    deltas = Deltas()
    deltas.message(state.site_id, state.created_at, state.status.value, new and new.value)
    await record_rollups_async(connection, deltas)


def _waiting_again() -> sa.Case[str]:
    """Back to waiting: deferred when it was tried before, else queued."""
    return sa.case(
        (messages.c.attempt_count > 0, MessageStatus.DEFERRED.value),
        else_=MessageStatus.QUEUED.value,
    )


async def retry_now(
    connection: AsyncConnection, message_id: str, now: float
) -> MessageStatus | None:
    """Make a waiting or held message due now; None when there is no such message."""
    state = await _state(connection, message_id)
    if state is None:
        return None
    status = state.status
    if status not in (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.HELD):
        raise QueueConflict(f"message {message_id} is {status.value}: nothing left to retry")
    await connection.execute(
        messages.update()
        .where(messages.c.id == message_id)
        .values(
            status=_waiting_again(),
            next_attempt_at=now,
            updated_at=now,
        )
    )
    new = await _status(connection, message_id)
    await _count_change(connection, state, new)
    return new


async def flush_waiting(connection: AsyncConnection, now: float) -> int:
    """Make every queued or deferred message due now (held ones stay held); returns how many."""
    result = await connection.execute(
        messages.update()
        .where(messages.c.status.in_(_WAITING), messages.c.next_attempt_at > now)
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)


async def hold(connection: AsyncConnection, message_id: str, now: float) -> MessageStatus | None:
    """Keep a waiting message out of delivery until released (a pass in flight still ends)."""
    state = await _state(connection, message_id)
    if state is None:
        return None
    status = state.status
    if status is MessageStatus.HELD:
        return status
    if status not in (MessageStatus.QUEUED, MessageStatus.DEFERRED):
        raise QueueConflict(f"message {message_id} is {status.value}: only waiting mail is held")
    await connection.execute(
        messages.update()
        .where(messages.c.id == message_id)
        .values(status=MessageStatus.HELD.value, updated_at=now)
    )
    await _count_change(connection, state, MessageStatus.HELD)
    return MessageStatus.HELD


async def release(connection: AsyncConnection, message_id: str, now: float) -> MessageStatus | None:
    """A held message waits again, due at its old schedule (at once if that has passed)."""
    state = await _state(connection, message_id)
    if state is None:
        return None
    status = state.status
    if status is not MessageStatus.HELD:
        raise QueueConflict(f"message {message_id} is {status.value}, not held")
    await connection.execute(
        messages.update()
        .where(messages.c.id == message_id)
        .values(
            status=_waiting_again(),
            updated_at=now,
        )
    )
    new = await _status(connection, message_id)
    await _count_change(connection, state, new)
    return new


async def delete_message(connection: AsyncConnection, message_id: str) -> bool:
    """Remove a message with its recipients and attempts; a pass in flight records nothing.

    The site's statistics forget the message; the upstreams' keep its attempts (they happened).
    """
    state = await _state(connection, message_id)
    if state is not None:
        await _count_change(connection, state, None)
    await connection.execute(recipients.delete().where(recipients.c.message_id == message_id))
    await connection.execute(attempts.delete().where(attempts.c.message_id == message_id))
    result = await connection.execute(messages.delete().where(messages.c.id == message_id))
    return bool(result.rowcount)


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
    reported: tuple[ReportedEvent, ...] = ()  # by the upstreams' providers, after they took it
    notified: tuple[Notification, ...] = ()  # its events for the webhooks


@dataclass(frozen=True)
class ReportedEvent:
    """What a provider said of the message after it took it (a row of ``provider_events``)."""

    received_at: float
    occurred_at: float | None
    upstream: str
    recipient: str
    kind: str  # core.providers.model.EventKind values
    raw_type: str
    reply: SmtpReply | None
    detail: str | None


@dataclass(frozen=True)
class Notification:
    """One of the message's events for one webhook endpoint (a row of the outbox)."""

    event_id: str
    type: str
    webhook: str
    status: str  # pending | delivered | failed
    created_at: float
    attempt_count: int
    last_error: str | None


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
    reports = await connection.execute(
        sa.select(provider_events)
        .where(provider_events.c.message_id == message_id)
        .order_by(provider_events.c.id)
    )
    outbox = await connection.execute(
        sa.select(webhook_outbox)
        .where(webhook_outbox.c.message_id == message_id)
        .order_by(webhook_outbox.c.id)
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
                route=a.route or "",
            )
            for a in tries
        ),
        reported=tuple(
            ReportedEvent(
                e.received_at,
                e.occurred_at,
                e.upstream,
                e.recipient,
                e.kind,
                e.raw_type,
                SmtpReply(e.smtp_code, e.smtp_text or "") if e.smtp_code is not None else None,
                e.detail,
            )
            for e in reports
        ),
        notified=tuple(
            Notification(
                n.event_id,
                n.event_type,
                n.webhook,
                n.status,
                n.created_at,
                n.attempt_count,
                n.last_error,
            )
            for n in outbox
        ),
    )
