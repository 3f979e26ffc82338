"""SQL for webhooks: the API's endpoints, every endpoint's state, the outbox, the delivery log.

Endpoints made through the admin API are kept as the JSON they were given
(checked by the config file's rules, parsed again on load) with the secret
sealed apart. The outbox is worked by every process of the cluster under
leases, as the queue is (relay/queue_database.py), with two more rules, both
decided inside the claim's transaction so that they hold across nodes:

- per endpoint at most ``max_in_flight`` rows are leased at once: the claim
  counts the endpoint's live leases after locking its ``webhook_states`` row
  (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so a node claiming for it makes
  the others pass it over this round instead of both counting the same
  leases); a disabled endpoint's rows are not claimed;
- a message's events go to an endpoint in the order they were written: a row
  is not claimed while an earlier row of the same (endpoint, message) is
  still pending, leased or not.

A try is recorded in one transaction: its log row, its outbox row (delivered,
due again, or failed), and the endpoint's failing-since / last-success.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from relay.core.webhook_delivery import Outcome, Verdict
from relay.outbox_database import PENDING
from relay.store import upsert
from relay.tables import webhook_attempts, webhook_outbox, webhook_states, webhooks

DELIVERED = "delivered"
FAILED = "failed"
PARKED = 1e11  # next_attempt_at of a disabled endpoint's waiting events (the year 5138)
o = webhook_outbox


# -- Endpoints made through the API


@dataclass(frozen=True)
class StoredWebhook:
    name: str
    spec: dict[str, Any]  # as given, without the secret
    sealed_secret: bytes
    created_at: float
    updated_at: float


def load_webhooks(connection: Connection) -> list[StoredWebhook]:
    rows = connection.execute(sa.select(webhooks).order_by(webhooks.c.name))
    return [
        StoredWebhook(r.name, dict(r.spec), bytes(r.secret_sealed), r.created_at, r.updated_at)
        for r in rows
    ]


def find_webhook(connection: Connection, name: str) -> StoredWebhook | None:
    return next((w for w in load_webhooks(connection) if w.name == name), None)


def put_webhook(connection: Connection, stored: StoredWebhook) -> None:
    row = {
        "name": stored.name,
        "spec": stored.spec,
        "secret_sealed": stored.sealed_secret,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }
    upsert(connection, webhooks, [row], ["name"])


def delete_webhook(connection: Connection, name: str, now: float) -> None:
    """The endpoint, its state, and its waiting events (failed: nobody will take them)."""
    connection.execute(
        o.update()
        .where(o.c.webhook == name, o.c.status == PENDING)
        .values(
            status=FAILED,
            finished_at=now,
            leased_until=None,
            lease_owner=None,
            last_error="endpoint deleted",
        )
    )
    connection.execute(webhook_states.delete().where(webhook_states.c.name == name))
    connection.execute(webhooks.delete().where(webhooks.c.name == name))


# -- Every endpoint's state (the file's too)


@dataclass(frozen=True)
class State:
    disabled_at: float | None = None
    disabled_reason: str | None = None
    failing_since: float | None = None  # the first failure since the last success
    last_success_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


def load_states(connection: Connection) -> dict[str, State]:
    rows = connection.execute(sa.select(webhook_states))
    return {
        r.name: State(r.disabled_at, r.disabled_reason, r.failing_since, r.last_success_at)
        for r in rows
    }


def ensure_states(connection: Connection, names: Sequence[str], now: float) -> None:
    if not names:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(
        dialect.insert(webhook_states).on_conflict_do_nothing(index_elements=["name"]),
        [{"name": n, "updated_at": now} for n in names],
    )


# Lock order, as a try's record takes them: the outbox rows, then the endpoint's state. A
# change taking them the other way round could deadlock with a try on another node.


def enable(connection: Connection, name: str, now: float) -> None:
    """Enabled, failing from now on only (past failures forgiven); its waiting events due now."""
    connection.execute(
        o.update()
        .where(o.c.webhook == name, o.c.status == PENDING, o.c.next_attempt_at >= PARKED)
        .values(next_attempt_at=now)
    )
    ensure_states(connection, [name], now)
    connection.execute(
        webhook_states.update()
        .where(webhook_states.c.name == name)
        .values(disabled_at=None, disabled_reason=None, failing_since=None, updated_at=now)
    )


def disable(connection: Connection, name: str, reason: str, now: float) -> bool:
    """Disable the endpoint; False when it was disabled already (by another process).

    Its waiting events are parked (due at PARKED): due, they would be read by every claim
    of every process until it is enabled again.
    """
    connection.execute(
        o.update().where(o.c.webhook == name, o.c.status == PENDING).values(next_attempt_at=PARKED)
    )
    ensure_states(connection, [name], now)
    result = connection.execute(
        webhook_states.update()
        .where(webhook_states.c.name == name, webhook_states.c.disabled_at.is_(None))
        .values(disabled_at=now, disabled_reason=reason, updated_at=now)
    )
    return bool(result.rowcount)


# -- The outbox


@dataclass(frozen=True)
class Claimed:
    id: int
    webhook: str
    event_id: str
    event_type: str
    payload: str
    created_at: float
    attempt_count: int  # tries before this one


def claim_due(
    connection: Connection,
    *,
    owner: str,
    now: float,
    lease_seconds: float,
    limits: Mapping[str, int],
    limit: int,
) -> list[Claimed]:
    """Lease up to ``limit`` due rows of the endpoints in ``limits`` ({name: max_in_flight})."""
    if not limits or limit <= 0:
        return []
    postgres = connection.dialect.name == "postgresql"
    free = sa.or_(o.c.leased_until.is_(None), o.c.leased_until < now)
    due = sa.and_(o.c.status == PENDING, o.c.next_attempt_at <= now, free)
    names = sorted(limits)  # a handful: one index range each below, never the whole backlog
    ensure_states(connection, names, now)
    open_query = (
        sa.select(webhook_states.c.name)
        .where(webhook_states.c.name.in_(names), webhook_states.c.disabled_at.is_(None))
        .order_by(webhook_states.c.name)
    )
    if postgres:  # another node claiming for an endpoint: pass it over this round
        open_query = open_query.with_for_update(skip_locked=True)
    open_names = list(connection.scalars(open_query))
    live: dict[str, int] = dict(
        connection.execute(
            sa.select(o.c.webhook, sa.func.count())
            .where(o.c.webhook.in_(open_names), o.c.status == PENDING, o.c.leased_until >= now)
            .group_by(o.c.webhook)
        ).all()
    )
    earlier = aliased(o)
    blocked = (
        sa.select(earlier.c.id)
        .where(
            earlier.c.webhook == o.c.webhook,
            earlier.c.message_id == o.c.message_id,
            earlier.c.id < o.c.id,
            earlier.c.status == PENDING,
        )
        .exists()
    )
    ids: list[int] = []
    for name in open_names:
        room = min(limits[name] - int(live.get(name, 0)), limit - len(ids))
        if room <= 0:
            continue
        query = (
            sa.select(o.c.id)
            .where(o.c.webhook == name, due, ~blocked)
            .order_by(o.c.next_attempt_at, o.c.id)
            .limit(room)
        )
        if postgres:
            query = query.with_for_update(skip_locked=True, of=o)
        ids += connection.scalars(query)
    if not ids:
        return []
    connection.execute(
        o.update()
        .where(o.c.id.in_(ids), free)
        .values(leased_until=now + lease_seconds, lease_owner=owner)
    )
    rows = connection.execute(
        sa.select(
            o.c.id,
            o.c.webhook,
            o.c.event_id,
            o.c.event_type,
            o.c.payload,
            o.c.created_at,
            o.c.attempt_count,
        )
        .where(o.c.id.in_(ids), o.c.lease_owner == owner)
        .order_by(o.c.id)
    )
    return [Claimed(*row) for row in rows]


@dataclass(frozen=True)
class Try:
    """One try of an outbox row, as it is recorded."""

    claimed: Claimed
    owner: str
    at: float  # when it started
    duration: float
    status_code: int | None
    error: str | None
    response_head: str | None
    verdict: Verdict


def record_try(connection: Connection, t: Try) -> float | None:
    """Log the try, settle its row, update its endpoint; the endpoint's failing-since after."""
    c = t.claimed
    connection.execute(
        webhook_attempts.insert().values(
            outbox_id=c.id,
            webhook=c.webhook,
            event_id=c.event_id,
            event_type=c.event_type,
            at=t.at,
            duration=t.duration,
            status_code=t.status_code,
            error=t.error,
            response_head=t.response_head,
        )
    )
    end = t.at + t.duration
    values: dict[str, Any] = {
        "attempt_count": o.c.attempt_count + 1,
        "leased_until": None,
        "lease_owner": None,
        "last_error": t.error or (f"HTTP {t.status_code}" if t.status_code else None),
    }
    if t.verdict.outcome is Outcome.RETRY:
        values["next_attempt_at"] = t.verdict.next_attempt_at
    else:
        values["status"] = DELIVERED if t.verdict.outcome is Outcome.DELIVERED else FAILED
        values["finished_at"] = end
    connection.execute(
        o.update().where(o.c.id == c.id, o.c.lease_owner == t.owner).values(**values)
    )
    s = webhook_states.c
    if t.verdict.outcome is Outcome.DELIVERED:
        # Written when it changes something (or once in a while): every update locks the
        # row the claims of other nodes lock, and makes them pass the endpoint over.
        connection.execute(
            webhook_states.update()
            .where(
                s.name == c.webhook,
                sa.or_(
                    s.failing_since.is_not(None),
                    s.last_success_at.is_(None),
                    s.last_success_at < end - 10,
                ),
            )
            .values(failing_since=None, last_success_at=end, updated_at=end)
        )
        return None
    connection.execute(
        webhook_states.update()
        .where(s.name == c.webhook, s.failing_since.is_(None))
        .values(failing_since=t.at, updated_at=end)
    )
    since: float | None = connection.scalar(sa.select(s.failing_since).where(s.name == c.webhook))
    return since


def replay(connection: Connection, webhook: str, since: float, now: float) -> int:
    """Queue again, due now, every event the endpoint was given since ``since``; how many.

    An event given more than once (an earlier replay) is queued once, with its id and body.
    """
    first = (
        sa.select(sa.func.min(o.c.id))
        .where(o.c.webhook == webhook, o.c.created_at >= since)
        .group_by(o.c.event_id)
    )
    copies = (
        sa.select(
            o.c.webhook,
            o.c.event_id,
            o.c.event_type,
            o.c.site_id,
            o.c.message_id,
            o.c.payload,
            sa.literal(now, sa.Float),
            sa.literal(PENDING),
            sa.literal(now, sa.Float),
        )
        .where(o.c.id.in_(first))
        .order_by(o.c.id)
    )
    columns = [
        "webhook",
        "event_id",
        "event_type",
        "site_id",
        "message_id",
        "payload",
        "created_at",
        "status",
        "next_attempt_at",
    ]
    return int(connection.execute(o.insert().from_select(columns, copies)).rowcount or 0)


def next_due_at(connection: Connection, now: float, webhooks: Sequence[str]) -> float | None:
    """When the first waiting event of these endpoints not leased now is (or was) due."""
    firsts = [
        connection.scalar(
            sa.select(o.c.next_attempt_at)
            .where(
                o.c.status == PENDING,
                o.c.webhook == name,
                o.c.next_attempt_at < PARKED,
                sa.or_(o.c.leased_until.is_(None), o.c.leased_until < now),
            )
            .order_by(o.c.next_attempt_at)
            .limit(1)
        )
        for name in sorted(webhooks)
    ]  # per endpoint, the index's first rows (the leased ones, at most its limit, skipped)
    due = [float(first) for first in firsts if first is not None]
    return min(due) if due else None


def fail_orphans(connection: Connection, known: Sequence[str], before: float, now: float) -> int:
    """Fail the waiting events of endpoints no longer configured (removed from the file)
    once they are past their retry window, ``before``: nobody would take them, and until
    then the endpoint may come back (another node may not have reloaded yet)."""
    result = connection.execute(
        o.update()
        .where(
            o.c.status == PENDING,
            o.c.webhook.not_in(sorted(known)),
            o.c.created_at < before,
        )
        .values(
            status=FAILED,
            finished_at=now,
            leased_until=None,
            lease_owner=None,
            last_error="the endpoint is no longer configured",
        )
    )
    return int(result.rowcount or 0)


def pending_count(connection: Connection) -> int:
    return int(connection.scalar(sa.select(sa.func.count()).where(o.c.status == PENDING)) or 0)


def release_leases(connection: Connection, owner: str) -> int:
    result = connection.execute(
        o.update()
        .where(o.c.lease_owner == owner, o.c.status == PENDING)
        .values(leased_until=None, lease_owner=None)
    )
    return int(result.rowcount or 0)


def release_stale_leases(connection: Connection, stale: Callable[[str], bool]) -> int:
    owners = connection.scalars(
        sa.select(o.c.lease_owner)
        .distinct()
        .where(o.c.lease_owner.is_not(None), o.c.status == PENDING)
    )
    return sum(release_leases(connection, owner) for owner in [w for w in owners if stale(w)])


# -- The delivery log


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    event_type: str
    at: float
    duration: float
    status_code: int | None
    error: str | None
    response_head: str | None


Position = tuple[float, int]  # (at, id) of the last row of a page


def deliveries(
    connection: Connection, webhook: str, after: Position | None, limit: int
) -> list[Delivery]:
    """The endpoint's tries newest first, from after ``after``; up to ``limit``."""
    a = webhook_attempts.c
    query = sa.select(
        a.id, a.event_id, a.event_type, a.at, a.duration, a.status_code, a.error, a.response_head
    ).where(a.webhook == webhook)
    if after is not None:
        query = query.where(sa.or_(a.at < after[0], sa.and_(a.at == after[0], a.id < after[1])))
    rows = connection.execute(query.order_by(a.at.desc(), a.id.desc()).limit(limit))
    return [Delivery(*row) for row in rows]
