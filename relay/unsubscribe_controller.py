"""One-click unsubscribe (RFC 8058): what the link of a campaign message does.

A token's signature is checked first (core.unsubscribe.read: one HMAC, no store access), so a
flood of forged or altered links costs the relay one HMAC each. A genuine token is looked up
(relay/unsubscribe_database.py); `unsubscribe` then marks the contact unsubscribed and writes
``message.unsubscribed`` to the webhook outbox in ONE transaction, only when the contact was
still subscribed: a second post, or two at once on two nodes, changes and reports nothing
more. `look` only reads: it is what GET and HEAD show (mail scanners follow links; RFC 8058
section 3.2 says the GET must not unsubscribe).

Unsubscribing is about campaign mail only: the address is not put on the site's suppression
list, so the site's transactional mail (receipts, password resets) still reaches it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from relay import unsubscribe_database as db
from relay.core.directory import Directory
from relay.core.outbound_events import EventType, Subscriptions
from relay.core.unsubscribe import Unsubscribe, read, unsubscribed_event
from relay.metrics import Metrics
from relay.outbox_database import add_to_outbox
from relay.store import GroupWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contact:
    """Whom a link unsubscribes, as the page shows it."""

    site_id: str
    site_name: str  # the site's name, or its id when the site is gone from the directory
    email: str
    unsubscribed: bool  # after the request: a POST that was answered always leaves it True
    changed: bool = False  # this request unsubscribed it (a POST's first)


class UnsubscribeController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        key: bytes,
        metrics: Metrics,
        clock: Callable[[], float],
        *,
        subscriptions: Callable[[], Subscriptions] = Subscriptions,
        outbox_written: Callable[[], None] = lambda: None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._writer = writer
        self._directory = directory
        self._key = key  # form_token.derive_key(secret, b"unsubscribe"): relay/app.py
        self._metrics = metrics
        self._clock = clock
        self._subscriptions = subscriptions
        self._outbox_written = outbox_written  # the webhooks' worker: send them now
        self._random = random_bytes

    async def look(self, token: str) -> Contact | None:
        """Whom ``token`` would unsubscribe, and whether they already are; None: not ours."""
        verified = self._verify(token)
        if verified is None:
            return None
        found = await self._writer.read_now(lambda c: db.find_recipient(c, verified))
        if found is None:
            self._metrics.unsubscribe_refusals.labels("unknown").inc()
            return None
        return self._contact(found, unsubscribed=found.unsubscribed, changed=False)

    async def unsubscribe(self, token: str) -> Contact | None:
        """Unsubscribe whom ``token`` names; None (and nothing changed) when it is not ours."""
        verified = self._verify(token)
        if verified is None:
            return None
        now = self._clock()
        subscriptions = self._subscriptions()

        def job(connection: Connection) -> tuple[db.Recipient, bool] | None:
            found = db.find_recipient(connection, verified)
            if found is None:
                return None
            if found.unsubscribed or not db.mark_unsubscribed(connection, found.contact_id, now):
                return found, False
            if subscriptions.wants_any(EventType.UNSUBSCRIBED):
                event = unsubscribed_event(
                    now,
                    self._random(10),
                    site=found.site_id,
                    recipient=found.email,
                    campaign_id=found.campaign_id,
                    message_id=found.message_id,
                )
                add_to_outbox(connection, subscriptions.fan_out([event]))
            return found, True

        result = await self._writer.write_sync(job)
        if result is None:
            self._metrics.unsubscribe_refusals.labels("unknown").inc()
            return None
        found, changed = result
        if changed:
            self._outbox_written()
            self._metrics.unsubscribes.labels(found.site_id).inc()
            log.info(
                "contact %s of site %s unsubscribed through campaign %s (message %s)",
                found.contact_id,
                found.site_id,
                found.campaign_id,
                found.message_id,
            )
        return self._contact(found, unsubscribed=True, changed=changed)

    def _verify(self, token: str) -> Unsubscribe | None:
        verified = read(self._key, token)
        if verified is None:
            self._metrics.unsubscribe_refusals.labels("forged").inc()
        return verified

    def _contact(self, found: db.Recipient, *, unsubscribed: bool, changed: bool) -> Contact:
        site = self._directory().site(found.site_id)
        return Contact(
            site_id=found.site_id,
            site_name=site.name if site is not None and site.name else found.site_id,
            email=found.email,
            unsubscribed=unsubscribed,
            changed=changed,
        )
