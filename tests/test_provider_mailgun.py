"""Mailgun webhooks: payloads in the documented JSON format, signed here from the guide
("concatenate timestamp and token, HMAC-SHA256 with the Webhook Signing Key, hex")."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from relay.core.providers import mailgun
from relay.core.providers.model import Accepted, EventKind, Provider, Refusal, Refused

KEY = b"key-7d9c0a4bd3b1f0e9a1c2d3e4f5a6b7c8"
NOW = 1_770_920_800.0
TOKEN = "e0b5477167110d68991efc6b9f89f0a11066af27834600e123"

FAILED = {
    "event": "failed",
    "id": "G9Bn5sl1TC6nu79C8C0bwg",
    "timestamp": 1770920772.501324,
    "log-level": "error",
    "severity": "permanent",
    "reason": "bounce",
    "recipient": "Alice@Example.com",
    "recipient-domain": "example.com",
    "message": {
        "headers": {
            "to": "Alice <alice@example.com>",
            "message-id": "<01hq3x7k9m@relay.example.org>",
            "from": "Bob <bob@example.org>",
            "subject": "Test permanent_fail webhook",
        },
        "attachments": [],
        "size": 111,
    },
    "delivery-status": {
        "attempt-no": 1,
        "message": "No Such User Here",
        "code": 550,
        "enhanced-code": "5.1.1",
        "description": "",
        "session-seconds": 0.0,
    },
    "flags": {"is-routed": False, "is-authenticated": True, "is-test-mode": False},
}


def _body(event: dict[str, Any], *, timestamp: str = "1770920772", key: bytes = KEY) -> bytes:
    mac = hmac.new(key, (timestamp + TOKEN).encode(), hashlib.sha256).hexdigest()
    signature = {"token": TOKEN, "timestamp": timestamp, "signature": mac}
    return json.dumps({"signature": signature, "event-data": event}).encode()


def test_a_permanent_failure_is_a_hard_bounce() -> None:
    verdict = mailgun.verify(_body(FAILED), KEY, now=NOW)
    assert isinstance(verdict, Accepted)
    (event,) = verdict.events
    assert event.provider is Provider.MAILGUN
    assert (event.kind, event.recipient, event.raw_type) == (
        EventKind.BOUNCED_HARD,
        "alice@example.com",
        "failed/permanent",
    )
    assert event.message_id == event.provider_message_id == "01hq3x7k9m@relay.example.org"
    assert event.reply is not None and (event.reply.code, event.reply.text) == (
        550,
        "No Such User Here",
    )
    assert event.status == "5.1.1" and event.provider_event_id == "G9Bn5sl1TC6nu79C8C0bwg"
    assert event.occurred_at is not None and int(event.occurred_at.timestamp()) == 1770920772
    assert verdict.replay_key == TOKEN  # the caller refuses a token it has seen


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"severity": "temporary"}, EventKind.DEFERRED),
        (
            {"delivery-status": {"code": 452, "message": "4.2.2 mailbox full"}},
            EventKind.BOUNCED_SOFT,
        ),
        (
            {"event": "delivered", "delivery-status": {"code": 250, "message": "OK"}},
            EventKind.DELIVERED,
        ),
        ({"event": "complained"}, EventKind.COMPLAINED),
    ],
)
def test_other_events(changes: dict[str, Any], kind: EventKind) -> None:
    verdict = mailgun.verify(_body({**FAILED, **changes}), KEY, now=NOW)
    assert isinstance(verdict, Accepted)
    assert verdict.events[0].kind is kind


def test_opens_are_ignored_and_unknown_events_refused() -> None:
    verdict = mailgun.verify(_body({**FAILED, "event": "opened"}), KEY, now=NOW)
    assert verdict == Accepted(events=(), ignored=("opened",), replay_key=TOKEN)
    unknown = mailgun.verify(_body({**FAILED, "event": "teleported"}), KEY, now=NOW)
    assert isinstance(unknown, Refused) and unknown.reason is Refusal.UNKNOWN_TYPE


def test_the_parent_signature_of_a_subaccount_verifies_with_the_primary_key() -> None:
    primary = b"key-primary"
    fields = json.loads(_body(FAILED))
    fields["signature"]["parent-signature"] = hmac.new(
        primary, ("1770920772" + TOKEN).encode(), hashlib.sha256
    ).hexdigest()
    assert isinstance(mailgun.verify(json.dumps(fields).encode(), primary, now=NOW), Accepted)


def test_a_wrong_key_is_refused() -> None:
    verdict = mailgun.verify(_body(FAILED, key=b"key-other"), KEY, now=NOW)
    assert verdict == Refused(Refusal.BAD_SIGNATURE, "the Mailgun signature does not verify")


def test_a_tampered_token_or_timestamp_is_refused() -> None:
    fields = json.loads(_body(FAILED))
    fields["signature"]["token"] = TOKEN[:-1] + "4"
    verdict = mailgun.verify(json.dumps(fields).encode(), KEY, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.BAD_SIGNATURE
    fields = json.loads(_body(FAILED))
    fields["signature"]["timestamp"] = "1770920773"
    verdict = mailgun.verify(json.dumps(fields).encode(), KEY, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.BAD_SIGNATURE


def test_a_timestamp_outside_the_window_is_refused_either_way() -> None:
    old = mailgun.verify(_body(FAILED, timestamp=str(int(NOW) - 301)), KEY, now=NOW)
    assert isinstance(old, Refused) and old.reason is Refusal.STALE_TIMESTAMP
    future = mailgun.verify(_body(FAILED, timestamp=str(int(NOW) + 301)), KEY, now=NOW)
    assert isinstance(future, Refused) and future.reason is Refusal.STALE_TIMESTAMP
    edge = mailgun.verify(_body(FAILED, timestamp=str(int(NOW) - 300)), KEY, now=NOW)
    assert isinstance(edge, Accepted)
    wide = mailgun.verify(_body(FAILED, timestamp="1000"), KEY, now=NOW, window_seconds=NOW)
    assert isinstance(wide, Accepted)


def _signed_with(signature: dict[str, Any], event: Any = FAILED) -> bytes:
    return json.dumps({"signature": signature, "event-data": event}).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'{"signature": "x"}',
        b"\xff" * 10,
        b"[" * 100_000,
        b'{"signature": {"token": "t", "timestamp": ' + b"9" * 5000 + b"}}",
        _signed_with({"token": TOKEN, "timestamp": "12x", "signature": "00"}),
        _signed_with({"token": TOKEN, "timestamp": "1" * 20, "signature": "00"}),
        _signed_with({"token": ["t"], "timestamp": "1770920772", "signature": "00"}),
        _signed_with({"token": "t" * 100_000, "timestamp": "1770920772", "signature": "0" * 64}),
        _signed_with({"token": TOKEN, "timestamp": "1770920772", "signature": "é" * 64}),
        _signed_with({"token": TOKEN, "timestamp": "1770920772", "signature": 5}),
        _body([]),  # type: ignore[arg-type]
        _body({**FAILED, "recipient": "no address"}),
        _body({**FAILED, "recipient": None}),
        _body({**FAILED, "severity": "sort of"}),
        _body({**FAILED, "event": 7}),
        _body({**FAILED, "recipient": "a" * 1_000_000 + "@example.com"}),
        b'{"signature": {}, "event-data": {}, "x": "' + b"y" * 3_000_000 + b'"}',
    ],
)
def test_malformed_input_is_a_refusal_never_an_exception(body: bytes) -> None:
    assert isinstance(mailgun.verify(body, KEY, now=NOW), Refused)


def test_odd_but_harmless_fields_do_not_break_the_event() -> None:
    event = {**FAILED, "timestamp": "yesterday", "message": "x", "delivery-status": [1]}
    verdict = mailgun.verify(_body(event), KEY, now=NOW)
    assert isinstance(verdict, Accepted)
    (one,) = verdict.events
    assert one.occurred_at is None and one.message_id is None and one.reply is None
