"""SQL for the send API's Idempotency-Key claims (table ``idempotency_keys``).

A claim is one row per (site, key), taken by an INSERT that does nothing on
a conflict: of requests racing for a key, on any node, exactly one inserts
it. A row without ``message_id`` is a claim whose request has no answer yet.
SQLite and PostgreSQL alike (their shared ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from relay.core.idempotency import ABANDONED_SECONDS, KEEP_SECONDS
from relay.tables import idempotency_keys as keys


def claim(
    connection: Connection, site_id: str, key: str, body_hash: str, now: float
) -> tuple[str, Any] | None:
    """None when this call took the key; else the holder's (body hash, answer or None)."""
    mine = (keys.c.site_id == site_id, keys.c.key == key)
    # An expired claim, or one its request abandoned (a crash), no longer holds the key.
    connection.execute(
        keys.delete().where(
            *mine,
            sa.or_(
                keys.c.expires_at <= now,
                sa.and_(keys.c.message_id.is_(None), keys.c.created_at <= now - ABANDONED_SECONDS),
            ),
        )
    )
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    inserted = connection.execute(
        dialect.insert(keys)
        .values(
            site_id=site_id,
            key=key,
            body_hash=body_hash,
            created_at=now,
            expires_at=now + KEEP_SECONDS,
        )
        .on_conflict_do_nothing(index_elements=["site_id", "key"])
    )
    if inserted.rowcount == 1:
        return None
    row = connection.execute(
        sa.select(keys.c.body_hash, keys.c.message_id, keys.c.answer).where(*mine)
    ).first()
    if row is None:  # given back between the two statements (PostgreSQL): still somebody's
        return body_hash, None
    return row.body_hash, row.answer if row.message_id is not None else None


@dataclass(frozen=True)
class Answer:
    """A claimed key's answer, written in the transaction that stores its message
    (``queue_database.Admission.answer``): a crash never leaves the message without it."""

    site_id: str
    key: str
    message_id: str
    answer: dict[str, Any]  # relay.core.idempotency.stored_answer


def record_answers(connection: Connection, answers: Sequence[Answer]) -> None:
    """Each claim's answer; a claim no longer there (given up, taken over) is left alone."""
    rows = [
        {"b_site": a.site_id, "b_key": a.key, "message_id": a.message_id, "answer": a.answer}
        for a in answers
    ]
    if rows:
        connection.execute(_RECORD_ANSWER, rows)


def release(connection: Connection, site_id: str, key: str, body_hash: str) -> None:
    """Give back a claim that got no answer (the message was refused): a retry may succeed."""
    connection.execute(
        keys.delete().where(
            keys.c.site_id == site_id,
            keys.c.key == key,
            keys.c.body_hash == body_hash,
            keys.c.message_id.is_(None),
        )
    )


# Built once: the executemany of record_answers.
_RECORD_ANSWER = (
    keys.update()
    .where(
        keys.c.site_id == sa.bindparam("b_site"),
        keys.c.key == sa.bindparam("b_key"),
        keys.c.message_id.is_(None),
    )
    .values(message_id=sa.bindparam("message_id"), answer=sa.bindparam("answer"))
)
