"""The suppression list's use cases: list, add and remove (admin API), and the checks of
RCPT and of the send API.

A RCPT of a site that has entries asks the store: one primary-key lookup, no
cache, so an entry added or removed through any node counts at once on
every node. Whether a site has entries at all is asked again at most every
``SITES_SECONDS`` (one index probe per site; at once here when this process
adds one, through the API or a bounce): a lookup
under load cost about 0.15 ms of CPU per message (the read releases the GIL
on the event loop), and most sites have no entries. So a site's very first
entry reaches the RCPT of other processes within that time; meanwhile the
store's check when the message is accepted, which is exact, fails that
recipient without an attempt. A check that fails or takes over
``LOOKUP_SECONDS`` is a temporary failure (451), never a 5xx. Admin changes
are written with their audit entry in one transaction. Adding an address
that is already listed replaces its reason, source and expiry (200); a new
entry answers 201.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from relay import catalog_database
from relay import suppression_database as db
from relay.api_key_controller import parse_moment
from relay.catalog_controller import Invalid, NotFound
from relay.core.addresses import control_character, is_address
from relay.core.directory import Directory
from relay.core.policy import SUPPRESSION_LOOKUP_FAILED, TempFail
from relay.queue_database import DeliveryRecord
from relay.store import GroupWriter

log = logging.getLogger(__name__)
SOURCES = ("bounce", "complaint", "manual", "provider", "unsubscribe")
LOOKUP_SECONDS = 5.0  # a RCPT's check: past this the client is told to try again (451)
SITES_SECONDS = 1.0  # how old "this site has (no) entries" may be
MAX_REASON_CHARS = 500
_KEYS = ("site", "address", "reason", "source", "expires_at")


@dataclass(frozen=True)
class Added:
    entry: db.Entry
    created: bool  # False: the address was listed; its reason, source and expiry replaced


class SuppressionController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        clock: Callable[[], float],
        lookup_seconds: float = LOOKUP_SECONDS,
    ) -> None:
        self._writer = writer
        self._directory = directory
        self._clock = clock
        self._lookup_seconds = lookup_seconds
        # site id -> (whether it has entries, time.monotonic() of that answer); the sites
        # of the directory that reached a RCPT, so as many as there are sites.
        self._has_entries: dict[str, tuple[bool, float]] = {}

    # -- the admin API

    async def list(self, search: db.Search) -> tuple[list[db.Entry], int]:
        async with self._writer.engine.connect() as connection:
            return await db.list_entries(connection, search)

    async def add(self, actor: str, body: Mapping[str, Any]) -> Added:
        now = self._clock()
        entry = self._parse(body, now)

        async def write(c: AsyncConnection) -> Added:
            before = await db.put_entry(c, entry)
            action = "create" if before is None else "update"
            detail = {
                "reason": entry.reason,
                "source": entry.source,
                "expires_at": entry.expires_at,
            }
            await self._audit(c, actor, action, entry, detail)
            if before is None:
                return Added(entry, True)
            kept = replace(entry, created_at=before.created_at, message_id=before.message_id)
            return Added(kept, False)

        added = await self._writer.write(write)
        self._note_listed(entry.site_id)
        log.info(
            "suppression %s/%s: %s by %s (%s)",
            entry.site_id,
            entry.address,
            "added" if added.created else "replaced",
            actor,
            entry.source,
        )
        return added

    async def delete(self, actor: str, site_id: str, address: str) -> None:
        async def write(c: AsyncConnection) -> None:
            before = await db.remove_entry(c, site_id, address)
            if before is None:
                raise NotFound(f"site {site_id!r} has no suppression for {address.lower()!r}")
            detail = {"reason": before.reason, "source": before.source}
            await self._audit(c, actor, "delete", before, detail)

        await self._writer.write(write)
        log.info("suppression %s/%s: removed by %s", site_id, address.lower(), actor)

    # -- the checks of the ingress

    async def check(self, site_id: str, address: str) -> str | TempFail | None:
        """RCPT: why the recipient is suppressed, a 451 when the store did not say in time,
        or None (send)."""
        try:
            async with asyncio.timeout(self._lookup_seconds):
                if not await self._site_has_entries(site_id):
                    return None
                reason = await self._writer.read_now(
                    partial(db.reason_for, site_id=site_id, address=address, now=self._clock())
                )
        except Exception as error:  # the store is away or slow: the client tries again
            log.warning("site %s: suppression check failed: %s", site_id, type(error).__name__)
            return SUPPRESSION_LOOKUP_FAILED
        return reason

    async def reasons(self, site_id: str, addresses: Sequence[str]) -> dict[str, str]:
        """The send API: which of ``addresses`` (as given) are suppressed, with the reasons.
        Raises when the store fails (the request is answered 503)."""
        async with asyncio.timeout(self._lookup_seconds):
            found = await self._writer.read_now(
                partial(db.reasons_for, site_id=site_id, addresses=addresses, now=self._clock())
            )
        return {a: found[a.lower()] for a in addresses if a.lower() in found}

    def on_event(self, event: object) -> None:
        """The relay's events: a delivery that put recipients on the list (a hard bounce)."""
        if isinstance(event, DeliveryRecord):
            for entry in event.suppress:
                self._note_listed(entry.site_id)

    def note_listed(self, site_id: str) -> None:
        """This process has just put an address of the site on its list (a provider's bounce
        or complaint): its RCPTs ask the store from now on."""
        self._note_listed(site_id)

    def _note_listed(self, site_id: str) -> None:
        self._has_entries[site_id] = (True, time.monotonic())

    async def _site_has_entries(self, site_id: str) -> bool:
        now = time.monotonic()
        known = self._has_entries.get(site_id)
        if known is None or now - known[1] >= SITES_SECONDS:
            found = await self._writer.read_now(partial(db.has_entries, site_id=site_id))
            known = self._has_entries[site_id] = (found, now)
        return known[0]

    # -- helpers

    def _parse(self, body: Mapping[str, Any], now: float) -> db.Entry:
        """The entry of a POST body, or Invalid with every problem."""
        problems = [f"suppression.{k}: unknown key" for k in body if k not in _KEYS]
        site = body.get("site")
        if not isinstance(site, str) or not site:
            problems.append("suppression.site: required, a site id")
        elif self._directory().site(site) is None:
            problems.append(f"suppression.site: no site {site[:64]!r}")
        address = body.get("address")
        if not isinstance(address, str) or not is_address(address):
            problems.append("suppression.address: required, an email address")
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            problems.append("suppression.reason: required, a text")
        elif len(reason) > MAX_REASON_CHARS or control_character(reason):
            problems.append(
                f"suppression.reason: at most {MAX_REASON_CHARS} characters, no control characters"
            )
        source = body.get("source", "manual")
        if source not in SOURCES:
            problems.append(f"suppression.source: one of {', '.join(SOURCES)}")
        expires_at = parse_moment(body.get("expires_at"))
        if isinstance(expires_at, str):
            problems.append(f"suppression.expires_at: {expires_at}")
        elif expires_at is not None and expires_at <= now:
            problems.append("suppression.expires_at: must be in the future")
        if problems:
            raise Invalid(problems)
        assert isinstance(site, str) and isinstance(address, str) and isinstance(reason, str)
        assert isinstance(source, str) and not isinstance(expires_at, str)
        return db.Entry(site, address.lower(), reason.strip(), source, None, now, expires_at)

    async def _audit(
        self,
        c: AsyncConnection,
        actor: str,
        action: str,
        entry: db.Entry,
        detail: dict[str, Any],
    ) -> None:
        target = f"{entry.site_id}/{entry.address}"
        audit = catalog_database.AuditEntry(
            self._clock(), actor, action, "suppression", target, detail
        )
        await catalog_database.add_audit(c, audit)
