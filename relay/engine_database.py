"""SQL for what the delivery engine remembers: circuits and suppressions.

Functions take a connection and return core objects. Usage counters have
their own module (``relay.usage_database``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.health import Circuit, CircuitState
from relay.store import upsert
from relay.tables import suppressions, upstream_health


async def load_circuits(connection: AsyncConnection) -> dict[str, Circuit]:
    rows = await connection.execute(sa.select(upstream_health))
    return {
        row.upstream: Circuit(CircuitState(row.state), row.failures, row.changed_at, row.last_error)
        for row in rows
    }


async def save_circuits(
    connection: AsyncConnection, circuits: dict[str, Circuit], now: float
) -> None:
    rows = [
        {
            "upstream": name,
            "state": c.state.value,
            "failures": c.failures,
            "changed_at": c.changed_at,
            "last_error": c.last_error,
            "updated_at": now,
        }
        for name, c in circuits.items()
    ]
    await connection.run_sync(upsert, upstream_health, rows, ["upstream"])


@dataclass(frozen=True)
class Suppression:
    """An entry the engine writes for its site's list: a hard bounce's by default (a
    provider's complaint says so in ``source``). relay/suppression_database.py has the rest."""

    site_id: str
    address: str
    reason: str
    message_id: str | None
    created_at: float
    source: str = "bounce"  # bounce | complaint | manual | provider | unsubscribe
    expires_at: float | None = None  # None: for good


def add_suppressions(connection: Connection, entries: Sequence[Suppression]) -> None:
    """New entries, or ones that were there (any source) replaced: a hard bounce is for good."""
    rows = [
        {
            "site_id": e.site_id,
            "address": e.address.lower(),
            "reason": e.reason,
            "message_id": e.message_id,
            "created_at": e.created_at,
            "source": e.source,
            "expires_at": e.expires_at,
        }
        for e in entries
    ]
    upsert(connection, suppressions, rows, ["site_id", "address"])


def suppressed(
    connection: Connection, pairs: Iterable[tuple[str, str]], now: float
) -> dict[tuple[str, str], str]:
    """Which (site id, address) pairs are suppressed at ``now``, keyed in lower case, with
    the reason. An entry whose ``expires_at`` has come suppresses no more."""
    wanted = {(site, address.lower()) for site, address in pairs}
    if not wanted:
        return {}
    rows = connection.execute(
        _SUPPRESSED,
        {
            "sites": sorted({site for site, _ in wanted}),
            "addresses": sorted({address for _, address in wanted}),
            "now": now,
        },
    )
    return {(r.site_id, r.address): r.reason for r in rows if (r.site_id, r.address) in wanted}


# Built once: asked for every message delivered, where building the IN clauses
# anew cost about as much as running the query.
_SUPPRESSED = sa.select(
    suppressions.c.site_id, suppressions.c.address, suppressions.c.reason
).where(
    suppressions.c.site_id.in_(sa.bindparam("sites", expanding=True)),
    suppressions.c.address.in_(sa.bindparam("addresses", expanding=True)),
    sa.or_(suppressions.c.expires_at.is_(None), suppressions.c.expires_at > sa.bindparam("now")),
)
