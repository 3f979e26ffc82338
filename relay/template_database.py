"""SQL for the templates made through the admin API (the file's are in the YAML).

A row holds the parts as given, checked before they were written
(relay/template_controller.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.templates import Template
from relay.store import upsert
from relay.tables import templates


@dataclass(frozen=True)
class StoredTemplate:
    template: Template
    created_at: float
    updated_at: float


async def load_templates(connection: AsyncConnection) -> list[StoredTemplate]:
    rows = await connection.execute(sa.select(templates).order_by(templates.c.name))
    return [
        StoredTemplate(Template(r.name, r.subject, r.text, r.html), r.created_at, r.updated_at)
        for r in rows
    ]


async def updated_times(connection: AsyncConnection) -> dict[str, float]:
    """When each stored template last changed, by name (without reading the parts)."""
    rows = await connection.execute(sa.select(templates.c.name, templates.c.updated_at))
    return {r.name: r.updated_at for r in rows}


async def find_template(connection: AsyncConnection, name: str) -> StoredTemplate | None:
    rows = await connection.execute(sa.select(templates).where(templates.c.name == name))
    r = rows.first()
    if r is None:
        return None
    return StoredTemplate(Template(r.name, r.subject, r.text, r.html), r.created_at, r.updated_at)


async def put_template(connection: AsyncConnection, stored: StoredTemplate) -> None:
    t = stored.template
    row = {
        "name": t.name,
        "subject": t.subject,
        "text": t.text,
        "html": t.html,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }
    await connection.run_sync(upsert, templates, [row], ["name"])


async def delete_template(connection: AsyncConnection, name: str) -> bool:
    result = await connection.execute(templates.delete().where(templates.c.name == name))
    return bool(result.rowcount)
