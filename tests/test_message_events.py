"""Pure parts of a message's events: how a pass's outcomes are named, an upstream's queue id."""

from __future__ import annotations

import json

import pytest

from relay.core import message_events
from relay.core.model import SmtpReply
from relay.core.outbound_events import EventType, Subscription, Subscriptions, event


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.0.0 Ok: queued as 4XyZ1b2C3d", "4XyZ1b2C3d"),  # Postfix, SendGrid
        ("Ok 0100018c2f6e1d2a-5a4b3c2d-1e0f-4a5b-9c8d-7e6f5a4b3c2d-000000",
         "0100018c2f6e1d2a-5a4b3c2d-1e0f-4a5b-9c8d-7e6f5a4b3c2d-000000"),  # SES
        ("2.0.0 OK id=1abcD2-0003Xy-9Q", "1abcD2-0003Xy-9Q"),  # Exim
        ("2.0.0 Ok: queued as <20261206.abc123@mx.example>", "20261206.abc123@mx.example"),
        ("Great success", None),  # Mailgun: no id (its events carry our Message-ID)
        ("2.0.0 OK accepted", None),
        ("", None),
    ],
)  # fmt: skip
def test_queue_id_of_a_250_reply(text: str, expected: str | None) -> None:
    assert message_events.queue_id(SmtpReply(250, text)) == expected


def test_no_queue_id_from_a_refusal() -> None:
    assert message_events.queue_id(SmtpReply(550, "5.1.1 no such user 4XyZ1b2C3d")) is None
    assert message_events.queue_id(None) is None


def test_a_queue_id_is_looked_for_in_a_bounded_text() -> None:
    assert message_events.queue_id(SmtpReply(250, "x" * 1_000_000 + " 4XyZ1b2C3d")) is None


@pytest.mark.parametrize(
    ("reply", "suppressed", "expected"),
    [
        (SmtpReply(550, "5.1.1 no such user"), None, EventType.BOUNCED),
        (SmtpReply(552, "5.2.2 mailbox full"), None, EventType.BOUNCED),
        (None, None, EventType.FAILED),  # expired, no route
        (SmtpReply(451, "4.3.0 later"), None, EventType.FAILED),  # expired after a 4xx
        (None, "asked us to stop", EventType.SUPPRESSED),
    ],
)
def test_a_recipient_given_up_is_named_by_why(
    reply: SmtpReply | None, suppressed: str | None, expected: EventType
) -> None:
    outcome = message_events.failure("a@example.org", reply, "main", suppressed=suppressed, why="x")
    assert outcome.type is expected


def test_a_bounce_says_whether_it_was_hard() -> None:
    outcomes = [
        message_events.failure("a@example.org", SmtpReply(550, "5.1.1 gone"), "main",
                               suppressed=None, why=None),
        message_events.failure("b@example.org", SmtpReply(552, "5.2.2 full"), "main",
                               suppressed=None, why=None),
    ]  # fmt: skip
    events = message_events.delivery_events(
        "m1", "shop", outcomes, None, 1_800_000_000.0, lambda n: bytes(n), lambda t: True
    )
    assert [e.data["bounce_type"] for e in events] == ["hard", "soft"]
    assert [e.data["smtp_code"] for e in events] == [550, 552]


def test_only_wanted_types_are_built() -> None:
    outcomes = [message_events.Outcome("a@example.org", EventType.DELIVERED, "main")]
    built = message_events.delivery_events(
        "m1", "shop", outcomes, None, 0.0, lambda n: bytes(n), lambda t: t is EventType.BOUNCED
    )
    assert built == []


def test_the_body_is_compact_json_in_a_fixed_shape() -> None:
    e = event(EventType.DELIVERED, 1_800_000_000.5, bytes(10), message_id="m1", site="shop",
              recipient="ä@example.org", upstream=None)  # fmt: skip
    assert e.body() == (
        '{"id":"' + e.id + '","type":"message.delivered","timestamp":"2027-01-15T08:00:00.500Z",'
        '"data":{"message_id":"m1","site":"shop","recipient":"ä@example.org"}}'
    )
    assert json.loads(e.body())["data"] == {
        "message_id": "m1",
        "site": "shop",
        "recipient": "ä@example.org",
    }


def test_fan_out_by_type_and_site() -> None:
    subscriptions = Subscriptions(
        (
            Subscription("all"),
            Subscription("bounces", frozenset({"message.bounced"})),
            Subscription("blog", sites=frozenset({"blog"})),
            Subscription("off", enabled=False),
        )
    )
    shop_bounce = event(EventType.BOUNCED, 0.0, bytes(10), site="shop")
    circuit = event(EventType.CIRCUIT_CHANGED, 0.0, bytes(10), upstream="main")
    entries = subscriptions.fan_out([shop_bounce, circuit])
    assert [(e.webhook, e.event.type.value) for e in entries] == [
        ("all", "message.bounced"),
        ("bounces", "message.bounced"),
        ("all", "upstream.circuit_changed"),
        ("blog", "upstream.circuit_changed"),  # an event of no site goes to every site's
    ]
    assert entries[0].body == entries[1].body  # built once per event
    assert not Subscriptions().wants_any(EventType.ACCEPTED)
    assert not Subscriptions((Subscription("off", enabled=False),)).wants_any(EventType.ACCEPTED)
    assert not subscriptions.fan_out([event(EventType.WEBHOOK_TEST, 0.0, bytes(10))])
