"""Postmark webhooks: the basic-auth credentials, and the record as ours.

Followed: Postmark "Webhooks overview" (postmarkapp.com/developer/webhooks/webhooks-overview),
"Protecting your webhook": Postmark signs nothing; the webhook URL carries a user name and
password (``https://<username>:<password>@host/...``) that Postmark sends as HTTP basic
authentication (RFC 7617: ``Authorization: Basic base64(user ":" password)``). We parse that
header, split at the first colon, and compare both parts with the configured ones in
constant time (both compared always). There is no timestamp and no nonce to refuse a
replay with; ``Accepted.replay_key`` is None.

Records, from the "Bounce", "Delivery" and "Spam complaint" webhook pages and the bounce
types of the Bounce API (postmarkapp.com/developer/api/bounce-api#bounce-types): one JSON
object with ``RecordType``:

- ``Delivery``: ``Recipient``, ``DeliveredAt``, ``Details``, ``MessageID`` -> delivered.
- ``SpamComplaint``: ``Email``, ``BouncedAt`` -> complained.
- ``Bounce``: ``Email``, ``Type``, ``BouncedAt``, ``Details``, ``Description``; ``Type``
  ``HardBounce`` and ``BadEmailAddress`` -> bounced_hard; ``SoftBounce``, ``DnsError``,
  ``SpamNotification``, ``Blocked``, ``DMARCPolicy``, ``SMTPApiError``, ``Unknown`` ->
  bounced_soft; ``Transient`` (delayed) -> deferred; ``SpamComplaint`` -> complained;
  ``ManuallyDeactivated`` and ``TemplateRenderingFailed`` -> dropped; the others
  (AutoResponder, AddressChange, Subscribe, Unsubscribe, OpenRelayTest, VirusNotification,
  ChallengeVerification, Unconfirmed, InboundError) are ignored.
- ``Open``, ``Click``, ``SubscriptionChange`` are ignored.

``MessageID`` is Postmark's id (its SMTP 250 reply's); Postmark echoes none of our headers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from relay.core.providers.model import (
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    Accepted,
    EventKind,
    Provider,
    ProviderEvent,
    Refusal,
    Refused,
    Verdict,
    accepted_or_refused,
    load_json,
    obj,
    optional_text,
    parse_reply,
    recipient,
    text,
    timestamp,
)

_MAX_AUTHORIZATION_CHARS = 1024
_BOUNCE_KINDS = {
    "HardBounce": EventKind.BOUNCED_HARD,
    "BadEmailAddress": EventKind.BOUNCED_HARD,
    "SoftBounce": EventKind.BOUNCED_SOFT,
    "DnsError": EventKind.BOUNCED_SOFT,
    "SpamNotification": EventKind.BOUNCED_SOFT,
    "Blocked": EventKind.BOUNCED_SOFT,
    "DMARCPolicy": EventKind.BOUNCED_SOFT,
    "SMTPApiError": EventKind.BOUNCED_SOFT,
    "Unknown": EventKind.BOUNCED_SOFT,
    "Transient": EventKind.DEFERRED,
    "SpamComplaint": EventKind.COMPLAINED,
    "ManuallyDeactivated": EventKind.DROPPED,
    "TemplateRenderingFailed": EventKind.DROPPED,
}
_IGNORED_BOUNCES = frozenset(
    {
        "AutoResponder",
        "AddressChange",
        "Subscribe",
        "Unsubscribe",
        "OpenRelayTest",
        "VirusNotification",
        "ChallengeVerification",
        "Unconfirmed",
        "InboundError",
    }
)
_IGNORED = frozenset({"Open", "Click", "SubscriptionChange"})


def credentials_match(authorization: str | None, username: str, password: str) -> bool:
    """Does an ``Authorization`` header carry exactly these basic-auth credentials?"""
    if not authorization or len(authorization) > _MAX_AUTHORIZATION_CHARS:
        return False
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, colon, given_password = decoded.partition(b":")
    user_ok = hmac.compare_digest(given_user, username.encode("utf-8"))
    password_ok = hmac.compare_digest(given_password, password.encode("utf-8"))
    return bool(colon) & user_ok & password_ok


def verify(
    body: bytes,
    authorization: str | None,
    username: str,
    password: str,
    *,
    max_bytes: int = MAX_BODY_BYTES,
) -> Verdict:
    """The events of one webhook POST, or why it is refused."""
    if not credentials_match(authorization, username, password):
        return Refused(Refusal.BAD_CREDENTIALS, "the basic-auth credentials do not match")
    return accepted_or_refused(lambda: _record(obj(load_json(body, max_bytes), "the body")))


def _record(record: Mapping[str, Any]) -> Verdict:
    record_type = text(record, "RecordType", limit=64)
    if record_type in _IGNORED:
        return Accepted(events=(), ignored=(record_type,))
    if record_type == "Delivery":
        return _accepted(record, EventKind.DELIVERED, "Delivery", "Recipient", "DeliveredAt")
    if record_type == "SpamComplaint":
        return _accepted(record, EventKind.COMPLAINED, "SpamComplaint", "Email", "BouncedAt")
    if record_type != "Bounce":
        return Refused(Refusal.UNKNOWN_TYPE, "not a Postmark record type")
    bounce_type = text(record, "Type", limit=64)
    raw_type = f"Bounce/{bounce_type}"
    if bounce_type in _IGNORED_BOUNCES:
        return Accepted(events=(), ignored=(raw_type,))
    kind = _BOUNCE_KINDS.get(bounce_type)
    if kind is None:
        return Refused(Refusal.UNKNOWN_TYPE, "not a Postmark bounce type")
    return _accepted(record, kind, raw_type, "Email", "BouncedAt")


def _accepted(
    record: Mapping[str, Any], kind: EventKind, raw_type: str, address: str, when: str
) -> Accepted:
    details = optional_text(record, "Details", cut=MAX_TEXT_CHARS)
    event_id = record.get("ID")
    event = ProviderEvent(
        provider=Provider.POSTMARK,
        kind=kind,
        recipient=recipient(record.get(address)),
        raw_type=raw_type,
        provider_message_id=optional_text(record, "MessageID"),
        occurred_at=timestamp(record.get(when)),
        reply=parse_reply(details),
        diagnostic=details or optional_text(record, "Description", cut=MAX_TEXT_CHARS),
        provider_event_id=str(event_id) if type(event_id) is int else None,
    )
    return Accepted(events=(event,))
