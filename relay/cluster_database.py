"""SQL for the versions nodes poll (``cluster_versions``): one row per shared thing.

A bump is an upsert that adds one, so concurrent bumps from several nodes
are each counted (PostgreSQL orders them on the row's lock, SQLite has one
writer). Reading every version is one small SELECT.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.tables import cluster_versions


async def bump(connection: AsyncConnection, name: str, now: float) -> int:
    """Add one to ``name``'s version in the caller's transaction; the new version."""
    return await connection.run_sync(_bump, name, now)


def _bump(connection: Connection, name: str, now: float) -> int:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(cluster_versions).values(name=name, version=1, changed_at=now)
    statement = insert.on_conflict_do_update(
        index_elements=["name"],
        set_={"version": cluster_versions.c.version + 1, "changed_at": insert.excluded.changed_at},
    ).returning(cluster_versions.c.version)
    return int(connection.execute(statement).scalar_one())


async def versions(connection: AsyncConnection) -> dict[str, int]:
    rows = await connection.execute(sa_select(cluster_versions.c.name, cluster_versions.c.version))
    return {name: int(version) for name, version in rows}
