"""SQL for the send API keys made through the admin API (table ``api_keys``).

Only a key's SHA-256 hash is stored (relay/core/tokens.py), never the key.
``last_used_at`` is written apart from the catalog's version: a use is not a
change that every node must load.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.model import ApiKey
from relay.tables import api_keys


@dataclass(frozen=True)
class StoredApiKey:
    site_id: str
    name: str
    key_hash: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None

    def api_key(self) -> ApiKey:
        return ApiKey(self.name, self.key_hash, self.site_id, self.expires_at)


async def load_api_keys(
    connection: AsyncConnection, site_id: str | None = None
) -> list[StoredApiKey]:
    query = sa.select(api_keys).order_by(api_keys.c.site_id, api_keys.c.name)
    if site_id is not None:
        query = query.where(api_keys.c.site_id == site_id)
    return [
        StoredApiKey(r.site_id, r.name, r.key_hash, r.created_at, r.expires_at, r.last_used_at)
        for r in await connection.execute(query)
    ]


async def add_api_key(connection: AsyncConnection, key: StoredApiKey) -> None:
    """Raises IntegrityError when the site has a key of that name."""
    await connection.execute(
        api_keys.insert().values(
            site_id=key.site_id,
            name=key.name,
            key_hash=key.key_hash,
            created_at=key.created_at,
            expires_at=key.expires_at,
        )
    )


async def delete_api_key(connection: AsyncConnection, site_id: str, name: str) -> bool:
    result = await connection.execute(
        api_keys.delete().where(api_keys.c.site_id == site_id, api_keys.c.name == name)
    )
    return bool(result.rowcount)


async def delete_site_keys(connection: AsyncConnection, site_id: str) -> None:
    await connection.execute(api_keys.delete().where(api_keys.c.site_id == site_id))


def touch(connection: Connection, key_hash: str, now: float) -> None:
    """Record a use (a key from the file has no row: nothing happens)."""
    connection.execute(
        api_keys.update().where(api_keys.c.key_hash == key_hash).values(last_used_at=now)
    )
