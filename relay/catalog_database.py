"""SQL for the sites, credentials and upstreams created through the admin API, and the audit log.

Sites and upstreams are kept as the JSON they were given (validated by the
same rules as the YAML file, and parsed again on load); an upstream's
password is stored apart from it, sealed with the installation's key.
Deleting an upstream is soft: attempts and stats keep its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store import upsert
from relay.tables import audit_log, site_credentials, sites, upstreams


@dataclass(frozen=True)
class StoredUpstream:
    name: str
    spec: dict[str, Any]  # as given through the API, without the password
    sealed_password: bytes | None
    active: bool
    deleted_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredSite:
    id: str
    spec: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredCredential:
    username: str
    site_id: str
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class AuditEntry:
    at: float
    token: str  # the token's name, never the token
    action: str
    kind: str
    target: str
    detail: dict[str, Any]  # secrets masked


async def load_upstreams(connection: AsyncConnection) -> list[StoredUpstream]:
    rows = await connection.execute(sa.select(upstreams).order_by(upstreams.c.name))
    return [
        StoredUpstream(
            r.name,
            dict(r.spec),
            r.password_encrypted,
            r.active,
            r.deleted_at,
            r.created_at,
            r.updated_at,
        )
        for r in rows
    ]


async def put_upstream(connection: AsyncConnection, stored: StoredUpstream) -> None:
    row = {
        "name": stored.name,
        "spec": stored.spec,
        "password_encrypted": stored.sealed_password,
        "active": stored.active,
        "deleted_at": stored.deleted_at,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }
    await connection.run_sync(upsert, upstreams, [row], ["name"])


async def load_sites(connection: AsyncConnection) -> list[StoredSite]:
    rows = await connection.execute(sa.select(sites).order_by(sites.c.id))
    return [StoredSite(r.id, dict(r.spec), r.created_at, r.updated_at) for r in rows]


async def put_site(connection: AsyncConnection, stored: StoredSite) -> None:
    row = {
        "id": stored.id,
        "spec": stored.spec,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }
    await connection.run_sync(upsert, sites, [row], ["id"])


async def delete_site(connection: AsyncConnection, site_id: str) -> bool:
    await connection.execute(site_credentials.delete().where(site_credentials.c.site_id == site_id))
    result = await connection.execute(sites.delete().where(sites.c.id == site_id))
    return bool(result.rowcount)


async def load_credentials(connection: AsyncConnection) -> list[StoredCredential]:
    rows = await connection.execute(
        sa.select(site_credentials).order_by(site_credentials.c.username)
    )
    return [StoredCredential(r.username, r.site_id, r.password_hash, r.created_at) for r in rows]


async def add_credential(connection: AsyncConnection, credential: StoredCredential) -> None:
    await connection.execute(
        site_credentials.insert().values(
            username=credential.username,
            site_id=credential.site_id,
            password_hash=credential.password_hash,
            created_at=credential.created_at,
        )
    )


async def delete_credential(connection: AsyncConnection, site_id: str, username: str) -> bool:
    result = await connection.execute(
        site_credentials.delete().where(
            site_credentials.c.site_id == site_id, site_credentials.c.username == username
        )
    )
    return bool(result.rowcount)


async def add_audit(connection: AsyncConnection, entry: AuditEntry) -> None:
    await connection.execute(audit_insert(entry))


def audit_insert(entry: AuditEntry) -> sa.Insert:
    """The statement that records ``entry`` (for a synchronous job too)."""
    return audit_log.insert().values(
        at=entry.at,
        token=entry.token,
        action=entry.action,
        kind=entry.kind,
        target=entry.target,
        detail=entry.detail,
    )


async def list_audit(
    connection: AsyncConnection, page: int, page_size: int
) -> tuple[list[AuditEntry], int]:
    """Newest first."""
    total = await connection.scalar(sa.select(sa.func.count()).select_from(audit_log))
    rows = await connection.execute(
        sa.select(audit_log)
        .order_by(audit_log.c.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    entries = [AuditEntry(r.at, r.token, r.action, r.kind, r.target, dict(r.detail)) for r in rows]
    return entries, int(total or 0)
