"""SQL for a site's contacts and their tags.

``contacts.tags`` is the list as shown; ``contact_tags`` holds the same tags
one row each (campaigns choose their audience there): every write here that
changes a contact's tags rewrites its ``contact_tags`` rows in the same
transaction. Imports upsert a batch with one INSERT ... ON CONFLICT (site_id,
email) DO UPDATE on SQLite and PostgreSQL alike, whose ``unsubscribed`` only
ever goes from false to true, so an import racing a one-click unsubscribe
never undoes it. The writes are synchronous functions of a ``Connection``:
the controller runs them with ``GroupWriter.write_apart``, off the event loop
and beside the hot writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.catalog_database import AuditEntry, audit_insert
from relay.core.contacts import Fields, Stored, combined, merged
from relay.tables import contact_tags, contacts


@dataclass(frozen=True)
class ContactRow:
    id: int
    site_id: str
    email: str
    first_name: str
    last_name: str
    company: str
    attributes: dict[str, Any]
    tags: list[str]
    unsubscribed: bool
    unsubscribed_at: float | None
    last_email_sent: float | None
    email_count: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Search:
    site_id: str
    tag: str | None = None
    q: str | None = None  # a substring of the email, names or company, any letter case
    unsubscribed: bool | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Upserted:
    added: int
    updated: int
    problems: dict[str, str]  # email -> why it was not stored (too many tags once merged)
    created: frozenset[str]  # the emails that were new


def _row(r: sa.Row[Any]) -> ContactRow:
    return ContactRow(
        r.id,
        r.site_id,
        r.email,
        r.first_name,
        r.last_name,
        r.company,
        dict(r.attributes),
        list(r.tags),
        bool(r.unsubscribed),
        r.unsubscribed_at,
        r.last_email_sent,
        int(r.email_count),
        r.created_at,
        r.updated_at,
    )


# -- reads


def _where(search: Search) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [contacts.c.site_id == search.site_id]
    if search.unsubscribed is not None:
        where.append(contacts.c.unsubscribed == search.unsubscribed)
    if search.tag is not None:
        where.append(contacts.c.id.in_(_tagged(search.site_id, [search.tag])))
    if search.q:
        columns = (
            contacts.c.email,
            contacts.c.first_name,
            contacts.c.last_name,
            contacts.c.company,
        )
        where.append(sa.or_(*(c.icontains(search.q, autoescape=True) for c in columns)))
    return where


def _tagged(site_id: str, tags: Sequence[str]) -> sa.Select[tuple[int]]:
    """The ids of the site's contacts with any of ``tags`` (ix_contact_tags_site_tag)."""
    return sa.select(contact_tags.c.contact_id).where(
        contact_tags.c.site_id == site_id, contact_tags.c.tag.in_(tags)
    )


async def list_contacts(
    connection: AsyncConnection, search: Search
) -> tuple[list[ContactRow], int]:
    """One page in id order (the index ix_contacts_site_id), and how many match."""
    where = _where(search)
    total = await connection.scalar(sa.select(sa.func.count()).select_from(contacts).where(*where))
    rows = await connection.execute(
        sa.select(contacts)
        .where(*where)
        .order_by(contacts.c.id)
        .offset(search.offset)
        .limit(search.limit)
    )
    return [_row(r) for r in rows], int(total or 0)


async def get_contact(connection: AsyncConnection, site_id: str, email: str) -> ContactRow | None:
    row = (
        await connection.execute(
            sa.select(contacts).where(contacts.c.site_id == site_id, contacts.c.email == email)
        )
    ).first()
    return None if row is None else _row(row)


async def contacts_after(
    connection: AsyncConnection,
    site_id: str,
    after_id: int,
    tags: Sequence[str] | None,
    limit: int,
) -> list[ContactRow]:
    """The site's next ``limit`` contacts with an id above ``after_id``, in id order: all of
    them (``tags`` None) or those with any of ``tags``. Unsubscribed ones are included (the
    caller records them as skipped)."""
    where = [contacts.c.site_id == site_id, contacts.c.id > after_id]
    if tags is not None:
        where.append(contacts.c.id.in_(_tagged(site_id, tags)))
    rows = await connection.execute(
        sa.select(contacts).where(*where).order_by(contacts.c.id).limit(limit)
    )
    return [_row(r) for r in rows]


# -- writes (synchronous: GroupWriter.write_apart)


def upsert(connection: Connection, site_id: str, batch: Sequence[Fields], now: float) -> Upserted:
    """Add or update a batch of contacts (one email may come more than once: the later
    values win, tags and attributes add up). What an import stores is
    relay/core/contacts.py's ``merged`` of what was there."""
    given: dict[str, Fields] = {}
    for fields in batch:  # in the file's order: ids, and so lists, follow it
        earlier = given.get(fields.email)
        given[fields.email] = fields if earlier is None else combined(earlier, fields)
    stored = _stored(connection, site_id, list(given))
    values: list[dict[str, Any]] = []
    problems: dict[str, str] = {}
    tagged: dict[str, tuple[str, ...]] = {}  # emails whose tags change -> their tags
    for email, fields in given.items():
        before = stored[email][1] if email in stored else None
        after = merged(before, fields, now)
        if isinstance(after, str):
            problems[email] = after
            continue
        values.append(_values(site_id, email, after, now))
        if before is None or before.tags != after.tags:
            tagged[email] = after.tags
    ids: dict[str, int] = {}
    if values:
        # RETURNING (SQLite 3.35+, PostgreSQL) names the new contacts' ids for their tags.
        ids = dict(connection.execute(_upsert_statement(connection), values).all())
    _retag(connection, site_id, {ids[e]: tags for e, tags in tagged.items()}, stored)
    created = frozenset(e for e in given if e not in stored and e not in problems)
    updated = sum(1 for f in batch if f.email not in problems) - len(created)
    return Upserted(len(created), updated, problems, created)


def _stored(
    connection: Connection, site_id: str, emails: list[str]
) -> dict[str, tuple[int, Stored]]:
    """The stored contacts among ``emails``, with their ids."""
    query = sa.select(contacts).where(contacts.c.site_id == site_id, contacts.c.email.in_(emails))
    if connection.dialect.name == "postgresql":
        # A PATCH of these waits; locked in id order, as any other import locks them.
        query = query.order_by(contacts.c.id).with_for_update()
    return {
        r.email: (
            r.id,
            Stored(
                r.first_name,
                r.last_name,
                r.company,
                dict(r.attributes),
                tuple(r.tags),
                bool(r.unsubscribed),
                r.unsubscribed_at,
                r.created_at,
            ),
        )
        for r in connection.execute(query)
    }


def _values(site_id: str, email: str, after: Stored, now: float) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "email": email,
        "first_name": after.first_name,
        "last_name": after.last_name,
        "company": after.company,
        "attributes": dict(after.attributes),
        "tags": list(after.tags),
        "unsubscribed": after.unsubscribed,
        "unsubscribed_at": after.unsubscribed_at,
        "created_at": after.created_at,
        "updated_at": now,
    }


def _upsert_statement(connection: Connection) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(contacts)
    new = insert.excluded
    return insert.returning(contacts.c.email, contacts.c.id).on_conflict_do_update(
        index_elements=["site_id", "email"],
        set_={
            "first_name": new.first_name,
            "last_name": new.last_name,
            "company": new.company,
            "attributes": new.attributes,
            "tags": new.tags,
            # Never back to false: an unsubscribe that came in since we read the row stays.
            "unsubscribed": sa.or_(contacts.c.unsubscribed, new.unsubscribed),
            "unsubscribed_at": sa.func.coalesce(contacts.c.unsubscribed_at, new.unsubscribed_at),
            "updated_at": new.updated_at,
        },
    )


def _retag(
    connection: Connection,
    site_id: str,
    tagged: Mapping[int, Iterable[str]],
    had_rows: Iterable[Any] = (None,),
) -> None:
    """Rewrite the contact_tags rows of the contacts ``tagged`` (by id) names; with no
    ``had_rows`` (none of them existed before) there are none to delete."""
    if not tagged:
        return
    if had_rows:
        delete = contact_tags.delete().where(contact_tags.c.contact_id.in_(list(tagged)))
        connection.execute(delete)
    rows = [
        {"contact_id": contact_id, "tag": tag, "site_id": site_id}
        for contact_id, tags in tagged.items()
        for tag in tags
    ]
    if rows:
        connection.execute(contact_tags.insert(), rows)


def update(
    connection: Connection, site_id: str, email: str, values: Mapping[str, Any], now: float
) -> ContactRow | None:
    """Set columns of one contact (a PATCH: tags and attributes replaced whole); None when
    there is no such contact. ``unsubscribed`` sets or clears ``unsubscribed_at``."""
    row = connection.execute(
        sa.select(contacts).where(contacts.c.site_id == site_id, contacts.c.email == email)
    ).first()
    if row is None:
        return None
    changes: dict[str, Any] = {**values, "updated_at": now}
    if "tags" in values:
        changes["tags"] = list(values["tags"])
    if "unsubscribed" in values and values["unsubscribed"] != row.unsubscribed:
        changes["unsubscribed_at"] = now if values["unsubscribed"] else None
    connection.execute(contacts.update().where(contacts.c.id == row.id).values(**changes))
    if "tags" in values:
        _retag(connection, site_id, {row.id: values["tags"]})
    after = connection.execute(sa.select(contacts).where(contacts.c.id == row.id)).one()
    return _row(after)


def delete(connection: Connection, site_id: str, email: str) -> bool:
    found = connection.scalar(
        sa.select(contacts.c.id).where(contacts.c.site_id == site_id, contacts.c.email == email)
    )
    if found is None:
        return False
    connection.execute(contact_tags.delete().where(contact_tags.c.contact_id == found))
    connection.execute(contacts.delete().where(contacts.c.id == found))
    return True


async def delete_site_contacts(connection: AsyncConnection, site_id: str) -> int:
    """Every contact of a deleted site, with its tags; how many there were."""
    await connection.execute(contact_tags.delete().where(contact_tags.c.site_id == site_id))
    result = await connection.execute(contacts.delete().where(contacts.c.site_id == site_id))
    return int(result.rowcount or 0)


def add_audit(connection: Connection, entry: AuditEntry) -> None:
    """catalog_database.add_audit for a synchronous job."""
    connection.execute(audit_insert(entry))
