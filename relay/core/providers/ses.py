"""Amazon SES notifications (the ``Message`` of a verified SNS Notification) as our events.

Followed: "Amazon SNS notification contents for Amazon SES" (docs.aws.amazon.com/ses/latest/
dg/notification-contents.html) and the event-publishing variant ("eventType" instead of
"notificationType"). The top-level object has ``notificationType`` ``Bounce``,
``Complaint`` or ``Delivery`` and a ``mail`` object (``messageId``: SES's id, the one its
250 reply gave; ``headers``: the original headers, SES having overwritten some when sending;
``commonHeaders.messageId``). One event per recipient:

- ``bounce.bounceType`` ``Permanent`` -> bounced_hard; ``Transient`` and ``Undetermined``
  -> bounced_soft (SES has stopped trying; an undetermined reason never suppresses);
  ``bounce.bouncedRecipients[]`` with ``emailAddress``, ``status``, ``diagnosticCode``.
- ``complaint.complainedRecipients[].emailAddress`` -> complained.
- ``delivery.recipients[]`` -> delivered, with ``delivery.smtpResponse``.
- event publishing's ``DeliveryDelay`` (``deliveryDelay.delayedRecipients[]``) -> deferred;
  its ``Send``, ``Reject``, ``Open``, ``Click``, ``Rendering Failure``, ``Subscription`` are
  ignored. Another type is `UNKNOWN_TYPE`; unknown fields are allowed, as the guide asks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.providers.model import (
    MAX_TEXT_CHARS,
    Accepted,
    EventKind,
    Malformed,
    Provider,
    ProviderEvent,
    Refusal,
    Refused,
    Verdict,
    accepted_or_refused,
    items,
    load_json,
    msg_id,
    obj,
    optional_text,
    parse_reply,
    recipient,
    text,
    timestamp,
)
from relay.core.providers.sns import NOTIFICATION, SnsEnvelope

_BOUNCE_KINDS = {
    "Permanent": EventKind.BOUNCED_HARD,
    "Transient": EventKind.BOUNCED_SOFT,
    "Undetermined": EventKind.BOUNCED_SOFT,
}
_IGNORED = frozenset({"Send", "Reject", "Open", "Click", "Rendering Failure", "Subscription"})
_MAX_HEADERS = 1000


def envelope_events(envelope: SnsEnvelope) -> Verdict:
    """The events of a verified SNS Notification, keyed for replay by its ``MessageId``
    (SNS keeps it across retries, so a retried notification is recognised too)."""
    if envelope.type != NOTIFICATION:
        return Refused(Refusal.UNKNOWN_TYPE, "not an SNS Notification")
    verdict = notification_events(envelope.message)
    if isinstance(verdict, Accepted):
        return dataclasses.replace(verdict, replay_key=envelope.message_id)
    return verdict


def notification_events(message: str) -> Verdict:
    """The events of one SES notification; ``message`` is the verified SNS ``Message``."""
    return accepted_or_refused(lambda: _events(message))


def _events(message: str) -> Verdict:
    notification = obj(load_json(message.encode("utf-8")), "the SES notification")
    kind = notification.get("notificationType", notification.get("eventType"))
    if not isinstance(kind, str):
        return Refused(Refusal.UNKNOWN_TYPE, "not an SES notification")
    if kind in _IGNORED:
        return Accepted(events=(), ignored=(kind,))
    mapping = _MAPPINGS.get(kind)
    if mapping is None:
        return Refused(Refusal.UNKNOWN_TYPE, "not an SES notification type")
    field, build = mapping
    mail = obj(notification.get("mail"), "mail")
    common = _Common(provider_message_id=text(mail, "messageId"), message_id=_our_message_id(mail))
    return Accepted(build(obj(notification.get(field), field), common))


@dataclass(frozen=True)
class _Common:
    """What every event of one notification shares: the ids of its message."""

    provider_message_id: str
    message_id: str | None

    def event(self, kind: EventKind, address: Any, raw_type: str, **more: Any) -> ProviderEvent:
        return ProviderEvent(
            provider=Provider.SES,
            kind=kind,
            recipient=recipient(address),
            raw_type=raw_type,
            provider_message_id=self.provider_message_id,
            message_id=self.message_id,
            **more,
        )


def _our_message_id(mail: Mapping[str, Any]) -> str | None:
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers[:_MAX_HEADERS]:
            name = header.get("name") if isinstance(header, dict) else None
            if isinstance(name, str) and name.lower() == "message-id":
                return msg_id(optional_text(header, "value"))
    common = mail.get("commonHeaders")
    if isinstance(common, dict):
        return msg_id(optional_text(common, "messageId"))
    return None


def _bounce(bounce: Mapping[str, Any], common: _Common) -> tuple[ProviderEvent, ...]:
    bounce_type = text(bounce, "bounceType")
    kind = _BOUNCE_KINDS.get(bounce_type)
    if kind is None:
        raise Malformed("bounceType is not Permanent, Transient or Undetermined")
    more = {
        "occurred_at": timestamp(bounce.get("timestamp")),
        "provider_event_id": optional_text(bounce, "feedbackId"),
    }
    return tuple(
        _failed(common, kind, f"Bounce/{bounce_type}", obj(each, "bouncedRecipient"), more)
        for each in items(bounce.get("bouncedRecipients"), "bouncedRecipients")
    )


def _failed(
    common: _Common, kind: EventKind, raw_type: str, each: Mapping[str, Any], more: dict[str, Any]
) -> ProviderEvent:
    diagnostic = optional_text(each, "diagnosticCode", cut=MAX_TEXT_CHARS)
    return common.event(
        kind,
        each.get("emailAddress"),
        raw_type,
        reply=parse_reply(diagnostic),
        status=optional_text(each, "status", cut=32),
        diagnostic=diagnostic,
        **more,
    )


def _complaint(complaint: Mapping[str, Any], common: _Common) -> tuple[ProviderEvent, ...]:
    more = {
        "occurred_at": timestamp(complaint.get("timestamp")),
        "provider_event_id": optional_text(complaint, "feedbackId"),
        "diagnostic": optional_text(complaint, "complaintFeedbackType", cut=64),
    }
    return tuple(
        common.event(
            EventKind.COMPLAINED,
            obj(each, "complainedRecipient").get("emailAddress"),
            "Complaint",
            **more,
        )
        for each in items(complaint.get("complainedRecipients"), "complainedRecipients")
    )


def _delivery(delivery: Mapping[str, Any], common: _Common) -> tuple[ProviderEvent, ...]:
    response = optional_text(delivery, "smtpResponse", cut=MAX_TEXT_CHARS)
    more = {
        "occurred_at": timestamp(delivery.get("timestamp")),
        "reply": parse_reply(response),
        "diagnostic": response,
    }
    return tuple(
        common.event(EventKind.DELIVERED, address, "Delivery", **more)
        for address in items(delivery.get("recipients"), "recipients")
    )


def _delay(delay: Mapping[str, Any], common: _Common) -> tuple[ProviderEvent, ...]:
    more = {"occurred_at": timestamp(delay.get("timestamp"))}
    raw_type = f"DeliveryDelay/{optional_text(delay, 'delayType', cut=64) or ''}".rstrip("/")
    return tuple(
        _failed(common, EventKind.DEFERRED, raw_type, obj(each, "delayedRecipient"), more)
        for each in items(delay.get("delayedRecipients"), "delayedRecipients")
    )


_Build = Callable[[Mapping[str, Any], _Common], tuple[ProviderEvent, ...]]
_MAPPINGS: dict[str, tuple[str, _Build]] = {
    "Bounce": ("bounce", _bounce),
    "Complaint": ("complaint", _complaint),
    "Delivery": ("delivery", _delivery),
    "DeliveryDelay": ("deliveryDelay", _delay),
}
