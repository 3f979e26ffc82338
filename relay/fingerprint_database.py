"""SQL for SMTP messages' fingerprints (``message_fingerprints``): a retry is stored once.

A fingerprint (``relay.core.fingerprint``) is recorded in the transaction
that stores its message (``queue_database.admit_messages``), by an insert
that does nothing on a conflict: the primary key (site, fingerprint) decides,
exactly, across processes and nodes (PostgreSQL makes a second insert of the
same key wait for the first's transaction, then do nothing). Only a conflict
costs more: an expired row is taken over, an unexpired one names the message
the retry is answered with. Expired rows are swept by housekeeping
(relay/retention_database.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from relay.tables import message_fingerprints

c = message_fingerprints.c


@dataclass(frozen=True)
class Fingerprint:
    """A message's fingerprint, kept until ``expires_at`` (its arrival plus the window)."""

    site_id: str
    fingerprint: str  # 64 hex digits
    message_id: str
    now: float
    expires_at: float


def record_fingerprints(connection: Connection, prints: Sequence[Fingerprint]) -> list[str | None]:
    """For each in order: None when it was recorded now (its message is new), else the id of
    the message that holds it (a retry: not to be stored).

    One statement for the batch when none was there; of one fingerprint twice in a batch,
    the first wins. Rows go in key order: two nodes' batches never lock each other's keys
    in opposite orders (a deadlock on PostgreSQL).
    """
    if not prints:
        return []
    first: dict[tuple[str, str], Fingerprint] = {}
    for p in prints:
        first.setdefault((p.site_id, p.fingerprint), p)
    rows = [
        {
            "site_id": p.site_id,
            "fingerprint": p.fingerprint,
            "message_id": p.message_id,
            "expires_at": p.expires_at,
        }
        for _, p in sorted(first.items())
    ]
    dialect = connection.dialect.name
    if len(rows) == 1:  # the usual batch: its row count says it all, without a fetch
        inserted = connection.execute(_INSERT[dialect], rows[0]).rowcount == 1
        recorded = set(first) if inserted else set()
    else:
        recorded = {(r.site_id, r.fingerprint) for r in connection.execute(_RECORD[dialect], rows)}
    holders = {k: None if k in recorded else _holder(connection, p) for k, p in first.items()}
    answers = []
    for p in prints:
        lead = first[(p.site_id, p.fingerprint)]
        holder = holders[(p.site_id, p.fingerprint)]
        answers.append(holder if lead is p else holder or lead.message_id)
    return answers


def _holder(connection: Connection, p: Fingerprint) -> str | None:
    """A fingerprint that was there: None when it had expired (now ``p``'s), else its
    message's id. Rare (a retry, or a window's end), so a few statements are fine."""
    key = (c.site_id == p.site_id, c.fingerprint == p.fingerprint)
    for _ in range(3):
        taken_over = connection.execute(
            message_fingerprints.update()
            .where(*key, c.expires_at <= p.now)
            .values(message_id=p.message_id, expires_at=p.expires_at)
        )
        if taken_over.rowcount == 1:
            return None
        holder = connection.scalar(sa.select(c.message_id).where(*key))
        if holder is not None:
            return str(holder)
        # Swept by housekeeping between the two statements: record it afresh.
        row = {
            "site_id": p.site_id,
            "fingerprint": p.fingerprint,
            "message_id": p.message_id,
            "expires_at": p.expires_at,
        }
        if connection.execute(_INSERT[connection.dialect.name], row).rowcount == 1:
            return None
    raise RuntimeError(f"fingerprint {p.fingerprint} of site {p.site_id}: no stable holder")


def forget_fingerprints(connection: Connection, prints: Sequence[Fingerprint]) -> None:
    """Their messages were not stored after all (a site's limit): a retry is new mail."""
    for p in prints:
        connection.execute(
            message_fingerprints.delete().where(
                c.site_id == p.site_id,
                c.fingerprint == p.fingerprint,
                c.message_id == p.message_id,
            )
        )


# Built once, with the rows as parameters (see form_database._RECORD: a statement holding
# them has no cache key and is compiled for every message).
_INSERT = {
    name: dialect.insert(message_fingerprints).on_conflict_do_nothing(
        index_elements=["site_id", "fingerprint"]
    )
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
_RECORD = {name: insert.returning(c.site_id, c.fingerprint) for name, insert in _INSERT.items()}
