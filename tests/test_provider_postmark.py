"""Postmark webhooks: records in the documented format, with basic-auth credentials built
here as RFC 7617 says (``Basic base64(user ":" password)``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.core.providers import postmark
from relay.core.providers.model import Accepted, EventKind, Provider, Refusal, Refused

USER = "relay"
PASSWORD = "s3cret:with:colons"

# From the Bounce webhook page.
BOUNCE = {
    "RecordType": "Bounce",
    "MessageStream": "outbound",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "Test",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"a_key": "a_value"},
    "ServerID": 23,
    "Description": "The server was unable to deliver your message (ex: unknown user, ...).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
    "Email": "John@Example.com",
    "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Test subject",
    "Content": "Return-Path:....",
}
DELIVERY = {
    "RecordType": "Delivery",
    "ServerID": 23,
    "MessageStream": "outbound",
    "MessageID": "00000000-0000-0000-0000-000000000000",
    "Recipient": "john@example.com",
    "Tag": "welcome-email",
    "DeliveredAt": "2021-02-21T16:34:52Z",
    "Details": "Test delivery webhook details",
    "Metadata": {"example": "value"},
}
COMPLAINT = {
    "RecordType": "SpamComplaint",
    "MessageStream": "outbound",
    "ID": 42,
    "Type": "SpamComplaint",
    "TypeCode": 512,
    "Name": "Spam complaint",
    "MessageID": "00000000-0000-0000-0000-000000000000",
    "Details": "Test spam complaint details",
    "Email": "john@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
}


def _auth(user: str = USER, password: str = PASSWORD, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(f'{user}:{password}'.encode()).decode()}"


def _verify(record: Any, authorization: str | None = None) -> Accepted | Refused:
    body = json.dumps(record).encode()
    return postmark.verify(body, authorization or _auth(), USER, PASSWORD)


def test_a_hard_bounce() -> None:
    verdict = _verify(BOUNCE)
    assert isinstance(verdict, Accepted)
    (event,) = verdict.events
    assert event.provider is Provider.POSTMARK and event.suppresses
    assert (event.kind, event.recipient, event.raw_type) == (
        EventKind.BOUNCED_HARD,
        "john@example.com",
        "Bounce/HardBounce",
    )
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.message_id is None  # Postmark echoes none of our headers
    assert event.reply is not None and (event.reply.code, event.reply.enhanced) == (550, "5.1.1")
    assert event.occurred_at is not None and event.occurred_at.year == 2019
    assert event.provider_event_id == "4323372036854775807"
    assert verdict.replay_key is None


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [
        ("SoftBounce", EventKind.BOUNCED_SOFT),
        ("Transient", EventKind.DEFERRED),
        ("BadEmailAddress", EventKind.BOUNCED_HARD),
        ("SpamComplaint", EventKind.COMPLAINED),
        ("ManuallyDeactivated", EventKind.DROPPED),
    ],
)
def test_bounce_types(bounce_type: str, kind: EventKind) -> None:
    verdict = _verify({**BOUNCE, "Type": bounce_type})
    assert isinstance(verdict, Accepted) and verdict.events[0].kind is kind


def test_delivery_complaint_and_ignored_records() -> None:
    delivery = _verify(DELIVERY)
    assert isinstance(delivery, Accepted)
    assert (delivery.events[0].kind, delivery.events[0].recipient) == (
        EventKind.DELIVERED,
        "john@example.com",
    )
    complaint = _verify(COMPLAINT)
    assert isinstance(complaint, Accepted) and complaint.events[0].kind is EventKind.COMPLAINED
    assert _verify({"RecordType": "Open"}) == Accepted(events=(), ignored=("Open",))
    assert _verify({**BOUNCE, "Type": "AutoResponder"}) == Accepted(
        events=(), ignored=("Bounce/AutoResponder",)
    )
    unknown = _verify({**BOUNCE, "RecordType": "Teleport"})
    assert isinstance(unknown, Refused) and unknown.reason is Refusal.UNKNOWN_TYPE
    unknown = _verify({**BOUNCE, "Type": "Sideways"})
    assert isinstance(unknown, Refused) and unknown.reason is Refusal.UNKNOWN_TYPE


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic",
        "Basic !!!",
        "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        _auth(password="wrong"),
        _auth(user="Relay"),
        _auth(password=PASSWORD + "x"),
        _auth(password=PASSWORD[:-1]),
        "Basic " + base64.b64encode(USER.encode()).decode(),  # no colon at all
        "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),
        "Basic " + "A" * 100_000,
    ],
)
def test_wrong_or_absent_credentials_are_refused(authorization: str | None) -> None:
    body = json.dumps(BOUNCE).encode()
    verdict = postmark.verify(body, authorization, USER, PASSWORD)
    assert verdict == Refused(Refusal.BAD_CREDENTIALS, "the basic-auth credentials do not match")


def test_the_scheme_is_case_insensitive() -> None:
    assert isinstance(_verify(BOUNCE, _auth(scheme="basic")), Accepted)


def test_credentials_are_checked_before_the_body_is_read() -> None:
    verdict = postmark.verify(b"{", None, USER, PASSWORD)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.BAD_CREDENTIALS


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"\xff",
        b"{" * 100_000,
        b'{"RecordType": 5}',
        b'{"RecordType": "Bounce"}',
        b'{"RecordType": "Bounce", "Type": "HardBounce", "Email": "nobody"}',
        b'{"RecordType": "Delivery", "Recipient": ["a@example.com"]}',
        b'{"RecordType": "Bounce", "Type": "' + b"H" * 1_000_000 + b'"}',
        b'{"x": "' + b"y" * 3_000_000 + b'"}',
    ],
)
def test_malformed_bodies_are_refusals_never_exceptions(body: bytes) -> None:
    verdict = postmark.verify(body, _auth(), USER, PASSWORD)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.MALFORMED
