"""SendGrid's signed Event Webhook: the ECDSA signature, a replay window, the batch as ours.

Followed: Twilio SendGrid "Getting Started with the Event Webhook Security Features"
(twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-
security-features) and its reference verifier (sendgrid-python ``EventWebhook.
verify_signature``): the signature is base64 in ``X-Twilio-Email-Event-Webhook-Signature``,
an ECDSA signature (DER) with SHA-256 over the ``X-Twilio-Email-Event-Webhook-Timestamp``
value followed by the raw body, checked with the verification key SendGrid shows (base64 of
a DER SubjectPublicKeyInfo; we take only P-256, the curve SendGrid generates). The body is
verified as bytes before it is parsed. SendGrid documents no replay window: a timestamp
more than ``window_seconds`` from ``now`` is refused, and ``Accepted.replay_key`` (a digest
of the signed bytes, timestamp and body) is the caller's to record. Not the signature: an
ECDSA signature (r, s) has a twin (r, n - s) that verifies as well, so a captured request
sent again with the twin would pass a seen-set keyed by signatures.

Events, from the "Event Webhook Reference" (.../tracking-events/event): a JSON array of
objects with ``email``, ``timestamp``, ``event``, ``sg_event_id``, ``sg_message_id``,
``smtp-id`` (the Message-ID), and per event ``response``, ``reason``, ``status``,
``type``. ``delivered`` -> delivered; ``bounce`` with ``type: bounce`` -> bounced_hard,
``type: blocked`` -> bounced_soft (SendGrid's "blocks" are not address failures);
``dropped`` -> dropped; ``deferred`` -> deferred; ``spamreport`` -> complained. Other
documented events (processed, open, click, unsubscribe, group_unsubscribe,
group_resubscribe) and any we do not know are ignored one by one: refusing the batch for
one of them would drop its bounces with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

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

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
DEFAULT_WINDOW_SECONDS = 300.0
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_SIGNATURE_CHARS = 256  # base64 of a DER P-256 signature is at most 96
_MAX_KEY_CHARS = 1024
_SIMPLE = {
    "delivered": EventKind.DELIVERED,
    "dropped": EventKind.DROPPED,
    "deferred": EventKind.DEFERRED,
    "spamreport": EventKind.COMPLAINED,
}
_BOUNCE_TYPES = {"bounce": EventKind.BOUNCED_HARD, "blocked": EventKind.BOUNCED_SOFT}


def load_public_key(verification_key: str) -> ec.EllipticCurvePublicKey | None:
    """The verification key as SendGrid shows it (base64 DER); None unless it is P-256.

    For the configuration: a key that does not load is a config error, found at start.
    """
    if not isinstance(verification_key, str) or len(verification_key) > _MAX_KEY_CHARS:
        return None
    try:
        key = load_der_public_key(
            base64.b64decode("".join(verification_key.split()), validate=True)
        )
    except (ValueError, binascii.Error):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


def verify(
    body: bytes,
    signature: str | None,
    signed_at: str | None,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: float,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    max_bytes: int = MAX_BODY_BYTES,
) -> Verdict:
    """The events of one POST; ``signature`` and ``signed_at`` are the two headers' values."""
    if len(body) > max_bytes:
        return Refused(Refusal.MALFORMED, f"body longer than {max_bytes} bytes")
    if not signature or not signed_at or len(signature) > _MAX_SIGNATURE_CHARS:
        return Refused(Refusal.BAD_SIGNATURE, "the signature headers are absent")
    if _TIMESTAMP.fullmatch(signed_at) is None:
        return Refused(Refusal.MALFORMED, "the timestamp header is not Unix seconds")
    try:
        decoded = base64.b64decode(signature, validate=True)
        public_key.verify(decoded, signed_at.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return Refused(Refusal.BAD_SIGNATURE, "the SendGrid signature does not verify")
    if abs(now - int(signed_at)) > window_seconds:
        return Refused(Refusal.STALE_TIMESTAMP, "the timestamp header is outside the window")
    request_key = hashlib.sha256(signed_at.encode("ascii") + b"\n" + body).hexdigest()
    return accepted_or_refused(lambda: _batch(body, request_key))


def _batch(body: bytes, request_key: str) -> Verdict:
    events: list[ProviderEvent] = []
    ignored: list[str] = []
    for each in items(load_json(body), "the body"):
        record = obj(each, "an event")
        name = text(record, "event", limit=64)
        kind = _kind(name, record)
        if kind is None:
            ignored.append(name)
        else:
            events.append(_event(record, name, kind))
    return Accepted(events=tuple(events), ignored=tuple(ignored), replay_key=request_key)


def _kind(name: str, record: Mapping[str, Any]) -> EventKind | None:
    if name == "bounce":
        # Older payloads have no "type"; a bounce then is SendGrid's hard kind.
        kind = _BOUNCE_TYPES.get(optional_text(record, "type", cut=32) or "bounce")
        if kind is None:
            raise Malformed("bounce type is neither bounce nor blocked")
        return kind
    return _SIMPLE.get(name)


def _event(record: Mapping[str, Any], name: str, kind: EventKind) -> ProviderEvent:
    said = optional_text(record, "response", cut=MAX_TEXT_CHARS) or optional_text(
        record, "reason", cut=MAX_TEXT_CHARS
    )
    bounce_type = optional_text(record, "type", cut=32) if name == "bounce" else None
    return ProviderEvent(
        provider=Provider.SENDGRID,
        kind=kind,
        recipient=recipient(record.get("email")),
        raw_type=f"{name}/{bounce_type}" if bounce_type else name,
        provider_message_id=optional_text(record, "sg_message_id"),
        message_id=msg_id(optional_text(record, "smtp-id")),
        occurred_at=timestamp(record.get("timestamp")),
        reply=parse_reply(said),
        status=optional_text(record, "status", cut=32),
        diagnostic=said,
        provider_event_id=optional_text(record, "sg_event_id"),
    )
