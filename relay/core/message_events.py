"""A message's events, from what ingress stored and what a delivery pass learned.

Per recipient, a pass ends in one of: delivered (an upstream took it), deferred (tried
again later), bounced (an upstream refused it with 5xx; ``bounce_type`` hard when the
address itself is refused, which also suppresses it), suppressed (on the site's list: no
try), failed (given up without a refusal: expired, no route).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.core.classify import is_hard_bounce
from relay.core.model import NewMessage, SmtpReply
from relay.core.outbound_events import Event, EventType, iso_time, message_event

Random = Callable[[int], bytes]

DELIVERY_TYPES = (
    EventType.DELIVERED,
    EventType.DEFERRED,
    EventType.BOUNCED,
    EventType.FAILED,
    EventType.SUPPRESSED,
)

# The upstream's own id for the message in its 250 reply to DATA: Postfix and SendGrid say
# "queued as X", SES "Ok X", others "id=X" or just end with it.
_QUEUED_AS = re.compile(r"queued as\s+<?([^\s<>]+)>?", re.IGNORECASE)
_LAST_TOKEN = re.compile(r"(?:id=)?<?([A-Za-z0-9][A-Za-z0-9._@:=+/-]{5,199})>?\s*$")


def accepted(message: NewMessage, via: str, random: Random) -> Event:
    return message_event(
        EventType.ACCEPTED,
        message.created_at,
        random(10),
        message_id=message.id,
        site=message.site_id,
        recipients=len(message.recipients),
        size=message.size if message.size is not None else len(message.content),
        message_class=message.message_class.value,
        via=via,
    )


def suppressed_at_ingress(
    site: str, recipient: str, reason: str, via: str, now: float, random: Random
) -> Event:
    """A recipient refused before any message existed (RCPT, the send API): no message id."""
    return message_event(
        EventType.SUPPRESSED,
        now,
        random(10),
        message_id=None,
        site=site,
        recipient=recipient,
        reason=reason,
        via=via,
    )


@dataclass(frozen=True)
class Outcome:
    """One recipient at the end of a pass, as ``delivery_events`` needs it."""

    recipient: str
    type: EventType
    upstream: str | None = None
    reply: SmtpReply | None = None
    reason: str | None = None  # suppressed: the list's reason; failed: why given up


def failure(
    recipient: str,
    reply: SmtpReply | None,
    upstream: str | None,
    *,
    suppressed: str | None,
    why: str | None,
) -> Outcome:
    """A recipient given up: on the site's list, refused (a bounce), or ``why`` (expired...)."""
    if suppressed is not None:
        return Outcome(recipient, EventType.SUPPRESSED, reason=suppressed)
    if reply is not None and reply.is_permanent:
        return Outcome(recipient, EventType.BOUNCED, upstream, reply)
    return Outcome(recipient, EventType.FAILED, upstream, reply, reason=why)


def delivery_events(
    message_id: str,
    site: str,
    outcomes: Sequence[Outcome],
    retry_at: float | None,
    now: float,
    random: Random,
    wanted: Callable[[EventType], bool],
) -> list[Event]:
    events = []
    for o in outcomes:
        if not wanted(o.type):
            continue
        extra: dict[str, str | None] = {"reason": o.reason}
        if o.type is EventType.BOUNCED:
            extra["bounce_type"] = "hard" if is_hard_bounce(o.reply) else "soft"
        if o.type is EventType.DEFERRED and retry_at is not None:
            extra["retry_at"] = iso_time(retry_at)
        events.append(
            message_event(
                o.type,
                now,
                random(10),
                message_id=message_id,
                site=site,
                recipient=o.recipient,
                upstream=o.upstream,
                reply=o.reply,
                **extra,
            )
        )
    return events


def queue_id(reply: SmtpReply | None) -> str | None:
    """The upstream's id for a message it took, from its 250 reply; None when it gave none."""
    if reply is None or not reply.is_success:
        return None
    text = reply.text[:300]
    found = _QUEUED_AS.search(text) or _LAST_TOKEN.search(text)
    if found is None:
        return None
    candidate = found.group(1)
    # A word such as "accepted" or "Ok" is not an id: one has a digit in it.
    return candidate if any(c.isdigit() for c in candidate) else None
