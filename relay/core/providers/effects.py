"""What a verified provider event does once it is matched to one of our messages: the event
we report, whether the recipient is suppressed and why, and the keys it is found and
remembered by.

- delivered -> ``message.delivered``, deferred -> ``message.deferred``, bounced_hard and
  bounced_soft -> ``message.bounced`` (``bounce_type`` hard | soft), complained ->
  ``message.complained``, dropped -> ``message.failed``; each with ``reported_by`` (the
  provider) beside the contract's fields.
- A hard bounce puts the recipient on the site's list with source ``bounce`` (as the
  relay's own hard bounces do), a complaint with source ``complaint``; both for good.
- A message is looked for by the provider's id for it, then by our Message-ID: SendGrid's
  ``sg_message_id`` is the queue id of its 250 reply followed by ``.filter...``, so its part
  before the first dot is tried too.
"""

from __future__ import annotations

import hashlib

from relay.core.model import SmtpReply
from relay.core.outbound_events import Event, EventType, message_event
from relay.core.providers.model import EventKind, Provider, ProviderEvent

MAX_REASON_CHARS = 500  # the suppression list's (relay/suppression_controller.py)
_EVENT_TYPES = {
    EventKind.DELIVERED: EventType.DELIVERED,
    EventKind.DEFERRED: EventType.DEFERRED,
    EventKind.BOUNCED_HARD: EventType.BOUNCED,
    EventKind.BOUNCED_SOFT: EventType.BOUNCED,
    EventKind.DROPPED: EventType.FAILED,
    EventKind.COMPLAINED: EventType.COMPLAINED,
}
_BOUNCE_TYPES = {EventKind.BOUNCED_HARD: "hard", EventKind.BOUNCED_SOFT: "soft"}
_SOURCES = {EventKind.BOUNCED_HARD: "bounce", EventKind.COMPLAINED: "complaint"}


def refs(event: ProviderEvent) -> list[str]:
    """The names the upstream may have for the message, in the order to look them up."""
    found: list[str] = []
    if event.provider_message_id:
        found.append(event.provider_message_id)
        head = event.provider_message_id.split(".", 1)[0]
        if event.provider is Provider.SENDGRID and head and head not in found:
            found.append(head)
    if event.message_id and event.message_id not in found:
        found.append(event.message_id)
    return found


def outbound_event(
    event: ProviderEvent,
    now: float,
    random_bytes: bytes,
    *,
    message_id: str,
    site: str,
    upstream: str,
) -> Event:
    """Our event for a provider's, for the webhooks."""
    return message_event(
        _EVENT_TYPES[event.kind],
        now,
        random_bytes,
        message_id=message_id,
        site=site,
        recipient=event.recipient,
        upstream=upstream,
        reply=event.reply,
        bounce_type=_BOUNCE_TYPES.get(event.kind),
        reported_by=event.provider.value,
    )


def suppression_source(event: ProviderEvent) -> str | None:
    """The source of the suppression this event makes, or None when it makes none."""
    return _SOURCES.get(event.kind) if event.suppresses else None


def suppression_reason(event: ProviderEvent, upstream: str) -> str:
    """Why the address is listed, in the words of the list: what, who said so, their text."""
    what = "complaint" if event.kind is EventKind.COMPLAINED else "hard bounce"
    said = _said(event.reply, event.diagnostic)
    reason = f"{what} reported by {event.provider.value} (upstream {upstream})"
    reason = f"{reason}: {said}" if said else reason
    printable = "".join(c if c.isprintable() else " " for c in reason[: MAX_REASON_CHARS * 2])
    return " ".join(printable.split())[:MAX_REASON_CHARS]


def _said(reply: SmtpReply | None, diagnostic: str | None) -> str | None:
    if reply is not None:
        return f"{reply.code} {reply.text}".strip()
    return diagnostic


def replay_key(upstream: str, key: str) -> str:
    """What the seen-set stores: the upstream and a digest of the provider's key (a Mailgun
    token, a SendGrid request's digest, an SNS MessageId): one length whatever was sent."""
    return f"{upstream}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"
