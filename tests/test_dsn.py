"""Delivery status notifications (RFC 3464, RFC 6522): parsed back with the email package."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Callable
from dataclasses import replace
from email.message import EmailMessage, Message

import pytest

from relay.core.dsn import (
    Action,
    DsnRecipient,
    Report,
    build,
    recipient_for,
    recipients_of,
    status_of,
    subject,
)
from relay.core.model import Site, SmtpReply

ARRIVAL = 1_763_719_530.0  # 2025-11-21 10:05:30 UTC
NOW = ARRIVAL + 5 * 86_400
RETRY_UNTIL = NOW + 2 * 86_400
HEADER_BLOCK = (
    b"Received: from web1 ([192.0.2.7])\r\n\tby relay.example.net with ESMTPSA id 01JABC;\r\n"
    b"\tFri, 21 Nov 2025 10:05:30 +0000\r\n"
    b"From: Shop <sales@shop.example>\r\n"
    b"To: bob@example.net, ann@example.net\r\n"
    b"Subject: Your order 42\r\n"
    b"Message-ID: <order-42@shop.example>\r\n"
)
BODY = b"SECRET BODY: your card ends in 4242\r\n\r\nMore body.\r\n"
ORIGINAL = HEADER_BLOCK + b"\r\n" + BODY
NO_SUCH_USER = SmtpReply(550, "5.1.1 <bob@example.net>: no such user")


def report(
    action: Action = Action.FAILED,
    recipients: tuple[DsnRecipient, ...] | None = None,
    retry_until: float | None = None,
) -> Report:
    if recipients is None:
        states = [
            ("bob@example.net", NO_SUCH_USER, "mx.example.net"),
            ("ann@example.net", None, None),
        ]
        recipients = recipients_of(states, permanent=True)
    return Report(
        action=action,
        reporting_mta="relay.example.net",
        message_id="01JABC",
        arrival=ARRIVAL,
        to="orders@shop.example",
        from_address="bounces@shop.example",
        recipients=recipients,
        original_content=ORIGINAL,
        retry_until=retry_until,
    )


def delayed() -> Report:
    states = [
        ("bob@example.net", SmtpReply(451, "4.3.0 Temporary lookup failure"), "mx.example.net"),
        ("ann@example.net", None, None),
    ]
    return report(Action.DELAYED, recipients_of(states, permanent=False), RETRY_UNTIL)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(data: bytes) -> list[EmailMessage]:
    return list(parse(data).iter_parts())  # type: ignore[arg-type]


def groups(data: bytes) -> list[Message]:
    """The message/delivery-status groups (the parser also yields an empty one at the end)."""
    payload = parts(data)[1].get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(group, Message) for group in payload)
    return [group for group in payload if isinstance(group, Message) and group.keys()]


def date(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


# -- recipient_for: only addresses the site owns (no backscatter)

SHOP = Site(id="shop", name="Shop", from_email="sales@shop.example")
BOUNCING = Site(
    id="shop", name="Shop", from_email="sales@shop.example", bounce_address="bounces@shop.example"
)
LISTED = Site(
    id="shop",
    name="Shop",
    from_email="sales@shop.example",
    senders=("*@shop.example", "app@other.example"),
    bounce_address="bounces@shop.example",
)


@pytest.mark.parametrize(
    ("site", "original_sender", "to"),
    [
        pytest.param(SHOP, "victim@elsewhere.example", "sales@shop.example", id="no-senders-from"),
        pytest.param(
            BOUNCING, "victim@elsewhere.example", "bounces@shop.example", id="no-senders-bounce"
        ),
        pytest.param(
            BOUNCING, "orders@shop.example", "bounces@shop.example", id="no-senders-own-domain"
        ),
        pytest.param(LISTED, "orders@shop.example", "orders@shop.example", id="listed"),
        pytest.param(LISTED, "App@Other.Example", "App@Other.Example", id="listed-any-case"),
        pytest.param(
            LISTED, "victim@elsewhere.example", "bounces@shop.example", id="listed-no-match"
        ),
        pytest.param(LISTED, "<>", None, id="null-sender"),
        pytest.param(LISTED, "", None, id="no-sender"),
        pytest.param(SHOP, "<>", None, id="null-sender-no-senders"),
        pytest.param(None, "orders@shop.example", None, id="site-gone"),
    ],
)
def test_recipient_for(site: Site | None, original_sender: str, to: str | None) -> None:
    assert recipient_for(site, original_sender) == to


def test_the_envelope_sender_is_named_when_the_dsn_goes_elsewhere() -> None:
    elsewhere = replace(report(), to="bounces@shop.example", original_sender="x@elsewhere.example")
    text = parts(build(elsewhere, "dsn1", NOW))[0].get_content()
    assert "Envelope sender: <x@elsewhere.example>" in text
    same = replace(report(), original_sender="orders@shop.example")
    assert "Envelope sender" not in parts(build(same, "dsn1", NOW))[0].get_content()


def test_a_hostile_envelope_sender_stays_one_printable_line() -> None:
    hostile = "a\r\nX-Evil: 1\x00\x85@x.example"
    elsewhere = replace(report(), to="bounces@shop.example", original_sender=hostile)
    data = build(elsewhere, "dsn1", NOW)
    assert data.isascii()
    assert b"\r\nX-Evil" not in data
    # NEL (U+0085) is whitespace to str.split: a space, like the CRLF.
    assert "Envelope sender: <a X-Evil: 1? @x.example>" in parts(data)[0].get_content()


# -- status_of and recipients_of


@pytest.mark.parametrize(
    ("reply", "permanent", "status"),
    [
        pytest.param(NO_SUCH_USER, True, "5.1.1", id="enhanced"),
        pytest.param(SmtpReply(552, "5.2.2 mailbox full"), True, "5.2.2", id="enhanced-5.2.2"),
        pytest.param(SmtpReply(450, "4.2.1 try later"), False, "4.2.1", id="enhanced-transient"),
        pytest.param(SmtpReply(550, "no such user"), True, "5.0.0", id="no-enhanced-5xx"),
        pytest.param(SmtpReply(421, "closing"), False, "4.0.0", id="no-enhanced-4xx"),
        pytest.param(SmtpReply(451, "later"), True, "4.0.0", id="reply-class-wins-over-permanent"),
        pytest.param(None, True, "5.4.7", id="expired"),
        pytest.param(None, False, "4.4.7", id="delayed"),
    ],
)
def test_status_of(reply: SmtpReply | None, permanent: bool, status: str) -> None:
    assert status_of(reply, permanent=permanent) == status


def test_recipients_of() -> None:
    states = [
        ("bob@example.net", NO_SUCH_USER, "mx.example.net"),
        ("ann@example.net", None, None),
        ("cy@example.net", SmtpReply(550, "5.7.1 refused\r\n  by policy"), "mx2.example.net"),
    ]
    assert recipients_of(states, permanent=True) == (
        DsnRecipient(
            "bob@example.net",
            "5.1.1",
            "550 5.1.1 <bob@example.net>: no such user",
            "mx.example.net",
        ),
        DsnRecipient("ann@example.net", "5.4.7", None, None),
        DsnRecipient("cy@example.net", "5.7.1", "550 5.7.1 refused by policy", "mx2.example.net"),
    )


@pytest.mark.parametrize(
    ("action", "text"),
    [
        (Action.FAILED, "Undelivered Mail Returned to Sender"),
        (Action.DELAYED, "Delayed Mail (still being retried)"),
    ],
)
def test_subject(action: Action, text: str) -> None:
    assert subject(action) == text


# -- the report as a whole


@pytest.mark.parametrize("make", [report, delayed], ids=["failed", "delayed"])
def test_multipart_report_with_three_parts(make: Callable[[], Report]) -> None:
    message = parse(build(make(), "dsn1", NOW))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert not message.defects
    assert all(not p.defects for p in message.iter_parts())


def test_envelope_headers() -> None:
    data = build(report(), "dsn1", NOW)
    assert b"\r\nTo: <orders@shop.example>\r\n" in data
    message = parse(data)
    assert message["To"].addresses[0].addr_spec == "orders@shop.example"
    assert message["From"].addresses[0].addr_spec == "bounces@shop.example"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == "<dsn1@relay.example.net>"
    assert date(message["Date"]) == NOW


def test_per_message_fields() -> None:
    per_message = groups(build(report(), "dsn1", NOW))[0]
    assert per_message["Reporting-MTA"] == "dns; relay.example.net"
    assert per_message["X-Relay-Message-ID"] == "01JABC"
    assert date(per_message["Arrival-Date"]) == ARRIVAL
    assert "Final-Recipient" not in per_message


def test_failed_recipient_fields() -> None:
    bob, ann = groups(build(report(), "dsn1", NOW))[1:]
    assert dict(bob.items()) == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.net>: no such user",
    }
    assert dict(ann.items()) == {
        "Final-Recipient": "rfc822; ann@example.net",
        "Action": "failed",
        "Status": "5.4.7",
    }


def test_delayed_recipient_fields() -> None:
    data = build(delayed(), "dsn2", NOW)
    assert parse(data)["Subject"] == "Delayed Mail (still being retried)"
    bob, ann = groups(data)[1:]
    for group, status in [(bob, "4.3.0"), (ann, "4.4.7")]:
        assert group["Action"] == "delayed"
        assert group["Status"] == status
        assert re.fullmatch(r"4\.\d{1,3}\.\d{1,3}", group["Status"])
        assert date(group["Will-Retry-Until"]) == RETRY_UNTIL
    assert bob["Diagnostic-Code"] == "smtp; 451 4.3.0 Temporary lookup failure"
    text = parts(data)[0].get_content()
    assert email.utils.formatdate(RETRY_UNTIL, usegmt=True) in text


def test_delayed_without_retry_until_has_no_will_retry_until() -> None:
    data = build(report(Action.DELAYED, retry_until=None), "dsn3", NOW)
    assert all("Will-Retry-Until" not in group for group in groups(data))


def test_failed_has_no_will_retry_until_even_if_given() -> None:
    data = build(report(retry_until=RETRY_UNTIL), "dsn4", NOW)
    assert all("Will-Retry-Until" not in group for group in groups(data))


def test_human_readable_part_lists_recipients_and_replies() -> None:
    text = parts(build(report(), "dsn1", NOW))[0].get_content()
    assert "relay.example.net" in text
    assert "Message: 01JABC" in text
    assert "<bob@example.net>: 550 5.1.1 <bob@example.net>: no such user" in text
    assert "<ann@example.net>: 5.4.7" in text


def test_original_headers_attached_and_body_never() -> None:
    data = build(report(), "dsn1", NOW)
    attached = parts(data)[2]
    assert attached.get_payload(decode=True) == HEADER_BLOCK
    assert HEADER_BLOCK in data
    for fragment in (b"SECRET BODY", b"4242", b"More body"):
        assert fragment not in data


@pytest.mark.parametrize("make", [report, delayed], ids=["failed", "delayed"])
def test_every_line_ends_in_crlf(make: Callable[[], Report]) -> None:
    data = build(make(), "dsn1", NOW)
    assert data.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n", data) is None  # no bare LF
    assert re.search(rb"\r(?!\n)", data) is None  # no bare CR
    assert data.isascii()


# -- addresses and diagnostics that are not plain ASCII


@pytest.mark.parametrize(
    ("address", "field"),
    [
        pytest.param("bob@example.net", "rfc822; bob@example.net", id="ascii"),
        pytest.param("jürgen@exämple.de", "utf-8; j\\x{FC}rgen@ex\\x{E4}mple.de", id="latin"),
        pytest.param(
            "用户@例子.广告",
            "utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{5E7F}\\x{544A}",
            id="cjk",
        ),
        pytest.param("\U0001f600@example.com", "utf-8; \\x{1F600}@example.com", id="astral"),
        pytest.param(
            "bob@example.net\r\nX-Evil: 1", "rfc822; bob@example.net X-Evil: 1", id="ascii-crlf"
        ),
        pytest.param(
            "jü@x.de\r\nX-Evil: 1", "utf-8; j\\x{FC}@x.de\\x{D}\\x{A}X-Evil: 1", id="utf8-crlf"
        ),
    ],
)
def test_final_recipient(address: str, field: str) -> None:
    recipient = DsnRecipient(address, "5.1.1", "550 5.1.1 no such user", "mx.example.net")
    data = build(report(recipients=(recipient,)), "dsn1", NOW)
    assert data.isascii()
    (_, group) = groups(data)
    assert group["Final-Recipient"] == field
    assert "X-Evil" not in group


@pytest.mark.parametrize(
    ("diagnostic", "remote", "flattened", "remote_field"),
    [
        pytest.param(
            "550 5.1.1 bad\r\nX-Injected: yes\r\n\r\nFinal-Recipient: rfc822; evil@x",
            "mx.example.net",
            "smtp; 550 5.1.1 bad X-Injected: yes Final-Recipient: rfc822; evil@x",
            "dns; mx.example.net",
            id="crlf-injection",
        ),
        pytest.param(
            "550 5.1.1 bad\nX-Injected: yes",
            "mx.example.net\r\nX-Injected: yes",
            "smtp; 550 5.1.1 bad X-Injected: yes",
            "dns; mx.example.net X-Injected: yes",
            id="bare-lf-and-remote",
        ),
        pytest.param(
            "550 5.1.1 Empfänger unbekannt",
            "mx.exämple.de",
            "smtp; 550 5.1.1 Empf?nger unbekannt",
            "dns; mx.ex?mple.de",
            id="non-ascii",
        ),
        pytest.param(
            "550\t5.1.1   no\x00such\x1b[31muser",
            "mx.example.net",
            "smtp; 550 5.1.1 no?such?[31muser",
            "dns; mx.example.net",
            id="controls-and-runs-of-space",
        ),
    ],
)
def test_diagnostic_is_one_printable_line(
    diagnostic: str, remote: str, flattened: str, remote_field: str
) -> None:
    recipient = DsnRecipient("bob@example.net", "5.1.1", diagnostic, remote)
    data = build(report(recipients=(recipient,)), "dsn1", NOW)
    assert data.isascii()
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None
    assert b"\r\nX-Injected" not in data
    (_, group) = groups(data)
    assert group["Diagnostic-Code"] == flattened
    assert group["Remote-MTA"] == remote_field
    assert "X-Injected" not in group
    assert group.get_all("Final-Recipient") == ["rfc822; bob@example.net"]
