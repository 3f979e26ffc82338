"""Campaigns: the admin API's use cases and the generator loop every process runs.

Generation (``run``): each process looks once a second (or when woken) for work: scheduled
campaigns whose time has come start; a campaign in progress is leased to one process at a
time and generated in batches: the audience's next contacts after the campaign's cursor;
unsubscribed and suppressed ones are skipped (with the reason); every other one gets its own
message, built in a thread (``campaign_messages``). A batch is one transaction
(``campaign_generation_database.commit_batch``): a crash resumes at the cursor and a
contact never gets the campaign twice.

Backpressure and pace:

- at most ``window`` of the campaign's messages wait for delivery at once (queued_count);
- ``rate_per_minute``: a token bucket in the process that holds the lease
  (``core.campaigns.Pace``, at most one second of burst): the lease moves between
  processes only when one stops or dies, and a new holder starts with one token;
- the site's limits: campaign messages count in the site's windows like its other mail,
  but claim against limits lowered by ``SITE_RESERVE`` (10 %): when a window is within
  10 % of its limit generation waits (``last_error`` says which and until when) and the
  rest is left to the site's own forms and transactional mail. The count is the store's,
  in the batch's transaction: exact across nodes.

Completion: a campaign whose contacts are all reached and whose messages are all final is
completed, and ``campaign.finished`` written to the outbox in that transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from relay import campaign_database as db
from relay import campaign_generation_database as gen
from relay.campaign_messages import SITE_RESERVE, MessageBuilder, reserved_limits
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.config import Config
from relay.core.campaigns import (
    DELETABLE,
    Action,
    Campaign,
    CampaignRequest,
    CampaignStatus,
    Pace,
    RecipientState,
    encoded_block,
    finished_event,
    parse_campaign,
)
from relay.core.directory import Directory
from relay.core.ids import new_message_id
from relay.core.model import Site
from relay.core.outbound_events import EventType, OutboxEntry, Subscriptions, iso_time
from relay.core.quota import OverLimit, Scope, limits_of
from relay.core.send_request import Attachment
from relay.core.templates import Template, check_template
from relay.engine_database import suppressed
from relay.ingress_controller import IngressController
from relay.metrics import Metrics
from relay.store import GroupWriter
from relay.usage_controller import UsageController

log = logging.getLogger(__name__)
WINDOW = 1000  # a campaign's messages waiting for delivery at most
BATCH = 100  # contacts per transaction (about half a second of rendering and signing)
PIECE = 10  # contacts built at a time: an accept that arrives waits for one piece at most
PIECE_WAIT_SECONDS = 0.25  # for accepts under way, before each piece (never starved)
LEASE_SECONDS = 30.0
TICK_SECONDS = 1.0


def attachment_budget(max_message_bytes: int) -> int:
    """The attachments' decoded bytes that fit a message of ``max_message_bytes``: base64 with
    a CRLF per 76 characters is 4/3 x 78/76 of them, and the rest of the message needs room
    (a 100,000-character template part may grow in the rendering)."""
    return max(int((max_message_bytes - 400_000) * 3 / 4 * 76 / 78), 0)


NO_PUBLIC_LISTENER = (
    "http: campaigns need the public HTTP listener (http:, with http.public_url as recipients "
    "reach it): every message carries a one-click unsubscribe link to it (RFC 8058)"
)


class CampaignController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        ingress: IngressController,
        config: Callable[[], Config],
        unsubscribe_key: bytes,
        owner: str,
        gone: Callable[[str], bool],
        zone: ZoneInfo,
        class_header: str,
        clock: Callable[[], float] = time.time,
        wake_delivery: Callable[[], None] = lambda: None,
        outbox_written: Callable[[], None] = lambda: None,
        subscriptions: Callable[[], Subscriptions] = Subscriptions,
        window: int = WINDOW,
        batch: int = BATCH,
        metrics: Metrics | None = None,
        usage: UsageController | None = None,
    ) -> None:
        self._metrics = metrics
        self._usage = usage
        self._writer = writer
        self._directory = directory
        self._ingress = ingress
        self._config = config
        self._key = unsubscribe_key
        self._owner = owner
        self._gone = gone
        self._zone = zone
        self._class_header = class_header
        self._clock = clock
        self._wake_delivery = wake_delivery
        self._outbox_written = outbox_written
        self._subscriptions = subscriptions
        self.window = window
        self.batch = batch
        self._builder = MessageBuilder(
            ingress, config, unsubscribe_key, zone, class_header, subscriptions
        )
        self._paces: dict[str, Pace] = {}
        self._attachments: dict[str, tuple[tuple[Attachment, ...], dict[int, bytes]]] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    # -- the admin API

    async def create(self, body: Mapping[str, Any]) -> Campaign:
        if self._config().http is None:
            raise Invalid([NO_PUBLIC_LISTENER])
        limit = attachment_budget(self._config().limits.max_message_bytes)
        parsed = await asyncio.to_thread(parse_campaign, body, max_attachment_bytes=limit)
        if isinstance(parsed, list):
            raise Invalid(parsed)
        site = self._directory().site(parsed.site_id)
        if site is None:
            raise Invalid([f"site: no site named {parsed.site_id!r}"])
        template = await self._template(parsed)
        now = self._clock()
        campaign_id = "cmp_" + new_message_id(now, os.urandom(10))
        status = CampaignStatus.SCHEDULED if parsed.schedule_at else CampaignStatus.DRAFT
        campaign = Campaign(
            id=campaign_id,
            site_id=site.id,
            name=parsed.name,
            status=status,
            template=parsed.template,
            subject=template.subject,
            text=template.text,
            html=template.html,
            audience=parsed.audience,
            rate_per_minute=parsed.rate_per_minute,
            schedule_at=parsed.schedule_at,
            cursor=0,
            generated=False,
            total_contacts=0,
            queued_count=0,
            sent_count=0,
            failed_count=0,
            skipped_count=0,
            lease_owner=None,
            leased_until=None,
            last_error=None,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
        )

        def write(c: Any) -> Campaign:
            total = db.count_audience(c, site.id, parsed.audience)
            db.insert_campaign(c, replace(campaign, total_contacts=total), parsed.attachments)
            stored = db.load_campaign(c, campaign_id)
            assert stored is not None
            return stored

        stored = await self._writer.write_apart(write)
        log.info("campaign %s site %s: created (%s)", campaign_id, site.id, status.value)
        self.wake()
        return stored

    async def _template(self, request: CampaignRequest) -> Template:
        """The parts the campaign renders (a named template's, copied now: a later change of
        the template does not change a campaign under way); 422 when they do not compile."""
        if request.template is not None:
            template = self._directory().template(request.template)
            if template is None:
                raise Invalid([f"template: no template named {request.template!r}"])
            return template
        template = Template("campaign", request.subject, request.text, request.html)
        problems = await asyncio.to_thread(check_template, template)
        if problems:
            raise Invalid(problems)
        return template

    async def get(self, campaign_id: str) -> Campaign:
        found = await self._writer.read_apart(partial(db.load_campaign, campaign_id=campaign_id))
        if found is None:
            raise NotFound(f"no campaign {campaign_id}")
        return found

    async def listing(
        self, site_id: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Campaign], int]:
        if status is not None and status not in tuple(CampaignStatus):
            raise Invalid([f"status: one of {', '.join(CampaignStatus)}"])
        return await self._writer.read_apart(
            lambda c: db.list_campaigns(c, site_id, status, offset, limit)
        )

    async def recipients(
        self, campaign_id: str, status: str | None, offset: int, limit: int
    ) -> tuple[list[db.RecipientRow], int]:
        if status is not None and status not in tuple(RecipientState):
            raise Invalid([f"status: one of {', '.join(RecipientState)}"])
        await self.get(campaign_id)
        return await self._writer.read_apart(
            lambda c: db.list_recipients(c, campaign_id, status, offset, limit)
        )

    async def act(self, campaign_id: str, action: Action) -> Campaign:
        now = self._clock()
        try:
            changed = await self._writer.write_apart(
                lambda c: db.change_status(c, campaign_id, action, now, self._finished_entries)
            )
        except db.StatusConflict as error:
            raise Conflict(str(error)) from None
        if changed is None:
            raise NotFound(f"no campaign {campaign_id}")
        log.info("campaign %s: %s, now %s", campaign_id, action.value, changed.status.value)
        if action in (Action.RESUME, Action.START):
            self._wake_delivery()
        if changed.status is CampaignStatus.CANCELLED:
            self._outbox_written()
        self.wake()
        return changed

    async def delete(self, campaign_id: str) -> None:
        campaign = await self.get(campaign_id)
        deletable = [s.value for s in DELETABLE]
        gone = await self._writer.write_apart(
            lambda c: db.delete_campaign(c, campaign_id, deletable)
        )
        if not gone:
            raise Conflict(
                f"campaign {campaign_id} is {campaign.status.value}"
                f"{' with messages still queued' if campaign.queued_count else ''}: "
                "only a draft, scheduled or finished campaign with nothing queued is deleted"
                " (cancel it first)"
            )

    def _finished_entries(self, campaign: Campaign, status: CampaignStatus) -> list[OutboxEntry]:
        subscriptions = self._subscriptions()
        if not subscriptions.wants_any(EventType.CAMPAIGN_FINISHED):
            return []
        return subscriptions.fan_out(
            [finished_event(campaign, status, self._clock(), os.urandom(10))]
        )

    # -- the generator loop

    def wake(self) -> None:
        self._wake.set()

    async def release_stale(self) -> None:
        released = await self._writer.write_apart(partial(gen.release_gone_leases, gone=self._gone))
        if released:
            log.info("campaigns: released %d leases of processes that are gone", released)

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # a wake during the step cuts the wait after it short
            try:
                delay = await self.step()
            except Exception:  # the loop must outlive any one failure; the store may be back
                log.exception("campaigns: generation step failed")
                delay = TICK_SECONDS * 5
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    async def stop(self) -> None:
        """No new batch; this process's leases are given back, so another node goes on now."""
        self._stopping = True
        self._wake.set()
        try:
            await self._writer.write_apart(partial(gen.release_leases_of, owner=self._owner))
        except Exception as error:  # they lapse after LEASE_SECONDS anyway
            log.warning("campaigns: leases not given back at stop: %s", error)

    async def step(self) -> float:
        """One look for work; the seconds to wait before the next (0: go on at once)."""
        now = self._clock()
        pending = await self._writer.read_apart(partial(gen.pending_work, now=now))
        if pending.start:
            started = await self._writer.write_apart(partial(gen.start_due, now=now))
            for campaign_id in started:
                log.info("campaign %s: its scheduled time came: started", campaign_id)
        for campaign_id in pending.sweep:
            await self._writer.write_apart(
                partial(db.cancel_waiting, campaign_id=campaign_id, now=now)
            )
        if pending.finish:
            done = await self._writer.write_apart(
                lambda c: gen.finish_campaigns(c, self._clock(), self._finished_entries)
            )
            for campaign_id in done:
                log.info("campaign %s: completed", campaign_id)
            if done:
                self._outbox_written()
        if not (pending.generate or pending.start) or self._stopping:
            return TICK_SECONDS
        campaign = await self._writer.write_apart(
            lambda c: gen.lease_next(c, self._owner, self._clock(), LEASE_SECONDS)
        )
        if campaign is None:
            return TICK_SECONDS
        return await self._generate(campaign)

    async def _generate(self, campaign: Campaign) -> float:
        site = self._directory().site(campaign.site_id)
        if site is None:
            reason = f"site {campaign.site_id} no longer exists"
            await self._writer.write_apart(
                lambda c: gen.fail_campaign(c, campaign.id, reason, self._clock())
            )
            log.warning("campaign %s: failed: %s", campaign.id, reason)
            return 0.0
        room = self.window - campaign.queued_count
        if room <= 0:
            return TICK_SECONDS / 2  # deliveries make room
        wanted = min(self.batch, room)
        now = self._clock()
        pace = None
        if campaign.rate_per_minute:
            pace = self._paces.setdefault(campaign.id, Pace(campaign.rate_per_minute, now))
            available = pace.available(now)
            if available < 1:
                return pace.wait()
            wanted = min(wanted, available)
        headroom = self._headroom(site, now)
        if isinstance(headroom, OverLimit):  # the cached counts: nothing built to be refused
            return await self._wait_for_site(campaign, site, headroom)
        if headroom is not None:
            wanted = min(wanted, headroom)
        contacts = await self._writer.read_apart(
            lambda c: db.next_contacts(
                c, campaign.site_id, campaign.audience, campaign.cursor, wanted + 1
            )
        )
        exhausted = len(contacts) <= wanted
        contacts = contacts[:wanted]
        listed = await self._writer.read_apart(
            lambda c: suppressed(c, [(site.id, x.email) for x in contacts], now)
        )
        attachments, blocks = await self._attachments_of(campaign.id)
        items = []
        for start in range(0, len(contacts), PIECE):
            # Transactional accepts first: each piece waits for those under way.
            await self._ingress.activity.wait_quiet(at_most=PIECE_WAIT_SECONDS)
            piece = contacts[start : start + PIECE]
            items += await asyncio.to_thread(
                self._builder.build, site, campaign, piece, listed, attachments, blocks, now
            )
        batch = gen.Batch(
            campaign.id, self._owner, campaign.cursor, tuple(items), exhausted, now, LEASE_SECONDS
        )
        try:
            committed = await self._writer.write_apart(partial(gen.commit_batch, batch=batch))
        except gen.LostLease:
            log.info(
                "campaign %s: moved on meanwhile (paused, cancelled or taken over)", campaign.id
            )
            return 0.0
        if pace is not None:
            pace.take(committed.queued)
        if self._usage is not None and committed.queued and limits_of(site):
            # This process's cache counts them now (others' at their next refresh); the
            # thresholds' warnings are left to the site's own claims.
            self._usage.book.add(Scope.SITE, site.id, committed.queued, limits_of(site), now)
        if self._metrics is not None:
            for outcome, count in committed.outcomes.items():
                self._metrics.campaign_contacts.labels(site.id, outcome).inc(count)
        if committed.queued:
            self._wake_delivery()
            if any(i.outbox for i in items):
                self._outbox_written()
        log.info(
            "campaign %s site %s: %d contacts, %d messages queued%s",
            campaign.id,
            site.id,
            len(items),
            committed.queued,
            ", all contacts reached" if committed.generated else "",
        )
        if committed.over is not None:
            return await self._wait_for_site(campaign, site, committed.over)
        if committed.generated:  # the batch cleared any note: the site had room again
            self._paces.pop(campaign.id, None)
            self._attachments.pop(campaign.id, None)
        return 0.0

    def _headroom(self, site: Site, now: float) -> int | OverLimit | None:
        """Messages the site's reserved limits leave room for by this process's cached counts
        (the store decides again in the batch); None when the site has no limits."""
        if self._usage is None:
            return None
        reserved = reserved_limits(site)
        if not reserved:
            return None
        over = self._usage.book.over(Scope.SITE, site.id, reserved, now)
        if over is not None:
            return over
        return min(
            limit - self._usage.book.used(Scope.SITE, site.id, window, now)
            for window, limit in reserved.items()
        )

    async def _wait_for_site(self, campaign: Campaign, site: Site, over: OverLimit) -> float:
        text = (
            f"waiting: site {site.id} is within {SITE_RESERVE:.0%} of its {over.window.value} "
            f"limit ({over.used}/{limits_of(site)[over.window]}), kept for its other "
            f"mail; generation goes on at {iso_time(over.reopens_at)}"
        )
        await self._writer.write_apart(lambda c: gen.note(c, campaign.id, self._owner, text))
        log.info("campaign %s: %s", campaign.id, text)
        return max(min(over.reopens_at - self._clock(), 10.0), 0.5)

    async def _attachments_of(
        self, campaign_id: str
    ) -> tuple[tuple[Attachment, ...], dict[int, bytes]]:
        cached = self._attachments.get(campaign_id)
        if cached is None:
            loaded = await self._writer.read_apart(
                partial(db.load_attachments, campaign_id=campaign_id)
            )
            cached = (
                tuple(a for _, a in loaded),
                {i: encoded_block(a.content) for i, a in loaded},
            )
            if len(self._attachments) > 16:
                self._attachments.clear()
            self._attachments[campaign_id] = cached
        return cached
