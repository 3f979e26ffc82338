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
    """Lease up to ``limit`` due rows of the endpoints in ``limits`` ({name: max_in_flight}).

    The statements are built once (below): a claim runs after almost every try.
    """
    if not limits or limit <= 0:
        return []
    postgres = connection.dialect.name == "postgresql"
    names = sorted(limits)  # a handful: one index range each below, never the whole backlog
    # PostgreSQL: another node claiming for an endpoint makes us pass it over this round.
    read_states = _STATES_LOCKED if postgres else _STATES
    states = connection.execute(read_states, {"names": names}).all()
    if len(states) < len(names):  # a new endpoint's state row (or one locked elsewhere)
        found = {name for name, _ in states}
        ensure_states(connection, [n for n in names if n not in found], now)
        states = connection.execute(read_states, {"names": names}).all()
    open_names = [name for name, disabled_at in states if disabled_at is None]
    if not open_names:
        return []
    live = {
        name: int(count)
        for name, count in connection.execute(_LIVE, {"names": open_names, "now": now})
    }
    ids: list[int] = []
    for name in open_names:
        room = min(limits[name] - int(live.get(name, 0)), limit - len(ids))
        if room > 0:
            due = _DUE_LOCKED if postgres else _DUE
            params = {"name": name, "now": now, "room": room, "owner": owner}
            ids += connection.scalars(due, params)
    if not ids:
        return []
    until = now + lease_seconds
    leased = connection.execute(_LEASE, {"ids": ids, "now": now, "until": until, "owner": owner})
    return sorted((Claimed(*row) for row in leased), key=lambda c: c.id)


_names: sa.BindParameter[str] = sa.bindparam("names", expanding=True)
_now = sa.bindparam("now", type_=sa.Float)
# Free: never leased, or its lease lapsed and is another's (a dead process's). One of our own
# is a try still under way here, whatever the clock says: it is never sent twice at once.
_free = sa.or_(
    o.c.leased_until.is_(None),
    sa.and_(o.c.leased_until < _now, o.c.lease_owner != sa.bindparam("owner")),
)
_STATES = (
    sa.select(webhook_states.c.name, webhook_states.c.disabled_at)
    .where(webhook_states.c.name.in_(_names))
    .order_by(webhook_states.c.name)
)
_STATES_LOCKED = _STATES.with_for_update(skip_locked=True)
_LIVE = (
    sa.select(o.c.webhook, sa.func.count())
    .where(o.c.webhook.in_(_names), o.c.status == PENDING, o.c.leased_until >= _now)
    .group_by(o.c.webhook)
)
_earlier = aliased(o)
_BLOCKED = (  # an earlier event of the same message still waits for this endpoint
    sa.select(_earlier.c.id)
    .where(
        _earlier.c.webhook == o.c.webhook,
        _earlier.c.message_id == o.c.message_id,
        _earlier.c.id < o.c.id,
        _earlier.c.status == PENDING,
    )
    .exists()
)
_DUE = (
    sa.select(o.c.id)
    .where(
        o.c.webhook == sa.bindparam("name"),
        o.c.status == PENDING,
        o.c.next_attempt_at <= _now,
        _free,
        ~_BLOCKED,
    )
    .order_by(o.c.next_attempt_at, o.c.id)
    .limit(sa.bindparam("room", type_=sa.Integer))
)
_DUE_LOCKED = _DUE.with_for_update(skip_locked=True, of=o)
_ids: sa.BindParameter[int] = sa.bindparam("ids", expanding=True)
_LEASE = (
    o.update()
    .where(o.c.id.in_(_ids), _free)
    .values(leased_until=sa.bindparam("until", type_=sa.Float), lease_owner=sa.bindparam("owner"))
    .returning(
        o.c.id,
        o.c.webhook,
        o.c.event_id,
        o.c.event_type,
        o.c.payload,
        o.c.created_at,
        o.c.attempt_count,
    )
)


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


def record_tries(connection: Connection, tries: Sequence[Try]) -> list[float | None]:
    """Log the tries, settle their rows, update their endpoints; per try, its endpoint's
    failing-since after them (None once it succeeded). Tries that finished together are
    written together: a few statements for the batch, not per try."""
    connection.execute(webhook_attempts.insert(), [_attempt_row(t) for t in tries])
    connection.execute(_SETTLE, [_settled_row(t) for t in tries])
    last = {t.claimed.webhook: t for t in tries}  # each endpoint's latest try decides
    ok = [t for t in last.values() if t.verdict.outcome is Outcome.DELIVERED]
    failing = [t for t in last.values() if t.verdict.outcome is not Outcome.DELIVERED]
    if ok:
        # Written when it changes something (or once in a while): every update locks the
        # row the claims of other nodes lock, and makes them pass the endpoint over.
        connection.execute(
            _SUCCEEDED, [{"b_name": t.claimed.webhook, "b_end": t.at + t.duration} for t in ok]
        )
    since: dict[str, float | None] = {}
    if failing:
        connection.execute(
            _FAILING,
            [
                {"b_name": t.claimed.webhook, "b_at": t.at, "b_end": t.at + t.duration}
                for t in failing
            ],
        )
        names = [t.claimed.webhook for t in failing]
        since = {name: at for name, at in connection.execute(_FAILING_SINCE, {"names": names})}
    return [since.get(t.claimed.webhook) for t in tries]


def _attempt_row(t: Try) -> dict[str, Any]:
    c = t.claimed
    return {
        "outbox_id": c.id,
        "webhook": c.webhook,
        "event_id": c.event_id,
        "event_type": c.event_type,
        "at": t.at,
        "duration": t.duration,
        "status_code": t.status_code,
        "error": t.error,
        "response_head": t.response_head,
    }


def _settled_row(t: Try) -> dict[str, Any]:
    again = t.verdict.outcome is Outcome.RETRY
    status = DELIVERED if t.verdict.outcome is Outcome.DELIVERED else FAILED
    return {
        "b_id": t.claimed.id,
        "b_owner": t.owner,
        "b_status": PENDING if again else status,
        "b_next": t.verdict.next_attempt_at if again else None,
        "b_finished": None if again else t.at + t.duration,
        "b_error": t.error or (f"HTTP {t.status_code}" if t.status_code else None),
    }


_s = webhook_states.c
_SETTLE = (  # its row: due again (pending, next_attempt_at), or delivered or failed for good
    o.update()
    .where(o.c.id == sa.bindparam("b_id"), o.c.lease_owner == sa.bindparam("b_owner"))
    .values(
        status=sa.bindparam("b_status"),
        next_attempt_at=sa.func.coalesce(
            sa.bindparam("b_next", type_=sa.Float), o.c.next_attempt_at
        ),
        finished_at=sa.bindparam("b_finished", type_=sa.Float),
        attempt_count=o.c.attempt_count + 1,
        leased_until=None,
        lease_owner=None,
        last_error=sa.bindparam("b_error", type_=sa.Text),
    )
)
_SUCCEEDED = (
    webhook_states.update()
    .where(
        _s.name == sa.bindparam("b_name"),
        sa.or_(
            _s.failing_since.is_not(None),
            _s.last_success_at.is_(None),
            _s.last_success_at < sa.bindparam("b_end", type_=sa.Float) - 10,
        ),
    )
    .values(
        failing_since=None,
        last_success_at=sa.bindparam("b_end", type_=sa.Float),
        updated_at=sa.bindparam("b_end", type_=sa.Float),
    )
)
_FAILING = (
    webhook_states.update()
    .where(_s.name == sa.bindparam("b_name"), _s.failing_since.is_(None))
    .values(
        failing_since=sa.bindparam("b_at", type_=sa.Float),
        updated_at=sa.bindparam("b_end", type_=sa.Float),
    )
)
_FAILING_SINCE = sa.select(_s.name, _s.failing_since).where(_s.name.in_(_names))


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


def release_lease(connection: Connection, outbox_id: int, owner: str) -> None:
    """A try that failed here without a record (our bug): due again, for any process."""
    connection.execute(
        o.update()
        .where(o.c.id == outbox_id, o.c.lease_owner == owner, o.c.status == PENDING)
        .values(leased_until=None, lease_owner=None)
    )


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
