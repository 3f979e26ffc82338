"""Delivery: claim due messages under lease, try the route's upstreams in order, record all.

One pass over a message tries each upstream of its route until no recipient
is left to retry: a 4xx or a transport failure moves the remaining
recipients to the next upstream at once; when the route is exhausted they
are deferred with backoff, or failed once the message is older than the
maximum age. Everything a pass learned is written in one store job.
Nothing is ever delivered inside an SMTP session's DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable

from relay.config import DeliveryConfig
from relay.core.classify import Outcome, RecipientOutcome, classify
from relay.core.directory import Directory
from relay.core.model import Attempt, QueuedMessage, RecipientStatus, Upstream
from relay.core.routing import choose_route
from relay.metrics import Metrics
from relay.queue_database import (
    DeliveryRecord,
    RecipientState,
    claim_due,
    next_due_at,
    record_delivery,
    release_leases,
)
from relay.store import GroupWriter
from relay.upstream_client import UpstreamClient, make_client

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 5.0


class UpstreamClients:
    """One client per upstream, replaced when a reload changes that upstream."""

    def __init__(self, local_hostname: str) -> None:
        self._local_hostname = local_hostname
        self._clients: dict[str, tuple[Upstream, UpstreamClient]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # old clients closing after a reload

    def get(self, upstream: Upstream) -> UpstreamClient:
        known = self._clients.get(upstream.name)
        if known is not None and known[0] == upstream:
            return known[1]
        if known is not None:
            task = asyncio.get_running_loop().create_task(known[1].close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        client = make_client(upstream, self._local_hostname)
        self._clients[upstream.name] = (upstream, client)
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(client.close() for _, client in clients.values()))


class DeliveryController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        clients: UpstreamClients,
        config: DeliveryConfig,
        owner: str,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._writer = writer
        self._directory = directory
        self._clients = clients
        self._config = config
        self._owner = owner
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not cryptography
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Called with each record once it is committed: the seam for events, stats, webhooks.
        self.on_recorded: list[Callable[[DeliveryRecord], None]] = []

    def wake(self) -> None:
        """New mail was queued: look for due messages now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        released = await self._writer.write(lambda c: release_leases(c, self._owner))
        if released:
            log.info("released %d leases left by this node's previous run", released)
        while not self._stopping:
            self._wake.clear()
            free = self._config.concurrency - len(self._in_flight)
            claimed = await self._claim(free) if free > 0 else 0
            if (claimed and claimed == free) or self._stopping:
                await self._sleep(None)  # all slots busy: a finishing delivery wakes us
            elif not claimed:
                await self._sleep(await self._seconds_until_due())

    async def _claim(self, free: int) -> int:
        now = self._clock()
        batch = await self._writer.write(
            lambda c: claim_due(
                c,
                owner=self._owner,
                now=now,
                lease_seconds=self._config.lease_seconds,
                limit=min(free, 256),
                exclude=list(self._in_flight),
            )
        )
        for message in batch:
            task = asyncio.create_task(self._deliver(message), name=f"deliver-{message.id}")
            self._in_flight[message.id] = task
            task.add_done_callback(functools.partial(self._finished, message.id))
        return len(batch)

    def _finished(self, message_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(message_id, None)
        self._wake.set()

    async def _seconds_until_due(self) -> float:
        async with self._writer.engine.connect() as connection:
            due = await next_due_at(connection)
        if due is None:
            return IDLE_POLL_SECONDS
        return min(max(due - self._clock(), 0.05), IDLE_POLL_SECONDS)

    async def _sleep(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def stop(self, deadline_seconds: float) -> None:
        """Stop claiming; let in-flight deliveries finish until the deadline, then release them."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._writer.write(lambda c: release_leases(c, self._owner))

    async def _deliver(self, message: QueuedMessage) -> None:
        try:
            record = await self._attempt_route(message)
            await self._writer.write(lambda c: record_delivery(c, record))
            for callback in self.on_recorded:
                callback(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Our own bug: leave the lease to expire so the message is retried, never lost.
            log.exception("message %s: delivery pass failed", message.id)

    async def _attempt_route(self, message: QueuedMessage) -> DeliveryRecord:
        directory = self._directory()
        route = choose_route(directory.site(message.site_id), directory)
        for name, reason in route.skipped:
            log.debug("message %s: upstream %s skipped: %s", message.id, name, reason)
        pending = list(message.pending_recipients)
        attempts: list[Attempt] = []
        updates: list[RecipientState] = []
        last: dict[str, RecipientOutcome] = {}
        for upstream in route.upstreams:
            if not pending:
                break
            started = self._clock()
            result = await self._clients.get(upstream).send(
                message.envelope_sender, pending, message.content, message.id
            )
            duration = max(self._clock() - started, 0.0)
            outcomes = classify(result, pending)
            attempts += self._attempts(upstream.name, started, duration, outcomes)
            self._metrics.observe_attempt(upstream.name, duration)
            for recipient, outcome in outcomes.items():
                self._log_outcome(message, upstream.name, recipient, outcome)
                if outcome.outcome is not Outcome.RETRY:
                    updates.append(_update(recipient, outcome, upstream.name))
            last.update(outcomes)
            pending = [r for r in pending if outcomes[r].outcome is Outcome.RETRY]
        return self._conclude(
            message,
            route_empty=not route.upstreams,
            pending=pending,
            attempts=attempts,
            updates=updates,
            last=last,
        )

    def _attempts(
        self, upstream: str, started: float, duration: float, outcomes: dict[str, RecipientOutcome]
    ) -> list[Attempt]:
        """One attempt row per distinct outcome, listing the recipients it concerned."""
        groups: dict[tuple[Outcome, str], list[str]] = {}
        replies = {}
        for recipient, outcome in outcomes.items():
            key = (outcome.outcome, outcome.detail)
            groups.setdefault(key, []).append(recipient)
            replies[key] = outcome.reply
            self._metrics.count_delivery(upstream, outcome.outcome.value)
        return [
            Attempt(
                upstream, started, duration, replies[key], key[0].value, tuple(recipients), key[1]
            )
            for key, recipients in groups.items()
        ]

    def _conclude(
        self,
        message: QueuedMessage,
        *,
        route_empty: bool,
        pending: list[str],
        attempts: list[Attempt],
        updates: list[RecipientState],
        last: dict[str, RecipientOutcome],
    ) -> DeliveryRecord:
        now = self._clock()
        retry_at = None
        last_error = (
            "no upstream available (none configured or all inactive)" if route_empty else None
        )
        if pending:
            last_error = last[pending[0]].detail if pending[0] in last else last_error
            backoff = self._config.backoff
            if backoff.is_expired(message.created_at, now):
                log.warning(
                    "message %s: expired after %.0fs, failing %d recipients",
                    message.id,
                    now - message.created_at,
                    len(pending),
                )
                updates += [
                    RecipientState(r, RecipientStatus.FAILED, None, None, f"expired: {last_error}")
                    for r in pending
                ]
            else:
                delay = backoff.delay(message.attempt_count + 1, self._rng)
                retry_at = now + delay
                log.info(
                    "message %s: deferred %d recipients for %.0fs: %s",
                    message.id,
                    len(pending),
                    delay,
                    last_error,
                )
        return DeliveryRecord(
            message.id, tuple(attempts), tuple(updates), retry_at, last_error, now
        )

    def _log_outcome(
        self, message: QueuedMessage, upstream: str, recipient: str, outcome: RecipientOutcome
    ) -> None:
        log.info(
            "message %s site %s upstream %s rcpt %s: %s (%s)",
            message.id,
            message.site_id,
            upstream,
            recipient,
            outcome.outcome.value,
            outcome.detail,
        )


def _update(recipient: str, outcome: RecipientOutcome, upstream: str) -> RecipientState:
    status = RecipientStatus.SENT if outcome.outcome is Outcome.SENT else RecipientStatus.FAILED
    reply = outcome.reply
    return RecipientState(
        recipient,
        status,
        upstream,
        reply.code if reply else None,
        reply.text if reply else outcome.detail,
    )
