"""The outbox's worker: every process claims due events under leases and POSTs them.

Run by every worker process of every node (relay/app.py), like delivery: it
claims what is due (relay/webhook_database.py decides, across the cluster,
per-endpoint concurrency, disabled endpoints and per-message order), signs
each try (Standard Webhooks, relay/core/webhook_signing.py), posts it
(relay/webhook_client.py), and records the try, its log row and the
event's fate in one transaction (relay/core/webhook_delivery.py decides when
to try again). An endpoint failing for ``events.disable_after_hours`` is
disabled. A crash between the POST and its record means the event is sent
again after its lease: delivery is at least once, and receivers drop
duplicates by ``webhook-id``.

It wakes when a try finishes, when this process wrote events (``wake``), and
otherwise when the next event falls due or every POLL_SECONDS, to see events
written by other processes. Woken, it claims at once; otherwise it reads when
the next event is due first, so an idle relay writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable

from relay import webhook_database as db
from relay.config_webhooks import EventsConfig
from relay.core.webhook_delivery import Outcome, after_try, due_for_disabling
from relay.core.webhook_signing import BadSecret, parse_secret, signed_headers
from relay.metrics import Metrics
from relay.store import GroupWriter
from relay.webhook_client import Answer, WebhookClient
from relay.webhook_controller import WebhookController

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
GAUGE_SECONDS = 15.0
ORPHAN_ROUNDS = 40  # every 10 min: events of endpoints removed from the file
CONCURRENCY = 32  # tries at once by one process, over all endpoints
LEASE_MARGIN_SECONDS = 30.0


class WebhookDispatcher:
    def __init__(
        self,
        writer: GroupWriter,
        webhooks: WebhookController,
        events: Callable[[], EventsConfig],
        client: WebhookClient,
        metrics: Metrics,
        owner: str,
        gone: Callable[[str], bool],
        clock: Callable[[], float],
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._writer = writer
        self._webhooks = webhooks
        self._events = events
        self._client = client
        self._metrics = metrics
        self._owner = owner
        self._gone = gone
        self._clock = clock
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._stopping = False
        self._backlog = True  # claim without looking first (at start: what waited)
        self._in_flight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Events were written: look for them now rather than at the next poll."""
        self._backlog = True
        self._wake.set()

    async def release_stale(self) -> None:
        """At start, before serving, as delivery does: the leases of owners gone by then."""
        released = await self._writer.write_sync(lambda c: db.release_stale_leases(c, self._gone))
        if released:
            log.info("released %d webhook leases of processes that are gone", released)

    async def run(self) -> None:
        gauge = asyncio.create_task(self._measure(), name="webhook-gauge")
        try:
            while not self._stopping:
                self._wake.clear()
                wait = POLL_SECONDS
                if self._backlog:  # events written here or a try finished: claim at once
                    self._backlog = False
                    await self._claim()
                else:  # look first: nothing due, no write transaction until something is
                    due = await self._next_due()
                    now = self._clock()
                    if due is not None and due <= now:
                        await self._claim()
                    elif due is not None:
                        wait = min(max(due - now, 0.05), POLL_SECONDS)
                # Claimed: a finishing try wakes us. None claimed: what is due waits behind
                # a limit or an earlier event, freed by tries here or elsewhere.
                await self._sleep(wait)
        finally:
            gauge.cancel()

    async def stop(self, deadline_seconds: float) -> None:
        """Stop claiming; let tries finish until the deadline, then release what is left."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=deadline_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(Exception):  # else the leases lapse
            await self._writer.write_sync(lambda c: db.release_leases(c, self._owner))
        await self._client.close()

    async def _claim(self) -> int:
        free = CONCURRENCY - len(self._in_flight)
        if free <= 0 or self._stopping:
            return 0
        config = self._events()
        limits = {
            e.name: e.max_in_flight or config.max_in_flight
            for e in self._webhooks.endpoints()
            if self._webhooks.enabled(e.name)
        }
        now = self._clock()
        lease = 2 * config.timeout_seconds + LEASE_MARGIN_SECONDS
        try:
            batch = await self._writer.write_alone(
                lambda c: db.claim_due(
                    c, owner=self._owner, now=now, lease_seconds=lease, limits=limits, limit=free
                )
            )
        except Exception as error:  # the store is away: the next round tries again
            log.warning("webhook events not claimed: %s", error)
            return 0
        for claimed in batch:
            task = asyncio.create_task(self._send(claimed), name=f"webhook-{claimed.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(batch)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._backlog = True  # its slot is free, and more may be due
        self._wake.set()

    async def _send(self, claimed: db.Claimed) -> None:
        try:
            await self._try(claimed)
        except asyncio.CancelledError:
            raise
        except Exception:  # our bug: the event is due again (ours, its lease would not lapse)
            log.exception("webhook %s: event %s not sent", claimed.webhook, claimed.event_id)
            with contextlib.suppress(Exception):  # else another process takes it in time
                await self._writer.write_sync(
                    lambda c: db.release_lease(c, claimed.id, self._owner)
                )

    async def _try(self, claimed: db.Claimed) -> None:
        config = self._events()
        started = self._clock()
        answer = await self._post(claimed, started, config)
        now = self._clock()
        verdict = after_try(
            answer.status_code,
            claimed.attempt_count + 1,
            claimed.created_at,
            now,
            config.retry_seconds,
            self._jitter(),
        )
        attempt = db.Try(
            claimed,
            self._owner,
            started,
            answer.duration,
            answer.status_code,
            answer.error,
            answer.head,
            verdict,
        )
        failing_since = await asyncio.shield(self._writer.write_item(db.record_tries, attempt))
        self._metrics.webhook_deliveries.labels(claimed.webhook, verdict.outcome.value).inc()
        if verdict.outcome is not Outcome.DELIVERED:
            log.info(
                "webhook %s: event %s %s: %s",
                claimed.webhook,
                claimed.event_id,
                "failed for good" if verdict.outcome is Outcome.FAILED else "to be tried again",
                answer.error or f"HTTP {answer.status_code}",
            )
        if due_for_disabling(failing_since, now, config.disable_after_seconds):
            assert failing_since is not None
            await self._webhooks.disable_failing(claimed.webhook, failing_since, now)

    async def _post(self, claimed: db.Claimed, now: float, config: EventsConfig) -> Answer:
        endpoint = self._webhooks.endpoint(claimed.webhook)
        if endpoint is None:
            return Answer(None, "the endpoint is no longer configured", None, 0.0)
        try:
            key = parse_secret(endpoint.secret.reveal())
        except BadSecret as error:  # checked when configured; kept as a failed try
            return Answer(None, f"bad secret: {error}", None, 0.0)
        headers = signed_headers(key, claimed.event_id, int(now), claimed.payload)
        return await self._client.post(
            endpoint.url, headers, claimed.payload, config.timeout_seconds
        )

    async def _next_due(self) -> float | None:
        """When the next claimable event is due (a read: idle, the loop writes nothing)."""
        try:
            names = [e.name for e in self._webhooks.endpoints() if self._webhooks.enabled(e.name)]
            return await self._writer.read_apart(lambda c: db.next_due_at(c, self._clock(), names))
        except Exception as error:  # the store is away: look again at the next poll
            log.warning("webhook outbox not read: %s", error)
            return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _measure(self) -> None:
        for round in itertools.count():
            try:
                pending = await self._writer.read_apart(db.pending_count)
                self._metrics.webhook_outbox_pending.set(pending)
                if round % ORPHAN_ROUNDS == 0:
                    await self._fail_orphans()
            except Exception as error:  # a gauge must not stop the dispatcher
                log.warning("webhook outbox not measured: %s", error)
            await asyncio.sleep(GAUGE_SECONDS)

    async def _fail_orphans(self) -> None:
        known = [e.name for e in self._webhooks.endpoints()]
        now = self._clock()
        before = now - self._events().retry_seconds
        failed = await self._writer.write_apart(lambda c: db.fail_orphans(c, known, before, now))
        if failed:
            log.warning(
                "%d webhook events failed: their endpoints are no longer configured", failed
            )
