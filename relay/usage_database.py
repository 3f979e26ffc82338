"""SQL for usage counters: claims decided and counted in the caller's transaction.

Counts are only ever changed by increments (a claim) and decrements (a
give-back) inside a write transaction, never written as absolute values, so
processes and nodes that share the store add up instead of overwriting one
another. A claim reads the counts and writes its increments under the
store's write lock: SQLite's (the writer's BEGIN IMMEDIATE locks the file)
or, on PostgreSQL, one transaction-scoped advisory lock that every counter
change takes first. One lock, not row locks, because a batch may touch the
rows of several sites and upstreams in any order, and row locks taken in
different orders by two nodes would deadlock (and PostgreSQL waits a second
before it notices). The lock is held from the first counter statement to the
commit, and only by transactions that count something.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.quota import Claim, Granted, Key, OverLimit, Scope, Window, admit
from relay.tables import usage_counters

_LOCK_ID = zlib.crc32(b"relay.usage_counters")  # the advisory lock's number (any fixed one)
_KEY = ("scope", "name", "window", "period")
c = usage_counters.c


def claim_usage(connection: Connection, claims: Sequence[Claim]) -> list[Granted | OverLimit]:
    """Decide the claims in order against the stored counts and store the increments."""
    if not claims:
        return []
    _lock(connection)
    keys = sorted({key for claim in claims for key in claim.counter_keys})
    counts = _read(connection, keys)
    verdicts, deltas = admit(claims, counts)
    _add(connection, deltas)
    return verdicts


def give_back(connection: Connection, returns: Sequence[tuple[Claim, int]]) -> None:
    """Take ``count`` off each claim's periods (recipients an upstream did not accept).

    Never below zero; a period that has ended and whose row is gone stays gone.
    """
    rows = [
        {"b_scope": k[0].value, "b_name": k[1], "b_window": k[2].value, "b_period": k[3], "n": n}
        for claim, n in returns
        if n > 0
        for k in claim.counter_keys
    ]
    if not rows:
        return
    _lock(connection)
    connection.execute(_GIVE_BACK, sorted(rows, key=lambda r: tuple(r.values())))


async def load_usage(connection: AsyncConnection, periods: Iterable[str]) -> list[tuple[Key, int]]:
    rows = await connection.execute(
        sa.select(c.scope, c.name, c.window, c.period, c.count.label("n")).where(
            c.period.in_(list(periods)),
            c.scope != Scope.FORM_IP.value,  # decided in the store only: never cached
        )
    )
    return [((Scope(r.scope), r.name, Window(r.window), r.period), int(r.n)) for r in rows]


async def forget_minutes_before(connection: AsyncConnection, minute: str) -> None:
    """Minute counters are only useful while their minute lasts."""
    await connection.execute(
        usage_counters.delete().where(c.window == Window.MINUTE.value, c.period < minute)
    )


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":  # SQLite: the writer holds the file's lock
        connection.execute(_LOCK)


def _read(connection: Connection, keys: list[Key]) -> dict[Key, int]:
    names = sorted({k[1] for k in keys})
    periods = sorted({k[3] for k in keys})
    rows = connection.execute(_READ, {"names": names, "periods": periods})
    wanted = set(keys)
    found = {(Scope(r[0]), r[1], Window(r[2]), r[3]): int(r[4]) for r in rows}
    return {key: n for key, n in found.items() if key in wanted}


def _add(connection: Connection, deltas: dict[Key, int]) -> None:
    if not deltas:
        return
    rows = [
        {"scope": k[0].value, "name": k[1], "window": k[2].value, "period": k[3], "count": n}
        for k, n in sorted(deltas.items())
    ]
    connection.execute(_ADD[connection.dialect.name == "postgresql"], rows)


def _increment(dialect: Any) -> sa.Insert:
    statement = dialect.insert(usage_counters)
    return statement.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(_KEY), set_={"count": c.count + statement.excluded.count}
    )


# Built once: building a statement costs more than running it (~30 us each).
_READ = sa.select(c.scope, c.name, c.window, c.period, c.count).where(
    c.name.in_(sa.bindparam("names", expanding=True)),
    c.period.in_(sa.bindparam("periods", expanding=True)),
)
_ADD = {False: _increment(sqlite), True: _increment(postgresql)}
_LOCK = sa.select(sa.func.pg_advisory_xact_lock(_LOCK_ID))
_GIVE_BACK = (
    usage_counters.update()
    .where(
        c.scope == sa.bindparam("b_scope"),
        c.name == sa.bindparam("b_name"),
        c.window == sa.bindparam("b_window"),
        c.period == sa.bindparam("b_period"),
    )
    .values(
        count=sa.case(
            (c.count > sa.bindparam("n", type_=sa.Integer), c.count - sa.bindparam("n")),
            else_=0,
        )
    )
)
