"""core.providers.effects: what each provider event kind becomes, and how its message is found."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.core.model import SmtpReply
from relay.core.outbound_events import EventType
from relay.core.providers import effects
from relay.core.providers.model import EventKind, Provider, ProviderEvent

NOW = 1_800_000_000.0


def event(kind: EventKind, provider: Provider = Provider.SES, **more: Any) -> ProviderEvent:
    return ProviderEvent(provider, kind, "jane@example.com", "raw", **more)


@pytest.mark.parametrize(
    ("kind", "type", "bounce_type", "source"),
    [
        (EventKind.DELIVERED, EventType.DELIVERED, None, None),
        (EventKind.DEFERRED, EventType.DEFERRED, None, None),
        (EventKind.BOUNCED_HARD, EventType.BOUNCED, "hard", "bounce"),
        (EventKind.BOUNCED_SOFT, EventType.BOUNCED, "soft", None),
        (EventKind.DROPPED, EventType.FAILED, None, None),
        (EventKind.COMPLAINED, EventType.COMPLAINED, None, "complaint"),
    ],
)
def test_each_kind(
    kind: EventKind, type: EventType, bounce_type: str | None, source: str | None
) -> None:
    reported = event(kind, reply=SmtpReply(550, "5.1.1 user unknown"))
    ours = effects.outbound_event(
        reported, NOW, b"\0" * 10, message_id="m1", site="shop", upstream="ses"
    )
    assert ours.type is type
    data = json.loads(ours.body())["data"]
    assert data.get("bounce_type") == bounce_type
    assert data["reported_by"] == "ses" and data["smtp_code"] == 550
    assert (data["message_id"], data["site"], data["upstream"]) == ("m1", "shop", "ses")
    assert effects.suppression_source(reported) == source


def test_refs_in_order_with_sendgrids_queue_id_prefix() -> None:
    sendgrid = event(
        EventKind.DELIVERED,
        Provider.SENDGRID,
        provider_message_id="14c5d75ce93.filter0001.16648.5515E0B88.0",
        message_id="01hq@relay.test",
    )
    assert effects.refs(sendgrid) == [
        "14c5d75ce93.filter0001.16648.5515E0B88.0",
        "14c5d75ce93",
        "01hq@relay.test",
    ]
    dotted = event(
        EventKind.DELIVERED, Provider.MAILGUN, provider_message_id="a.b@x", message_id="a.b@x"
    )
    assert effects.refs(dotted) == ["a.b@x"]  # only SendGrid's id has a filter suffix
    assert effects.refs(event(EventKind.DELIVERED)) == []


def test_reasons_are_one_printable_line_within_the_lists_limit() -> None:
    hard = event(EventKind.BOUNCED_HARD, reply=SmtpReply(550, "5.1.1 user unknown"))
    assert effects.suppression_reason(hard, "ses") == (
        "hard bounce reported by ses (upstream ses): 550 5.1.1 user unknown"
    )
    hostile = event(EventKind.COMPLAINED, diagnostic="abuse\r\n\x00X-Evil: 1" + "a" * 2000)
    reason = effects.suppression_reason(hostile, "ses")
    assert reason.startswith("complaint reported by ses (upstream ses): abuse X-Evil: 1")
    assert len(reason) == effects.MAX_REASON_CHARS and reason.isprintable()


def test_replay_keys_are_per_upstream_and_fixed_length() -> None:
    a, b = effects.replay_key("mg", "t" * 256), effects.replay_key("mg2", "t" * 256)
    assert a != b and len(a) == len("mg:") + 64
