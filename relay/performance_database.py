"""The upstreams' measured performance in the store (``core.performance``).

Written in the transaction that records the delivery passes
(``queue_database.record_deliveries``): one upsert per upstream per batch,
``old * keep + add``, so concurrent nodes' samples all count.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.performance import Batch, Performance
from relay.tables import upstream_performance as table


def record_performance(connection: Connection, batches: list[Batch], now: float) -> None:
    if not batches:
        return
    connection.execute(
        _upsert(connection.dialect.name),
        [
            {
                "p_upstream": b.upstream,
                "p_first_success": b.add_success / (1.0 - b.keep),
                "p_first_latency": b.add_latency / (1.0 - b.keep),
                "p_keep": b.keep,
                "p_add_success": b.add_success,
                "p_add_latency": b.add_latency,
                "p_samples": b.samples,
                "p_now": now,
            }
            for b in sorted(batches, key=lambda b: b.upstream)  # one lock order: no deadlock
        ],
    )


@functools.cache
def _upsert(dialect_name: str) -> sa.Executable:
    """Built once per dialect, like the rollups' (``rollup_database._upsert``)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    keep = sa.bindparam("p_keep", type_=sa.Float)
    statement = dialect.insert(table).values(
        upstream=sa.bindparam("p_upstream"),
        success_rate=sa.bindparam("p_first_success", type_=sa.Float),
        latency_seconds=sa.bindparam("p_first_latency", type_=sa.Float),
        samples=sa.bindparam("p_samples", type_=sa.Integer),
        updated_at=sa.bindparam("p_now", type_=sa.Float),
    )
    upsert: sa.Executable = statement.on_conflict_do_update(
        index_elements=["upstream"],
        set_={
            "success_rate": table.c.success_rate * keep
            + sa.bindparam("p_add_success", type_=sa.Float),
            "latency_seconds": table.c.latency_seconds * keep
            + sa.bindparam("p_add_latency", type_=sa.Float),
            "samples": table.c.samples + statement.excluded.samples,
            "updated_at": statement.excluded.updated_at,
        },
    )
    return upsert


async def load_performance(connection: AsyncConnection) -> dict[str, Performance]:
    rows = await connection.execute(sa.select(table))
    return {
        r.upstream: Performance(r.success_rate, r.latency_seconds, r.samples, r.updated_at)
        for r in rows
    }
