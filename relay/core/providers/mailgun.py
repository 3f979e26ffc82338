"""Mailgun webhooks (JSON): the HMAC signature, the replay window, and the event as ours.

Followed: Mailgun "Securing Webhooks" (documentation.mailgun.com/docs/mailgun/user-manual/
webhooks/securing-webhooks): the body carries ``signature: {timestamp, token, signature}``
(and ``parent-signature`` for a subaccount's domain, the same MAC under the primary
account's key); concatenate timestamp and token with no separator, HMAC-SHA256 with the
Webhook Signing Key, compare the hex digest. We compare in constant time, take either field
when it matches our key (so the key configured may be the subaccount's or the primary's),
and refuse a timestamp more than ``window_seconds`` from ``now`` either way. The same guide
advises caching tokens to refuse a replay: that is the caller's, with
``Accepted.replay_key`` (the token) kept for at least the window.

Note what the MAC covers: timestamp and token only, not ``event-data``. Within the window
and before the token is recorded, the event's integrity rests on TLS to our endpoint.

Events, from "Webhook Payloads" and "Event Types" (.../user-manual/events/event-types):
``event-data.event`` ``delivered`` -> delivered; ``failed`` with ``severity: permanent``
-> bounced_hard, except when its ``delivery-status.code`` is a 4xx reply (Mailgun gave up
after temporary failures: bounced_soft); ``severity: temporary`` -> deferred (Mailgun
retries); ``complained`` -> complained. ``accepted``, ``rejected``, ``opened``,
``clicked``, ``unsubscribed``, ``stored`` are ignored. ``message.headers.message-id`` is
both Mailgun's id for the message and the Message-ID it carried.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from relay.core.model import SmtpReply
from relay.core.providers.model import (
    MAX_BODY_BYTES,
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
    load_json,
    msg_id,
    obj,
    optional_text,
    recipient,
    reply_from,
    text,
    timestamp,
)

DEFAULT_WINDOW_SECONDS = 300.0
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_IGNORED = frozenset({"accepted", "rejected", "opened", "clicked", "unsubscribed", "stored"})


def verify(
    body: bytes,
    signing_key: bytes,
    *,
    now: float,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    max_bytes: int = MAX_BODY_BYTES,
) -> Verdict:
    """The events of one webhook POST, or why it is refused. ``now`` is Unix seconds."""
    return accepted_or_refused(lambda: _verify(body, signing_key, now, window_seconds, max_bytes))


def _verify(
    body: bytes, signing_key: bytes, now: float, window_seconds: float, max_bytes: int
) -> Verdict:
    payload = obj(load_json(body, max_bytes), "the body")
    signed = obj(payload.get("signature"), "signature")
    stamp = text(signed, "timestamp", limit=12)
    token = text(signed, "token")
    if _TIMESTAMP.fullmatch(stamp) is None:
        raise Malformed("signature.timestamp is not Unix seconds")
    expected = hmac.new(signing_key, (stamp + token).encode("utf-8"), hashlib.sha256).hexdigest()
    fields = ("signature", "parent-signature")
    if not any(_matches(signed.get(field), expected) for field in fields):
        return Refused(Refusal.BAD_SIGNATURE, "the Mailgun signature does not verify")
    if abs(now - int(stamp)) > window_seconds:
        return Refused(Refusal.STALE_TIMESTAMP, "signature.timestamp is outside the window")
    return _event(obj(payload.get("event-data"), "event-data"), token)


def _matches(given: Any, expected: str) -> bool:
    if not isinstance(given, str) or _HEX_SHA256.fullmatch(given) is None:
        return False
    return hmac.compare_digest(given, expected)


def _event(data: Mapping[str, Any], token: str) -> Verdict:
    name = text(data, "event", limit=64)
    if name in _IGNORED:
        return Accepted(events=(), ignored=(name,), replay_key=token)
    status = data.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    reply = reply_from(status.get("code"), optional_text(status, "message", cut=MAX_TEXT_CHARS))
    if name == "delivered":
        kind, raw_type = EventKind.DELIVERED, name
    elif name == "complained":
        kind, raw_type = EventKind.COMPLAINED, name
    elif name == "failed":
        severity = text(data, "severity", limit=32)
        kind = _failure_kind(severity, reply)
        raw_type = f"failed/{severity}"
    else:
        return Refused(Refusal.UNKNOWN_TYPE, "not a Mailgun event type")
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = msg_id(optional_text(headers, "message-id")) if isinstance(headers, dict) else None
    diagnostic = optional_text(status, "description", cut=MAX_TEXT_CHARS) or optional_text(
        status, "message", cut=MAX_TEXT_CHARS
    )
    event = ProviderEvent(
        provider=Provider.MAILGUN,
        kind=kind,
        recipient=recipient(data.get("recipient")),
        raw_type=raw_type,
        provider_message_id=message_id,
        message_id=message_id,
        occurred_at=timestamp(data.get("timestamp")),
        reply=reply,
        status=optional_text(status, "enhanced-code", cut=32),
        diagnostic=diagnostic,
        provider_event_id=optional_text(data, "id"),
    )
    return Accepted(events=(event,), replay_key=token)


def _failure_kind(severity: str, reply: SmtpReply | None) -> EventKind:
    if severity == "temporary":
        return EventKind.DEFERRED
    if severity != "permanent":
        raise Malformed("severity is neither permanent nor temporary")
    if reply is not None and reply.is_transient:
        return EventKind.BOUNCED_SOFT
    return EventKind.BOUNCED_HARD
