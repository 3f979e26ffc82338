"""The events the relay reports to webhooks: their types, their JSON, who gets which.

An event is ``{"id", "type", "timestamp", "data"}`` (DESIGN, "Contract: events and
webhooks"). ``data`` holds ``message_id``, ``site``, ``recipient``, ``upstream``,
``smtp_code`` and ``smtp_text`` where they apply, and nothing else that could carry a
secret. The body is built once, when the event is written to the outbox, and those exact
bytes are signed and sent on every try, so a receiver that checks signatures never sees
two bodies for one ``id``.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.ids import new_message_id
from relay.core.model import SmtpReply


class EventType(enum.StrEnum):
    ACCEPTED = "message.accepted"
    DELIVERED = "message.delivered"  # the upstream took it for this recipient
    DEFERRED = "message.deferred"  # a try failed for a reason that may pass; it is tried again
    FAILED = "message.failed"  # given up without a bounce: expired, refused by policy
    BOUNCED = "message.bounced"  # the receiving side said no (5xx, or a provider's bounce)
    COMPLAINED = "message.complained"
    SUPPRESSED = "message.suppressed"  # not sent: the recipient is on the site's list
    UNSUBSCRIBED = "message.unsubscribed"
    CIRCUIT_CHANGED = "upstream.circuit_changed"
    QUOTA_WARNING = "quota.warning"
    DNS_CHANGED = "domain.dns_changed"
    CAMPAIGN_FINISHED = "campaign.finished"
    WEBHOOK_TEST = "webhook.test"  # POST /api/v1/webhooks/{name}/test: to that endpoint only
    WEBHOOK_DISABLED = "webhook.disabled"  # an endpoint failed too long: to the others


# What an endpoint may subscribe to: everything but the test event, which goes only to
# the endpoint it was asked for.
SUBSCRIBABLE = frozenset(EventType) - {EventType.WEBHOOK_TEST}


@dataclass(frozen=True)
class Event:
    id: str
    type: EventType
    timestamp: float  # UNIX seconds
    data: Mapping[str, Any]

    @property
    def site(self) -> str | None:
        site = self.data.get("site")
        return site if isinstance(site, str) else None

    @property
    def message_id(self) -> str | None:
        message_id = self.data.get("message_id")
        return message_id if isinstance(message_id, str) else None

    def body(self) -> str:
        """The JSON sent, compact, keys in a fixed order."""
        return json.dumps(
            {
                "id": self.id,
                "type": self.type.value,
                "timestamp": iso_time(self.timestamp),
                "data": dict(self.data),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


def iso_time(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-12-06T21:00:00.123Z."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id(now: float, random_bytes: bytes) -> str:
    """``evt_`` and 26 sortable characters (``core.ids``): Standard Webhooks' ``webhook-id``."""
    return f"evt_{new_message_id(now, random_bytes)}"


def event(
    type: EventType, now: float, random_bytes: bytes, **data: str | int | float | bool | None
) -> Event:
    """An event; data fields that are None are left out."""
    return Event(
        new_event_id(now, random_bytes),
        type,
        now,
        {key: value for key, value in data.items() if value is not None},
    )


def message_event(
    type: EventType,
    now: float,
    random_bytes: bytes,
    *,
    message_id: str | None,
    site: str,
    recipient: str | None = None,
    upstream: str | None = None,
    reply: SmtpReply | None = None,
    **extra: str | int | float | bool | None,
) -> Event:
    return event(
        type,
        now,
        random_bytes,
        message_id=message_id,
        site=site,
        recipient=recipient,
        upstream=upstream,
        smtp_code=reply.code if reply else None,
        smtp_text=reply.text if reply else None,
        **extra,
    )


@dataclass(frozen=True)
class Subscription:
    """An endpoint's filters: empty ``events`` or ``sites`` means all of them."""

    name: str
    events: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()
    enabled: bool = True

    def wants(self, type: EventType, site: str | None) -> bool:
        if not self.enabled or type is EventType.WEBHOOK_TEST:
            return False
        if self.events and type.value not in self.events:
            return False
        # An event of no site (a circuit, a DNS change) goes to every endpoint that takes its type.
        return not self.sites or site is None or site in self.sites


@dataclass(frozen=True)
class OutboxEntry:
    """One event for one endpoint: a row of the outbox."""

    webhook: str
    event: Event
    body: str


@dataclass(frozen=True)
class Subscriptions:
    """Every endpoint's filters, as one process knows them now."""

    endpoints: tuple[Subscription, ...] = ()

    def wants_any(self, type: EventType) -> bool:
        """Whether building events of this type is worth it at all (most relays: no)."""
        return any(s.enabled and (not s.events or type.value in s.events) for s in self.endpoints)

    def fan_out(self, events: Iterable[Event]) -> list[OutboxEntry]:
        entries: list[OutboxEntry] = []
        for e in events:
            wanting = [s.name for s in self.endpoints if s.wants(e.type, e.site)]
            if wanting:
                body = e.body()
                entries.extend(OutboxEntry(name, e, body) for name in wanting)
        return entries


def test_entry(webhook: str, now: float, random_bytes: bytes) -> OutboxEntry:
    """The ``webhook.test`` event for one endpoint."""
    e = event(EventType.WEBHOOK_TEST, now, random_bytes, webhook=webhook)
    return OutboxEntry(webhook, e, e.body())
