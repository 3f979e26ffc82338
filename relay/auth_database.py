"""SQL for the AUTH failures every node counts: one row of ``auth_failures`` per failure.

A check is counted for its address and its username in the transaction that
looked at the address's count, so two nodes cannot both take an address's
last try: on PostgreSQL an advisory lock on the address's key orders them,
on SQLite the one writer at a time does. Rows leave when refunded (the
password was right), beyond the newest ``max_failures`` of a key (the only
ones a decision reads), and once out of the window (housekeeping, by one node
of the cluster: ``retention_database``), so the table stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from relay.core.throttle import blocked_until
from relay.tables import auth_failures

_LOCK_CLASS = 0x41555448  # "AUTH": this table's advisory locks on PostgreSQL


@dataclass(frozen=True)
class Counted:
    """What counting a check found and did."""

    blocked_until: float | None  # the address was blocked already: nothing was recorded
    ids: tuple[int, ...]  # the rows recorded, in the order of the keys
    address_failures: tuple[float, ...]  # the address's, this one included, newest first
    user_blocked: bool  # the username had its failures before this one


def count_and_record(
    connection: Connection, keys: tuple[str, ...], now: float, max_failures: int, window: float
) -> Counted:
    """Unless ``keys[0]`` (the address) is blocked, a failure recorded for each key."""
    address = keys[0]
    if connection.dialect.name == "postgresql":
        lock = sa.func.pg_advisory_xact_lock(_LOCK_CLASS, sa.func.hashtext(address))
        connection.execute(sa.select(lock))
    since = now - window
    recent = {key: _recent(connection, key, since, max_failures) for key in keys}
    until = blocked_until(recent[address], max_failures, window)
    user_blocked = (
        len(keys) > 1 and blocked_until(recent[keys[1]], max_failures, window) is not None
    )
    if until is not None:
        return Counted(until, (), tuple(recent[address]), user_blocked)
    ids = []
    for key in keys:
        inserted = connection.execute(auth_failures.insert().values(key=key, at=now))
        row_id = inserted.inserted_primary_key
        assert row_id is not None
        ids.append(int(row_id[0]))
        if len(recent[key]) >= max_failures:
            _keep_newest(connection, key, max_failures)
    return Counted(None, tuple(ids), (now, *recent[address]), user_blocked)


def refund(connection: Connection, address_row: int, user_key: str | None) -> None:
    """The check succeeded: its address's failure is taken back, the username's all forgotten."""
    connection.execute(auth_failures.delete().where(auth_failures.c.id == address_row))
    if user_key is not None:
        connection.execute(auth_failures.delete().where(auth_failures.c.key == user_key))


def _recent(connection: Connection, key: str, since: float, limit: int) -> list[float]:
    """The key's newest failures after ``since``, newest first, at most ``limit``."""
    c = auth_failures.c
    rows = connection.execute(
        sa.select(c.at)
        .where(c.key == key, c.at > since)
        .order_by(c.at.desc(), c.id.desc())
        .limit(limit)
    )
    return [float(at) for (at,) in rows]


def _keep_newest(connection: Connection, key: str, keep: int) -> None:
    c = auth_failures.c
    newest = sa.select(c.id).where(c.key == key).order_by(c.at.desc(), c.id.desc()).limit(keep)
    connection.execute(auth_failures.delete().where(c.key == key, c.id.not_in(newest)))
