"""Delivery: claim due messages under lease, try the route's upstreams in order, record all.

One pass over a message first fails the recipients on the site's suppression
list, then tries each upstream of its route (``core.routing``) until no
recipient is left to retry. Right before each send the upstream's circuit
and quota are checked again (other passes run concurrently) and its quota
reserved in the store, which refuses a reservation over the quota (exact for
every process on the store: ``relay.usage_controller``); what the upstream
did not accept is given back. A 4xx or a transport failure moves the
remaining recipients to the next upstream at once (``core.classify``
decides per recipient); when the route is exhausted
they are deferred with backoff -- or until the earliest time a skipped
upstream opens again, when nothing could be tried -- or failed once the
message is older than the maximum age. Failed recipients get a DSN to an
address the site owns (``core.dsn.recipient_for``), in the same store job as
the record, so a crash can neither lose it nor send it twice; hard bounces
join the suppression list in that job too. A DSN counts against the site's
limits like a message it sent, in that job: over them, or for a site that
is gone, none is made (logged, counted in ``relay_dsn_dropped_total``), so a flood of
bounces costs the flooder and nobody else. Nothing is ever delivered inside
an SMTP session's DATA.

Transactional first: the claim takes due transactional mail before bulk
mail; bulk mail holds at most ``delivery.bulk_share`` of the slots (a burst
of slow bulk sends leaves slots for transactional mail), waits behind
transactional sends for an upstream's connections (``upstream_client.Slots``),
and stops short of the top ``delivery.transactional_reserve`` of each upstream
rate and quota: a bulk message that finds no upstream under that waits for
the next window, as any message over a limit does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from relay.config import DeliveryConfig
from relay.core import dkim, dsn, headers, message_events
from relay.core.addresses import domain_of
from relay.core.classify import (
    Outcome,
    RecipientOutcome,
    classify,
    is_hard_bounce,
    upstream_failed,
)
from relay.core.directory import Directory
from relay.core.ids import new_message_id
from relay.core.model import (
    Attempt,
    MessageClass,
    NewMessage,
    QueuedMessage,
    RecipientStatus,
    Site,
    SmtpReply,
    Strategy,
    Upstream,
)
from relay.core.outbound_events import EventType, OutboxEntry, Subscriptions
from relay.core.performance import Sample, worked
from relay.core.policy import NULL_SENDER
from relay.core.quota import Claim, limits_of
from relay.core.routing import (
    Conditions,
    RoutingPolicy,
    Skip,
    availability,
    bulk_over,
    choose_route,
    describe_skips,
    earliest_opening,
    transactional_upstreams,
)
from relay.engine_database import Suppression
from relay.events import Events
from relay.health_controller import HealthController
from relay.metrics import Metrics
from relay.performance_controller import PerformanceController
from relay.policy_hooks_controller import PolicyHooks
from relay.queue_database import (
    DeliveryRecord,
    NoticeVerdicts,
    RecipientState,
    claim_due,
    next_due_at,
    record_deliveries,
    release_leases,
    release_stale_leases,
)
from relay.store import GroupWriter
from relay.upstream_client import UpstreamClients
from relay.usage_controller import UsageController

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 5.0
_MEASURED = frozenset({Strategy.PERFORMANCE, Strategy.COST})  # strategies that read the figures


@dataclass
class _Pass:
    """What one delivery pass over one message has learned so far."""

    message: QueuedMessage
    pending: list[str]  # still to try on the next upstream
    deferred: list[str] = field(default_factory=list)  # wait for backoff (4.2.x)
    attempts: list[Attempt] = field(default_factory=list)
    updates: list[RecipientState] = field(default_factory=list)
    last: dict[str, RecipientOutcome] = field(default_factory=dict)
    failed: list[tuple[str, SmtpReply | None, str | None]] = field(default_factory=list)
    suppress: list[Suppression] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    route: str = ""  # Route.explain(), kept with every attempt
    refs: list[tuple[str, str]] = field(default_factory=list)  # (upstream, its name for it)
    samples: list[Sample] | None = None  # when the route orders by measured performance


@dataclass(frozen=True)
class Engine:
    """The parts a delivery pass consults besides the queue."""

    directory: Callable[[], Directory]
    routing: Callable[[], RoutingPolicy]
    clients: UpstreamClients
    health: HealthController
    usage: UsageController
    events: Events
    subscriptions: Callable[[], Subscriptions] = Subscriptions  # the webhooks' filters
    outbox_written: Callable[[], None] = lambda: None  # the webhooks' worker: send them now
    performance: PerformanceController | None = None  # measured figures (performance, cost)
    policy: PolicyHooks | None = None  # the operator's on_route, after the relay's routing


Suppressed = dict[tuple[str, str], str]  # (site id, lower-case address) -> why


class DeliveryController:
    def __init__(
        self,
        writer: GroupWriter,
        engine: Engine,
        config: DeliveryConfig,
        hostname: str,
        metrics: Metrics,
        owner: str,
        gone: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._writer = writer
        self._engine = engine
        self._config = config
        self._owner = owner  # lease owner: this process (core.leases)
        self._gone = gone  # owners whose leases we may release at start
        self._hostname = hostname
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter and weights, not cryptography
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0  # slots promised to messages the ingress is storing
        self._bulk: set[str] = set()  # the bulk messages in flight
        self._reserved_bulk = 0  # of _reserved
        self._bulk_slots = max(math.floor(config.concurrency * config.bulk_share), 1)
        self._gauges = {c: metrics.in_flight.labels(c.value) for c in MessageClass}
        self._shared: tuple[Directory, RoutingPolicy, frozenset[str]] | None = None
        # Mail may be waiting in the queue (not handed over, deferred, a DSN): a slot that
        # frees up looks for it. Without it, finished deliveries do not query the queue.
        self._backlog = True

    def wake(self) -> None:
        """New mail was queued: look for due messages now rather than at the next poll."""
        self._wake.set()

    def reserve(
        self, now: float, message_class: MessageClass = MessageClass.TRANSACTIONAL
    ) -> tuple[str, float] | None:
        """A slot for a message the ingress is storing: the lease to store it with, or None."""
        if self._stopping or len(self._in_flight) + self._reserved >= self._config.concurrency:
            return None
        if message_class is MessageClass.BULK:
            if self._bulk_free() <= 0:
                return None
            self._reserved_bulk += 1
        self._reserved += 1
        return self._owner, now + self._config.lease_seconds

    def _bulk_free(self) -> int:
        return self._bulk_slots - len(self._bulk) - self._reserved_bulk

    def hand_over(
        self, message: NewMessage, stored: bool, suppressed: Mapping[str, str] = {}
    ) -> None:
        """A message is stored: deliver it now when it came leased to us, else claim it later.

        ``suppressed`` (its recipients on the site's suppression list) was read in the
        transaction that stored it.
        """
        if message.lease is not None:
            self._reserved -= 1
            if message.message_class is MessageClass.BULK:
                self._reserved_bulk -= 1
        if not stored:
            return
        if message.lease is None or self._stopping:  # a stopping node's leases are released
            self._backlog = True
            self.wake()
            return
        queued = QueuedMessage(
            id=message.id,
            site_id=message.site_id,
            envelope_sender=message.envelope_sender,
            pending_recipients=message.recipients,
            content=message.content,
            created_at=message.created_at,
            attempt_count=0,
            original_sender=message.original_sender,
            message_class=message.message_class,
            suppressed=dict(suppressed),
        )
        self._start(queued, self._deliver(queued))

    def _start(self, message: QueuedMessage, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"deliver-{message.id}")
        self._in_flight[message.id] = task
        if message.message_class is MessageClass.BULK:
            self._bulk.add(message.id)
        self._count_in_flight()
        task.add_done_callback(functools.partial(self._finished, message.id))

    def _count_in_flight(self) -> None:
        bulk = len(self._bulk)
        self._gauges[MessageClass.BULK].set(bulk)
        self._gauges[MessageClass.TRANSACTIONAL].set(len(self._in_flight) - bulk)

    async def release_stale(self) -> None:
        """At start, before serving: the leases of owners gone by then go back to the queue
        (those of a process that dies later expire, or wait for the next start)."""
        released = await self._writer.write(lambda c: release_stale_leases(c, self._gone))
        for owner, count in released.items():
            log.info("released %d leases of %s (that process is gone)", count, owner)

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._backlog = False
            free = self._config.concurrency - len(self._in_flight) - self._reserved
            bulk_free = min(self._bulk_free(), free)
            claimed, bulk = await self._claim(free, bulk_free) if free > 0 else (0, 0)
            bulk_full = bulk >= bulk_free  # bulk mail may be waiting for its slots
            if claimed == free or bulk_full:
                self._backlog = True  # there may be more than the slots took
            if (claimed and claimed == free) or self._stopping:
                await self._sleep(None)  # all slots busy: a finishing delivery wakes us
            elif not claimed:
                # While bulk mail waits for its slots, only transactional mail coming due
                # (or a finishing delivery) is a reason to look again.
                only = MessageClass.TRANSACTIONAL if bulk_full else None
                await self._sleep(await self._seconds_until_due(only))

    async def _claim(self, free: int, bulk_free: int) -> tuple[int, int]:
        """Claim up to ``free`` due messages, at most ``bulk_free`` of them bulk: how many
        in all, and how many bulk."""
        now = self._clock()
        batch = await self._writer.write_sync(
            lambda c: claim_due(
                c,
                owner=self._owner,
                now=now,
                lease_seconds=self._config.lease_seconds,
                limit=min(free, 256),
                exclude=list(self._in_flight),
                bulk_limit=bulk_free,
            )
        )
        for message in batch:
            self._start(message, self._deliver(message))
        return len(batch), sum(1 for m in batch if m.message_class is MessageClass.BULK)

    def _finished(self, message_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(message_id, None)
        self._bulk.discard(message_id)
        self._count_in_flight()
        if self._backlog:  # a freed slot matters only when mail waits in the queue
            self._wake.set()

    async def _seconds_until_due(self, message_class: MessageClass | None = None) -> float:
        async with self._writer.engine.connect() as connection:
            due = await next_due_at(connection, message_class)
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
        record = None
        try:
            record = await self._attempt_route(message)
            verdicts = await self._writer.write_item(record_deliveries, record)
            if record.outbox:
                self._engine.outbox_written()
            record = self._counted_notices(message, record, verdicts)
            if record.retry_at is not None or record.notices:
                self._backlog = True  # due again later, or DSNs to deliver: look again
        except asyncio.CancelledError:
            raise
        except Exception:
            # Our own bug: leave the lease to expire so the message is retried, never lost.
            log.exception("message %s: delivery pass failed", message.id)
            return
        for notice in record.notices:
            self._metrics.notices.labels("failed" if _is_failure(notice) else "delayed").inc()
            log.info(
                "message %s: DSN %s queued for %s", message.id, notice.id, notice.recipients[0]
            )
        for entry in record.suppress:
            self._metrics.suppressions.labels(entry.site_id).inc()
        self._engine.events.publish(record)

    async def _give_back(self, claim: Claim, count: int) -> None:
        """What the upstream did not accept; not given back (store down) errs on the safe side."""
        try:
            await self._engine.usage.give_back(claim, count)
        except Exception as error:
            log.warning("upstream %s: %d reserved recipients not given back: %s",
                        claim.name, count, error)  # fmt: skip

    def _counted_notices(
        self, message: QueuedMessage, record: DeliveryRecord, verdicts: NoticeVerdicts
    ) -> DeliveryRecord:
        """The record with the DSNs the store counted and stored; the others are dropped."""
        if len(verdicts) != len(record.notices):  # the message was deleted: nothing written
            return replace(record, notices=(), notice_claims=())
        kept = []
        claims = record.notice_claims or (None,) * len(record.notices)
        for notice, claim, verdict in zip(record.notices, claims, verdicts, strict=True):
            over = None
            if claim is not None and verdict is not None:
                over = self._engine.usage.settle(claim, verdict)
            if over is None:
                kept.append(notice)
            else:
                action = dsn.Action.FAILED if _is_failure(notice) else dsn.Action.DELAYED
                self._drop_notice(message, action, "over_limit", over.describe("messages"))
        if len(kept) == len(record.notices):
            return record
        return replace(record, notices=tuple(kept), notice_claims=())

    def _conditions(self) -> Conditions:
        health, performance = self._engine.health, self._engine.performance
        return Conditions(
            health.circuits,
            health.policy,
            self._engine.usage.book,
            self._clock(),
            performance.figures if performance is not None else {},
            self._config.transactional_reserve,
            self._reserved_upstreams(),
        )

    def _reserved_upstreams(self) -> frozenset[str]:
        """Where bulk mail leaves a reserve (``transactional_upstreams``), worked out again
        only when the directory or the routing changed."""
        directory, policy = self._engine.directory(), self._engine.routing()
        known = self._shared
        if known is None or known[0] is not directory or known[1] is not policy:
            known = self._shared = (directory, policy, transactional_upstreams(directory, policy))
        return known[2]

    async def _attempt_route(self, message: QueuedMessage) -> DeliveryRecord:
        directory = self._engine.directory()
        site = directory.site(message.site_id)
        p = _Pass(message, [r for r in message.pending_recipients if r not in message.suppressed])
        self._fail_suppressed(p)
        route = choose_route(
            site,
            message.message_class,
            directory,
            self._engine.routing(),
            self._conditions(),
            self._rng,
            needed=max(len(p.pending), 1),
        )
        policy = self._engine.policy
        if policy is not None and policy.on_route is not None and route.upstreams and p.pending:
            route = await policy.narrow_route(
                message.id, message.site_id, p.pending, message.message_class.value, route
            )
        p.skipped += route.skipped
        p.route = route.explain()
        if route.strategy in _MEASURED and self._engine.performance is not None:
            self._engine.performance.wanted()
            p.samples = []
        log.debug("message %s: route %s", message.id, p.route)
        for upstream in route.upstreams:
            if not p.pending:
                break
            await self._try(upstream, p)
        return self._conclude(p, site)

    def _fail_suppressed(self, p: _Pass) -> None:
        for address, reason in p.message.suppressed.items():
            site_id = p.message.site_id
            text = f"5.1.1 Recipient is on the suppression list of site {site_id}: {reason}"
            reply = SmtpReply(550, text)
            log.info("message %s rcpt %s: failed, suppressed (%s)", p.message.id, address, reason)
            p.updates.append(RecipientState(address, RecipientStatus.FAILED, None, 550, text))
            p.failed.append((address, reply, None))

    async def _try(self, upstream: Upstream, p: _Pass) -> None:
        """Hand the pending recipients to one upstream, unless it may not take them right now."""
        needed = len(p.pending)
        kind = p.message.message_class
        skip = availability(upstream, self._conditions(), needed, kind)  # on the cached counts
        if skip is not None:
            self._skip(p, skip)
            return
        usage = self._engine.usage
        started = self._clock()
        bulk = kind is MessageClass.BULK
        kept = bulk and upstream.name in self._reserved_upstreams()
        reserve = self._config.transactional_reserve if kept else 0.0
        # Reserved in the store before the send: no passes of any process together overshoot.
        claim = usage.claim_for(upstream, needed, started, reserve)
        over = await usage.claim(claim) if claim is not None else None
        if over is not None:
            full = limits_of(upstream)[over.window]
            share = reserve > 0 and over.used + needed <= full  # room left, but not bulk's
            reason = bulk_over(over) if share else over.describe("recipients")
            self._skip(p, Skip(upstream.name, reason, over.reopens_at))
            return
        self._engine.health.begin(upstream.name)  # past an open circuit's cooldown: the probe
        timer = time.monotonic()  # a wall-clock step must not skew durations
        result = await self._engine.clients.get(upstream).send(
            p.message.envelope_sender, p.pending, p.message.content, p.message.id, bulk
        )
        duration = time.monotonic() - timer
        self._engine.health.record(upstream.name, upstream_failed(result), result.summary)
        if p.samples is not None:
            p.samples.append(Sample(upstream.name, worked(result), duration))
        outcomes = classify(result, p.pending)
        sent = sum(1 for o in outcomes.values() if o.outcome is Outcome.SENT)
        if claim is not None:
            await self._give_back(claim, needed - sent)
        p.attempts += self._attempts(upstream.name, started, duration, outcomes, p.route)
        self._metrics.observe_attempt(upstream.name, duration)
        for recipient, outcome in outcomes.items():
            self._log_outcome(p.message, upstream.name, recipient, outcome)
            self._apply(p, upstream, recipient, outcome)
        p.last.update(outcomes)
        p.pending = [r for r in p.pending if outcomes[r].outcome is Outcome.RETRY]
        if upstream.events is not None and sent:
            p.refs += _refs(upstream.name, p.message.content, outcomes)

    @staticmethod
    def _skip(p: _Pass, skip: Skip) -> None:
        log.debug("message %s: upstream %s skipped: %s", p.message.id, skip.upstream, skip.reason)
        p.skipped.append(skip)

    def _apply(
        self, p: _Pass, upstream: Upstream, recipient: str, outcome: RecipientOutcome
    ) -> None:
        if outcome.outcome is Outcome.RETRY:
            return
        if outcome.outcome is Outcome.DEFER:
            p.deferred.append(recipient)
            return
        p.updates.append(_update(recipient, outcome, upstream.name))
        if outcome.outcome is Outcome.FAILED:
            p.failed.append((recipient, outcome.reply, upstream.host or upstream.name))
            if is_hard_bounce(outcome.reply):
                assert outcome.reply is not None
                if self._engine.policy is not None:
                    self._engine.policy.note_bounce(upstream.name, recipient)
                reason = f"{outcome.reply.render()} (upstream {upstream.name})"
                p.suppress.append(
                    Suppression(p.message.site_id, recipient, reason, p.message.id, self._clock())
                )

    def _attempts(
        self,
        upstream: str,
        started: float,
        duration: float,
        outcomes: dict[str, RecipientOutcome],
        route: str,
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
                upstream,
                started,
                duration,
                replies[key],
                key[0].value,
                tuple(recipients),
                key[1],
                route,
            )
            for key, recipients in groups.items()
        ]

    def _conclude(self, p: _Pass, site: Site | None) -> DeliveryRecord:
        message, now = p.message, self._clock()
        waiting = p.pending + p.deferred
        last_error = self._last_error(p, waiting)
        retry_at, counted, notices = None, bool(p.attempts), []
        delay_notified = message.delay_notified
        backoff = self._config.backoff
        if waiting and backoff.is_expired(message.created_at, now):
            age = now - message.created_at
            log.warning(
                "message %s: expired after %.0fs, failing %d recipients",
                message.id,
                age,
                len(waiting),
            )
            reason = f"expired after {age / 3600:.1f} hours: {last_error}"
            for address in waiting:
                p.updates.append(
                    RecipientState(address, RecipientStatus.FAILED, None, None, reason)
                )
                p.failed.append((address, None, None))
        elif waiting:
            retry_at, counted = self._retry_time(p, now)
            log.info(
                "message %s: deferred %d recipients until %.0f: %s",
                message.id,
                len(waiting),
                retry_at,
                last_error,
            )
            if self._delay_notice_due(message, now):
                entries = [(a, p.last[a].reply if a in p.last else None, None) for a in waiting]
                notices += self._notice(message, site, dsn.Action.DELAYED, entries, now)
                # Also when none could be made (over a limit): one try per message, as with
                # Postfix's delay_warning_time, never one more on every pass.
                delay_notified = True
        if p.failed and self._wants_notices(message):
            notices += self._notice(message, site, dsn.Action.FAILED, p.failed, now)
        return DeliveryRecord(
            message.id,
            tuple(p.attempts),
            tuple(p.updates),
            retry_at,
            last_error,
            now,
            notices=tuple(notices),
            notice_claims=tuple(
                self._engine.usage.claim_for(site, 1, n.created_at) if site else None
                for n in notices
            ),
            suppress=tuple(p.suppress),
            delay_notified=delay_notified,
            counted=counted,
            outbox=tuple(self._events(p, waiting if retry_at is not None else [], retry_at, now)),
            refs=tuple(dict.fromkeys(p.refs)),
            samples=tuple(p.samples or ()),
            campaign_id=message.campaign_id,
        )

    def _events(
        self, p: _Pass, waiting: list[str], retry_at: float | None, now: float
    ) -> list[OutboxEntry]:
        """The pass's events for the webhooks that want them (usually none: nothing built)."""
        subscriptions = self._engine.subscriptions()
        if not any(subscriptions.wants_any(t) for t in message_events.DELIVERY_TYPES):
            return []
        suppressed = p.message.suppressed
        upstream_of = _last_upstreams(p)
        outcomes = [
            message_events.Outcome(u.address, EventType.DELIVERED, u.upstream, _reply(u))
            for u in p.updates
            if u.status is RecipientStatus.SENT
        ]
        why = {u.address: u.reply_text for u in p.updates if u.status is RecipientStatus.FAILED}
        outcomes += [
            message_events.failure(
                a, reply, upstream_of.get(a), suppressed=suppressed.get(a), why=why.get(a)
            )
            for a, reply, _ in p.failed
        ]
        outcomes += [
            message_events.Outcome(
                a,
                EventType.DEFERRED,
                upstream_of.get(a),
                p.last[a].reply if a in p.last else None,
                reason=p.last[a].detail if a in p.last else self._last_error(p, waiting),
            )
            for a in waiting
        ]
        events = message_events.delivery_events(
            p.message.id,
            p.message.site_id,
            outcomes,
            retry_at,
            now,
            os.urandom,
            subscriptions.wants_any,
        )
        return subscriptions.fan_out(events)

    def _last_error(self, p: _Pass, waiting: list[str]) -> str | None:
        if not waiting:
            return None
        if waiting[0] in p.last:
            return p.last[waiting[0]].detail
        if p.skipped:
            return f"no upstream available ({describe_skips(p.skipped)})"
        return "no upstream available (none configured)"

    def _retry_time(self, p: _Pass, now: float) -> tuple[float, bool]:
        """When to try again, and whether this pass counts towards the backoff.

        When nothing could be tried because upstreams wait on a circuit
        cooldown or a quota window, the message waits exactly until the
        earliest of those opens, without growing its backoff.
        """
        opens = earliest_opening(p.skipped)
        if not p.attempts and opens is not None:
            return max(opens, now + 1.0), False
        delay = self._config.backoff.delay(p.message.attempt_count + 1, self._rng)
        return now + delay, True

    def _delay_notice_due(self, message: QueuedMessage, now: float) -> bool:
        after = self._config.delay_notice_seconds
        return (
            after is not None
            and not message.delay_notified
            and now - message.created_at >= after
            and self._wants_notices(message)
        )

    @staticmethod
    def _wants_notices(message: QueuedMessage) -> bool:
        """Never a DSN to a null sender -- which every DSN has, so never a DSN about a DSN."""
        return message.original_sender not in ("", NULL_SENDER) and message.envelope_sender != ""

    def _notice(
        self,
        message: QueuedMessage,
        site: Site | None,
        action: dsn.Action,
        entries: Sequence[tuple[str, SmtpReply | None, str | None]],
        now: float,
    ) -> list[NewMessage]:
        """The DSN, queued as a message of the same site so it takes the same route; or none.

        None when the site is gone (no address is known to be its own) or over a
        limit: the DSN is counted as one of the site's messages.
        """
        to = dsn.recipient_for(site, message.original_sender)
        if site is None or to is None:  # a null sender never gets here (_wants_notices)
            self._drop_notice(message, action, "site_gone", f"site {message.site_id} is gone")
            return []
        over = self._engine.usage.site_over(site)  # the store counts it with the record
        if over is not None:
            self._drop_notice(message, action, "over_limit", over.describe("messages"))
            return []
        report = dsn.Report(
            action=action,
            reporting_mta=self._hostname,
            message_id=message.id,
            arrival=message.created_at,
            to=to,
            # An address the site's upstreams accept as sender (providers verify From).
            from_address=site.envelope_sender,
            recipients=dsn.recipients_of(entries, permanent=action is dsn.Action.FAILED),
            original_content=message.content,
            retry_until=message.created_at + self._config.backoff.max_age,
            original_sender=message.original_sender,
        )
        notice = dsn.as_message(report, message.site_id, new_message_id(now, os.urandom(10)), now)
        key = self._engine.directory().signing_key(domain_of(report.from_address))
        return [replace(notice, content=dkim.sign(notice.content, key, now)) if key else notice]

    def _drop_notice(
        self, message: QueuedMessage, action: dsn.Action, reason: str, why: str
    ) -> None:
        self._metrics.notices_dropped.labels(message.site_id, reason).inc()
        log.warning(
            "message %s site %s: no %s DSN, %s", message.id, message.site_id, action.value, why
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


def _reply(update: RecipientState) -> SmtpReply | None:
    if update.reply_code is None:
        return None
    return SmtpReply(update.reply_code, update.reply_text or "")


def _last_upstreams(p: _Pass) -> dict[str, str]:
    """Each recipient's upstream of its last try in this pass (one walk, not one per recipient)."""
    found = {r: a.upstream for a in p.attempts for r in a.recipients}
    found.update((u.address, u.upstream) for u in p.updates if u.upstream is not None)
    return found


def _refs(
    upstream: str, content: bytes, outcomes: Mapping[str, RecipientOutcome]
) -> list[tuple[str, str]]:
    """How the upstream will name the message in its events: the id of its 250 reply and
    our Message-ID (without angle brackets)."""
    refs = []
    for o in outcomes.values():
        if o.outcome is Outcome.SENT and (queue_id := message_events.queue_id(o.reply)):
            refs.append((upstream, queue_id))
    fields, _ = headers.split_message(content)
    message_id = headers.first(fields, "message-id")
    if message_id is not None:
        value = headers.decoded_text(message_id.value).strip().strip("<>").strip()
        if value:
            refs.append((upstream, value[:256]))
    return refs


def _is_failure(notice: NewMessage) -> bool:
    return notice.subject == dsn.subject(dsn.Action.FAILED)


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
