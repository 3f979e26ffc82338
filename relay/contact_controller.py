"""A site's contacts: list, add or update (one, many, or a streamed CSV), change, delete.

Imports are written in batches of ``BATCH_ROWS``, each its own transaction
through ``GroupWriter.write_apart`` (off the event loop; the hot writes wait
at most for one batch). A CSV body is read chunk by chunk and parsed as it
comes (relay/core/csv_stream.py), so an import holds one chunk and one batch
in memory whatever its size. When the body breaks off (the client goes away,
or it passes ``MAX_CSV_BYTES``) the batches committed before stay, the rows
read since are dropped, and the audit log says how far it got: sending the
file again is safe, an import being an upsert. The contacts a site has live
in the store, whether the site is the file's or the API's.

Every change has its audit entry: one per contact changed by PATCH or DELETE
or added alone, one per import (its counts).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection

from relay import contact_database as db
from relay.catalog_controller import Invalid, NotFound
from relay.catalog_database import AuditEntry
from relay.core.contacts import (
    Fields,
    Header,
    check_contact,
    check_email,
    check_header,
    check_patch,
    check_row,
)
from relay.core.csv_stream import CsvStream, Record
from relay.core.directory import Directory
from relay.store import GroupWriter

log = logging.getLogger(__name__)
BATCH_ROWS = 500  # a transaction's rows: it holds SQLite's write lock ~50 ms (median, busy box)
MAX_PROBLEMS = 1000  # problems listed in an import's answer; the rest are counted
MAX_CSV_BYTES = 64 * 1024 * 1024


class TooLarge(Exception):
    """The CSV body passed MAX_CSV_BYTES (HTTP 413)."""


@dataclass
class Tally:
    """An import's running count, readable after it broke off."""

    added: int = 0
    updated: int = 0
    rejected: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    more_problems: int = 0
    complete: bool = False

    def reject(self, where: str, position: int, email: str, problem: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({where: position, "email": email[:256], "problem": problem})
        else:
            self.more_problems += 1

    def answer(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "rejected": self.rejected,
            "problems": self.problems,
            "more_problems": self.more_problems,
        }


Batch = list[tuple[int, str, Fields]]  # (row or index, "row" | "index", fields)


class ContactController:
    def __init__(
        self, writer: GroupWriter, directory: Callable[[], Directory], clock: Callable[[], float]
    ) -> None:
        self._writer = writer
        self._directory = directory
        self._clock = clock

    def _site(self, site_id: str) -> str:
        if self._directory().site(site_id) is None:
            raise NotFound(f"no site {site_id!r}")
        return site_id

    def _email(self, site_id: str, email: str) -> str:
        """The contact's key in a URL, lower-cased; 404 when it cannot be one."""
        self._site(site_id)
        checked = check_email(email)
        if checked is None:
            raise NotFound(f"site {site_id!r} has no contact {email[:256]!r}")
        return checked

    # -- reads

    async def search(self, search: db.Search) -> tuple[list[db.ContactRow], int]:
        self._site(search.site_id)
        async with self._writer.engine.connect() as connection:
            return await db.list_contacts(connection, search)

    async def get(self, site_id: str, email: str) -> db.ContactRow:
        email = self._email(site_id, email)
        async with self._writer.engine.connect() as connection:
            found = await db.get_contact(connection, site_id, email)
        if found is None:
            raise NotFound(f"site {site_id!r} has no contact {email!r}")
        return found

    # -- writes

    async def add_one(self, actor: str, site_id: str, body: Mapping[str, Any]) -> bool:
        """One contact object: True when it was new, False when it was there (updated), or
        Invalid with its problems."""
        self._site(site_id)
        fields = check_contact(body)
        if isinstance(fields, list):
            raise Invalid(fields)
        now = self._clock()

        def job(c: Connection) -> bool:
            done = db.upsert(c, site_id, [fields], now)
            if done.problems:
                raise Invalid(list(done.problems.values()))
            action = "create" if done.added else "update"
            db.add_audit(c, self._entry(actor, action, site_id, fields.email, {}))
            return bool(done.added)

        return await self._writer.write_apart(job)

    async def add_many(self, actor: str, site_id: str, items: list[Any]) -> Tally:
        """``{"contacts": [...]}``: the good ones stored, the others reported by index."""
        self._site(site_id)
        tally = Tally()
        batch: Batch = []
        for index, item in enumerate(items):
            fields = check_contact(item)
            if isinstance(fields, list):
                email = item.get("email") if isinstance(item, dict) else None
                tally.reject("index", index, str(email or ""), "; ".join(fields))
                continue
            batch.append((index, "index", fields))
            if len(batch) >= BATCH_ROWS:
                await self._write(site_id, batch, tally)
                batch = []
        await self._write(site_id, batch, tally)
        tally.complete = True
        await self._audit_import(actor, site_id, tally, "JSON")
        return tally

    async def import_csv(
        self, actor: str, site_id: str, chunks: AsyncIterator[bytes], tally: Tally
    ) -> None:
        """A CSV body with a header row, read as it arrives. Counts go to ``tally`` as
        batches commit; a header without an ``email`` column is Invalid (nothing stored)."""
        self._site(site_id)
        stream = CsvStream()
        header: Header | None = None
        batch: Batch = []
        try:
            async for chunk in chunks:
                for record in stream.feed(chunk):
                    header = self._take(record, header, batch, tally)
                    if len(batch) >= BATCH_ROWS:
                        await self._write(site_id, batch, tally)
                        batch = []
            for record in stream.end():
                header = self._take(record, header, batch, tally)
            if header is None:
                raise Invalid(["the CSV has no header row"])
            await self._write(site_id, batch, tally)
            tally.complete = True
        finally:
            if header is not None:
                await self._audit_import(actor, site_id, tally, "CSV")

    def _take(self, record: Record, header: Header | None, batch: Batch, tally: Tally) -> Header:
        """One CSV record: the header, or a row into ``batch`` or ``tally``'s problems."""
        if header is None:
            if record.problem:
                raise Invalid([f"header: {record.problem}"])
            checked = check_header(record.cells)
            if isinstance(checked, list):
                raise Invalid(checked)
            return checked
        if record.problem:
            tally.reject("row", record.row, "", record.problem)
        elif any(cell.strip() for cell in record.cells):  # blank lines are no rows
            fields = check_row(header, record.cells)
            if isinstance(fields, str):
                email = record.cells[header.email] if header.email < len(record.cells) else ""
                tally.reject("row", record.row, email.strip(), fields)
            else:
                batch.append((record.row, "row", fields))
        return header

    async def _write(self, site_id: str, batch: Batch, tally: Tally) -> None:
        if not batch:
            return
        job = partial(db.upsert, site_id=site_id, batch=[f for _, _, f in batch], now=self._clock())
        done = await self._writer.write_apart(job)
        tally.added += done.added
        tally.updated += done.updated
        for position, where, fields in batch:
            if fields.email in done.problems:
                tally.reject(where, position, fields.email, done.problems[fields.email])

    async def update(
        self, actor: str, site_id: str, email: str, body: Mapping[str, Any]
    ) -> db.ContactRow:
        """A PATCH: names, ``attributes`` and ``tags`` replaced, ``unsubscribed`` set or
        cleared (an admin re-subscribing someone)."""
        email = self._email(site_id, email)
        patch = check_patch(body, email)
        if isinstance(patch, list):
            raise Invalid(patch)
        now = self._clock()

        def job(c: Connection) -> db.ContactRow:
            after = db.update(c, site_id, email, patch.values, now)
            if after is None:
                raise NotFound(f"site {site_id!r} has no contact {email!r}")
            db.add_audit(c, self._entry(actor, "update", site_id, email, dict(patch.values)))
            return after

        after = await self._writer.write_apart(job)
        if "unsubscribed" in patch.values:
            log.info(
                "contact %s/%s: %s by %s",
                site_id,
                email,
                "unsubscribed" if patch.values["unsubscribed"] else "re-subscribed",
                actor,
            )
        return after

    async def delete(self, actor: str, site_id: str, email: str) -> None:
        email = self._email(site_id, email)

        def job(c: Connection) -> None:
            if not db.delete(c, site_id, email):
                raise NotFound(f"site {site_id!r} has no contact {email!r}")
            db.add_audit(c, self._entry(actor, "delete", site_id, email, {}))

        await self._writer.write_apart(job)

    # -- the audit log

    def _entry(
        self, actor: str, action: str, site_id: str, email: str, detail: dict[str, Any]
    ) -> AuditEntry:
        return AuditEntry(self._clock(), actor, action, "contact", f"{site_id}/{email}", detail)

    async def _audit_import(self, actor: str, site_id: str, tally: Tally, source: str) -> None:
        detail = {
            "source": source,
            "added": tally.added,
            "updated": tally.updated,
            "rejected": tally.rejected,
            "complete": tally.complete,
        }
        entry = AuditEntry(self._clock(), actor, "import", "contacts", site_id, detail)
        await self._writer.write_apart(partial(db.add_audit, entry=entry))
        log.info(
            "contacts of site %s: %s import by %s: %d added, %d updated, %d rejected%s",
            site_id,
            source,
            actor,
            tally.added,
            tally.updated,
            tally.rejected,
            "" if tally.complete else " (broken off)",
        )
