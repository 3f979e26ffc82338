"""Webhook events of the relay's state rather than of a message: a circuit, a quota, DNS.

Each process reports the changes it sees (its circuits and usage cache are its own view;
``data.node`` names it), in a transaction of its own: the change itself was written before,
or is in memory only. Listeners of ``relay.events`` are synchronous, so the write runs as a
task; a failure is logged and the event is lost, never the relay's work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from functools import partial

from relay.core.outbound_events import Event, EventType, OutboxEntry, Subscriptions, event
from relay.core.quota import QuotaWarning, Scope
from relay.events import CircuitChange, DnsChange
from relay.outbox_database import add_to_outbox
from relay.store import GroupWriter

log = logging.getLogger(__name__)


def as_event(change: object, node: str, now: float) -> Event | None:
    """The webhook event of one of the relay's events, or None for the others."""
    random = os.urandom(10)
    if isinstance(change, CircuitChange):
        return event(
            EventType.CIRCUIT_CHANGED,
            now,
            random,
            upstream=change.upstream,
            old_state=change.old.value,
            new_state=change.new.value,
            reason=change.reason,
            node=node,
        )
    if isinstance(change, QuotaWarning) and change.scope in (Scope.SITE, Scope.UPSTREAM):
        return event(
            EventType.QUOTA_WARNING,
            now,
            random,
            site=change.name if change.scope is Scope.SITE else None,
            upstream=change.name if change.scope is Scope.UPSTREAM else None,
            window=change.window.value,
            level=change.level,
            used=change.used,
            limit=change.limit,
            node=node,
        )
    if isinstance(change, DnsChange):
        return event(
            EventType.DNS_CHANGED,
            now,
            random,
            domain=change.domain,
            check=change.check,
            old_status=change.old,
            new_status=change.new,
            detail=change.detail,
            node=node,
        )
    return None


class SystemEvents:
    def __init__(
        self,
        writer: GroupWriter,
        subscriptions: Callable[[], Subscriptions],
        node: str,
        clock: Callable[[], float] = time.time,
        outbox_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._writer = writer
        self._outbox_written = outbox_written
        self._subscriptions = subscriptions
        self._node = node
        self._clock = clock
        self._writing: set[asyncio.Task[None]] = set()

    def on_event(self, change: object) -> None:
        reported = as_event(change, self._node, self._clock())
        if reported is None:
            return
        entries = self._subscriptions().fan_out([reported])
        if entries:
            task = asyncio.create_task(self._write(reported, entries))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write(self, reported: Event, entries: list[OutboxEntry]) -> None:
        try:
            await self._writer.write_sync(partial(add_to_outbox, entries=entries))
        except Exception as error:
            log.warning("%s not recorded for webhooks: %s", reported.type.value, error)
            return
        self._outbox_written()

    async def drain(self) -> None:
        """Let the writes under way finish (at stop, before the store closes)."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
