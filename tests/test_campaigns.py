"""The campaigns' pure core: requests, transitions, pace, ETA, attachment references."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from relay.core.campaigns import (
    Action,
    Audience,
    CampaignRequest,
    CampaignStatus,
    NotAllowed,
    Pace,
    encoded_block,
    eta_seconds,
    parse_campaign,
    reference,
    referenced,
    replace_blocks,
    splice,
    transition,
    variables,
)
from relay.core.compose import compose
from relay.core.send_request import Attachment, SendRequest

S = CampaignStatus


def parse(**body: Any) -> CampaignRequest | list[str]:
    base: dict[str, Any] = {"site": "shop", "name": "n", "subject": "s", "text": "t"}
    base["audience"] = "all"
    return parse_campaign({**base, **body}, max_attachment_bytes=10_000)


@pytest.mark.parametrize(
    ("status", "action", "result"),
    [
        (S.DRAFT, Action.START, S.IN_PROGRESS),
        (S.SCHEDULED, Action.START, S.IN_PROGRESS),
        (S.IN_PROGRESS, Action.PAUSE, S.PAUSED),
        (S.SCHEDULED, Action.PAUSE, S.PAUSED),
        (S.PAUSED, Action.RESUME, S.IN_PROGRESS),
        (S.DRAFT, Action.CANCEL, S.CANCELLED),
        (S.PAUSED, Action.CANCEL, S.CANCELLED),
        (S.IN_PROGRESS, Action.CANCEL, S.CANCELLED),
    ],
)
def test_allowed_transitions(status: S, action: Action, result: S) -> None:
    assert transition(status, action) is result


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (S.IN_PROGRESS, Action.START),
        (S.PAUSED, Action.START),
        (S.DRAFT, Action.PAUSE),
        (S.IN_PROGRESS, Action.RESUME),
        (S.COMPLETED, Action.CANCEL),
        (S.CANCELLED, Action.RESUME),
        (S.FAILED, Action.START),
    ],
)
def test_refused_transitions_say_why(status: S, action: Action) -> None:
    refused = transition(status, action)
    assert isinstance(refused, NotAllowed)
    assert f"cannot {action.value} a campaign that is {status.value}" in refused.reason


def test_a_good_request_parses() -> None:
    request = parse(audience={"tags": ["a", "b", "a"]}, schedule_at="2030-01-01T00:00:00Z")
    assert isinstance(request, CampaignRequest)
    assert request.audience == Audience(("a", "b"))
    assert request.schedule_at == 1893456000.0
    assert parse(schedule_at=1893456000) == parse(schedule_at="2030-01-01T00:00:00")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"audience": {"tags": []}}, "audience.tags: a list of 1 to 50 tags"),
        ({"audience": "some"}, 'audience: must be "all"'),
        ({"audience": {"tags": ["x"], "y": 1}}, 'audience: must be "all"'),
        ({"audience": {"tags": [""]}}, "audience.tags[0]:"),
        ({"template": "t"}, "template: give a template, or subject"),
        ({"subject": None}, "subject: is required"),
        ({"text": None}, "text: text or html is required"),
        ({"name": "a\r\nb"}, "name: contains a control character"),
        ({"rate_per_minute": 0}, "rate_per_minute:"),
        ({"rate_per_minute": True}, "rate_per_minute:"),
        ({"schedule_at": "tomorrow"}, "schedule_at:"),
        ({"schedule_at": -1}, "schedule_at:"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"attachments": [{"filename": "a", "content": "!!"}]}, "attachments[0].content"),
        (
            {
                "attachments": [
                    {"filename": "a", "content": base64.b64encode(bytes(10_001)).decode()}
                ]
            },
            "attachments: 10001 bytes in all",
        ),
    ],
)
def test_problems_are_named(change: dict[str, Any], problem: str) -> None:
    problems = parse(**change)
    assert isinstance(problems, list)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_problem_at_once() -> None:
    problems = parse_campaign({}, max_attachment_bytes=1)
    assert isinstance(problems, list)
    assert {p.split(":")[0] for p in problems} >= {"site", "name", "subject", "text", "audience"}


def test_variables_put_the_contact_fields_over_its_attributes() -> None:
    found = variables(
        {"email": "a@x.org", "first_name": "Ann", "attributes": {"email": "no", "city": "Oslo"}},
        "https://r/u/t",
    )
    assert found["email"] == "a@x.org" and found["city"] == "Oslo"
    assert found["last_name"] == "" and found["unsubscribe_url"] == "https://r/u/t"


def test_pace_allows_the_rate_with_one_second_of_burst() -> None:
    pace = Pace(120, now=0.0)  # 2 a second
    assert pace.available(0.0) == 1
    pace.take(1)
    assert pace.available(0.25) == 0 and pace.wait() == pytest.approx(0.25)
    assert pace.available(100.0) == 2  # a long pause never banks more than a second


def test_eta() -> None:
    assert eta_seconds(0, None, None) == 0
    assert eta_seconds(100, None, None) is None
    assert eta_seconds(100, 60, None) == 100
    assert eta_seconds(100, 600, 60.0) == 100  # the slower of the two


def test_references_round_trip_the_exact_signed_bytes() -> None:
    content = bytes(range(256)) * 20
    request = SendRequest(
        from_email="a@example.com",
        to=("b@example.org",),
        subject="s",
        text="t",
        attachments=(Attachment("a.bin", content, "application/octet-stream"),),
    )
    message = compose(request, message_id="x@y", now=0.0).content
    block = encoded_block(content)
    assert block in message
    stored = replace_blocks(message, {7: block})
    assert block not in stored and reference(7) in stored and referenced(stored) == {7}
    assert splice(stored, {7: block}) == message
    assert referenced(message) == set() and splice(message, {}) == message


def test_small_attachments_are_not_referenced() -> None:
    block = encoded_block(b"tiny")
    assert replace_blocks(b"x" + block, {1: block}) == b"x" + block
