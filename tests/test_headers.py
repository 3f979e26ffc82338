"""Header rewriting: the header block changes as the site's policy says, the body never does."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage
from random import Random
from typing import Any

import pytest

from relay.core import headers
from relay.core.headers import (
    AddMissing,
    HeaderField,
    PrependReceived,
    RemoveBcc,
    RewriteFrom,
    join_message,
    make_field,
    split_message,
)
from relay.core.model import ReplyTo, Site

HOSTNAME = "relay.test"
NOW = 1_700_000_000.0
MESSAGE_ID = "01hf7ysj000000000000000000"
CLIENT_IP = "192.0.2.7"


def site(**overrides: object) -> Site:
    values: dict[str, Any] = {
        "id": "shop",
        "name": "Shop",
        "from_email": "sales@example.com",
        "from_name": "Sales Team",
        "reply_to": ReplyTo.ORIGINAL,
    }
    values.update(overrides)
    return Site(**values)


def prepare(content: bytes, the_site: Site, *, helo: str = "client.example") -> bytes:
    """The rewrite chain exactly as IngressController._prepare builds it."""
    received = headers.received_field(
        helo=helo,
        client_ip=CLIENT_IP,
        hostname=HOSTNAME,
        protocol="ESMTPSA",
        message_id=MESSAGE_ID,
        now=NOW,
    )
    rewritten, _original = headers.rewrite(
        content,
        [
            RemoveBcc(),
            RewriteFrom(the_site),
            AddMissing(MESSAGE_ID, HOSTNAME, NOW),
            PrependReceived(received),
        ],
    )
    return rewritten


def fields_named(content: bytes, key: str) -> list[HeaderField]:
    fields, _body = split_message(content)
    return [f for f in fields if f.key == key]


def body_of(content: bytes) -> bytes:
    return split_message(content)[1]


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


ORIGINAL = (
    b"From: Alice Shopper <alice@shop.example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Order 42\r\n"
    b"\r\n"
    b"Thanks for your order.\r\n"
)


# -- split_message / join_message


@pytest.mark.parametrize(
    ("content", "names", "body"),
    [
        pytest.param(
            b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
            [b"From", b"Subject"],
            b"body\r\n",
            id="simple",
        ),
        pytest.param(
            b"Subject: a long\r\n subject\r\n\tfolded twice\r\nTo: x@example.com\r\n\r\nbody\r\n",
            [b"Subject", b"To"],
            b"body\r\n",
            id="folded-header",
        ),
        pytest.param(
            b"Received: from a\r\n\tby b;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"Received: from c\r\n by d; Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nx",
            [b"Received", b"Received"],
            b"x",
            id="continuation-lines",
        ),
        pytest.param(
            b"Subject: caf\xc3\xa9 \xff\xfe\r\nX-Name: \xe6\x97\xa5\xe6\x9c\xac\r\n\r\n"
            b"8-bit body \x80\x81\xc3\xa9\r\nsecond line\r\n",
            [b"Subject", b"X-Name"],
            b"8-bit body \x80\x81\xc3\xa9\r\nsecond line\r\n",
            id="8bit-header-and-body",
        ),
        pytest.param(
            b"Subject: x\r\nTo: y@example.com\r\n\r\n", [b"Subject", b"To"], b"", id="no-body"
        ),
        pytest.param(
            b"Subject: x\r\n\r\n\r\nbody after a blank line\r\n\r\n",
            [b"Subject"],
            b"\r\nbody after a blank line\r\n\r\n",
            id="body-starts-with-blank-line",
        ),
        pytest.param(
            b"Subject: x\r\n\r\nno final line break",
            [b"Subject"],
            b"no final line break",
            id="no-eol",
        ),
        pytest.param(
            b"Subject: x\r\n\r\nBcc: in-body@example.com\r\nFrom: not-a-header\r\n",
            [b"Subject"],
            b"Bcc: in-body@example.com\r\nFrom: not-a-header\r\n",
            id="header-like-body-lines",
        ),
        pytest.param(b"\r\nonly a body\r\n", [], b"only a body\r\n", id="empty-header-block"),
        pytest.param(
            b"X-Odd : spaced name\r\nSubject:no space\r\n\r\nb",
            [b"X-Odd", b"Subject"],
            b"b",
            id="obsolete-space-before-colon",
        ),
    ],
)
def test_split_and_join_round_trip_byte_exact(
    content: bytes, names: list[bytes], body: bytes
) -> None:
    fields, split_body = split_message(content)
    assert [f.name for f in fields] == names
    assert split_body == body
    assert join_message(fields, split_body) == content


@pytest.mark.parametrize(
    ("content", "names", "body", "rejoined"),
    [
        pytest.param(
            b"Subject: x\r\nThis line is not a header\r\nmore body\r\n",
            [b"Subject"],
            b"This line is not a header\r\nmore body\r\n",
            b"Subject: x\r\n\r\nThis line is not a header\r\nmore body\r\n",
            id="no-empty-line-non-header-starts-body",
        ),
        pytest.param(
            b"Subject: x\r\nFrom alice Mon Jan  1 00:00:00 2024\r\nbody\r\n",
            [b"Subject"],
            b"From alice Mon Jan  1 00:00:00 2024\r\nbody\r\n",
            b"Subject: x\r\n\r\nFrom alice Mon Jan  1 00:00:00 2024\r\nbody\r\n",
            id="mbox-from-line-is-not-a-field",
        ),
        pytest.param(
            b"Subject: x\r\nTo: y@example.com\r\n",
            [b"Subject", b"To"],
            b"",
            b"Subject: x\r\nTo: y@example.com\r\n\r\n",
            id="headers-only-no-empty-line",
        ),
        pytest.param(
            b"Subject: x",
            [b"Subject"],
            b"",
            b"Subject: x\r\n\r\n",
            id="last-field-without-crlf",
        ),
        pytest.param(
            b"Subject: x\r\n y",
            [b"Subject"],
            b"",
            b"Subject: x\r\n y\r\n\r\n",
            id="last-continuation-without-crlf",
        ),
        pytest.param(
            b" x\r\nSubject: x\r\n\r\n",
            [],
            b" x\r\nSubject: x\r\n\r\n",
            b"\r\n x\r\nSubject: x\r\n\r\n",
            id="continuation-before-any-field-starts-body",
        ),
    ],
)
def test_split_without_empty_line_keeps_body_bytes_and_join_adds_separator(
    content: bytes, names: list[bytes], body: bytes, rejoined: bytes
) -> None:
    fields, split_body = split_message(content)
    assert [f.name for f in fields] == names
    assert split_body == body
    assert join_message(fields, split_body) == rejoined
    # The rejoined message is well formed and splits to the same fields and body.
    again, again_body = split_message(rejoined)
    assert again == fields
    assert again_body == body


def test_field_keeps_raw_and_exposes_unfolded_value_and_lowercase_key() -> None:
    fields, _ = split_message(b"SUBJECT: a long\r\n subject\r\n\tline\r\n\r\n")
    (field,) = fields
    assert field.raw == b"SUBJECT: a long\r\n subject\r\n\tline\r\n"
    assert field.key == "subject"
    assert field.value == b"a long subject\tline"


def test_a_field_folded_into_many_lines_is_one_field_with_every_byte() -> None:
    folded = b"X-Long: start\r\n" + b" x\r\n" * 10_000
    fields, body = split_message(b"From: a@example.com\r\n" + folded + b"Subject: s\r\n\r\nb")
    assert [f.raw for f in fields] == [b"From: a@example.com\r\n", folded, b"Subject: s\r\n"]
    assert fields[1].value == b"start" + b" x" * 10_000
    assert body == b"b"


# -- header_block_fits: the size of the header block, read no further than the limit


@pytest.mark.parametrize(
    ("content", "limit", "fits"),
    [
        pytest.param(b"Subject: x\r\n\r\n" + b"b" * 100, 12, True, id="exactly-the-limit"),
        pytest.param(b"Subject: x\r\n\r\n" + b"b" * 100, 11, False, id="one-byte-over"),
        pytest.param(b"\r\n" + b"Subject: x\r\n" * 100, 0, True, id="starts-with-the-empty-line"),
        pytest.param(b"Subject: x\r\n" * 100, 20, False, id="no-empty-line-all-fields"),
        pytest.param(
            b"Subject: x\r\nnot a field\r\n" + b"To: y\r\n" * 100,
            20,
            True,
            id="no-empty-line-block-ends-at-a-non-field",
        ),
        pytest.param(
            b"Subject: x\r\n" + b"not a field, and long\r\n",
            14,
            True,
            id="non-field-line-crossing-the-limit",
        ),
        pytest.param(
            b"Subject: x\r\n" + b"Field-With-A-Long-Name: y\r\n",
            14,
            False,
            id="field-crossing-the-limit",
        ),
        pytest.param(b"Subject: x\r\n x\r\n x\r\n", 14, False, id="continuation-crossing"),
        pytest.param(b" continued\r\n" * 10, 5, True, id="continuation-without-field-is-body"),
        pytest.param(b"X" * 100 + b": v\r\n", 50, False, id="one-long-field"),
        pytest.param(b"X" * 100 + b" v\r\n", 50, True, id="one-long-line-no-field"),
    ],
)
def test_header_block_fits(content: bytes, limit: int, fits: bool) -> None:
    assert headers.header_block_fits(content, limit) is fits


def _block_length(content: bytes) -> int:
    fields, _body = split_message(content)
    return sum(len(f.raw) for f in fields)


def test_header_block_fits_agrees_with_the_split_on_random_messages() -> None:
    random = Random(13)  # noqa: S311 -- reproducible test inputs
    lines = [b"To: y\r\n", b" x\r\n", b"\tx\r\n", b"\r\n", b"body\r\n", b"X-Foo : b\r\n"]
    for _ in range(2_000):
        content = b"".join(random.choices(lines, k=random.randint(0, 8)))
        for limit in range(len(content) + 3):
            expected = _block_length(content) <= limit
            assert headers.header_block_fits(content, limit) is expected, (content, limit)


# -- StripSpaceBeforeColon


def test_space_before_the_colon_is_removed_and_nothing_else_changes() -> None:
    content = b"X-Foo : bar\r\nSubject\t:  hi\r\n there\r\nTo: a@example.org\r\n\r\nX-B : body\r\n"
    out, _ = headers.rewrite(content, [headers.StripSpaceBeforeColon()])
    assert out == b"X-Foo: bar\r\nSubject:  hi\r\n there\r\nTo: a@example.org\r\n\r\nX-B : body\r\n"


# -- decoded_text: readable, bounded


def test_decoded_text_decodes_encoded_words() -> None:
    assert headers.decoded_text(b"=?utf-8?q?caf=C3=A9?= au lait") == "café au lait"


def test_decoded_text_is_at_most_limit_characters() -> None:
    assert headers.decoded_text(b"x" * 5000) == "x" * headers.TEXT_CHARS
    assert headers.decoded_text(b"abcdef", limit=3) == "abc"


def test_decoded_text_of_a_huge_value_decodes_its_start_and_cuts_no_word() -> None:
    value = b" ".join([b"=?utf-8?q?caf=C3=A9?="] * 50_000)  # 1 MB of encoded words
    text = headers.decoded_text(value)
    assert text.startswith("cafécafé")
    assert "=?" not in text
    assert len(text) <= headers.TEXT_CHARS


def test_decoded_text_of_a_malformed_value_is_the_text() -> None:
    assert headers.decoded_text(b"=?no-such-charset?q?x?=") == "=?no-such-charset?q?x?="


# -- make_field: no header injection


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nBcc: victim@example.com",
        "a\nBcc: victim@example.com",
        "a\rBcc: victim@example.com",
        "trailing\r\n",
        "\n",
    ],
)
def test_make_field_refuses_line_breaks(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        make_field("X-Test", value)


def test_make_field_builds_one_crlf_terminated_line() -> None:
    field = make_field("X-Test", "hello world")
    assert field.name == b"X-Test"
    assert field.raw == b"X-Test: hello world\r\n"
    assert field.key == "x-test"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"from_name": "Sales\r\nBcc: victim@example.com"}, id="from-name-crlf"),
        pytest.param({"from_name": "Sales\nBcc: victim@example.com"}, id="from-name-lf"),
        pytest.param({"from_email": "sales@example.com\r\nBcc: v@example.com"}, id="from-email"),
        pytest.param(
            {"reply_to": ReplyTo.ADDRESS, "reply_to_address": "help@example.com\r\nBcc: v@x.test"},
            id="reply-to-address",
        ),
    ],
)
def test_rewrite_from_refuses_injection_through_site_settings(
    overrides: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="line break"):
        RewriteFrom(site(**overrides))(split_message(ORIGINAL)[0])


def test_helo_cannot_inject_a_header_through_received() -> None:
    out = prepare(ORIGINAL, site(), helo="evil\r\nBcc: victim@example.com")
    assert fields_named(out, "bcc") == []
    (received,) = fields_named(out, "received")
    assert b"victim" in received.raw  # kept as harmless text inside Received ...
    assert received.raw.count(b"\r\n") == 3  # ... which is still its own three lines
    assert b"\r\nBcc" not in received.raw


# -- The full rewrite chain (RemoveBcc, RewriteFrom, AddMissing, PrependReceived)


@pytest.mark.parametrize(
    ("from_email", "from_name", "display_name"),
    [
        pytest.param("sales@example.com", None, "", id="no-display-name"),
        pytest.param("sales@example.com", "", "", id="empty-display-name"),
        pytest.param("sales@example.com", "Sales Team", "Sales Team", id="ascii-name"),
        pytest.param("sales@example.com", "Sales, Inc.", "Sales, Inc.", id="name-needs-quoting"),
        pytest.param("ventes@example.fr", "Équipe Ventes", "Équipe Ventes", id="non-ascii-name"),
        pytest.param("info@example.jp", "日本の店", "日本の店", id="cjk-name"),
    ],
)
def test_from_is_replaced_by_the_sites_address(
    from_email: str, from_name: str | None, display_name: str
) -> None:
    out = prepare(ORIGINAL, site(from_email=from_email, from_name=from_name))
    (field,) = fields_named(out, "from")
    assert field.raw.isascii()  # non-ASCII names are RFC 2047 encoded words
    assert b"alice" not in field.raw
    address = parsed(out)["From"].addresses
    assert len(address) == 1
    assert address[0].addr_spec == from_email
    assert address[0].display_name == display_name


@pytest.mark.parametrize(
    ("from_name", "raw"),
    [
        (None, b"From: sales@example.com\r\n"),
        ("Sales Team", b"From: Sales Team <sales@example.com>\r\n"),
        ("Équipe", b"From: =?utf-8?q?=C3=89quipe?= <sales@example.com>\r\n"),
    ],
)
def test_from_field_bytes(from_name: str | None, raw: bytes) -> None:
    out = prepare(ORIGINAL, site(from_name=from_name))
    assert [f.raw for f in fields_named(out, "from")] == [raw]


def test_every_original_from_is_removed() -> None:
    content = (
        b"From: alice@shop.example.com\r\nfrom: second@shop.example.com\r\n"
        b"FROM: third@shop.example.com\r\n\r\nbody\r\n"
    )
    out = prepare(content, site(reply_to=ReplyTo.NONE))
    header_block = out.split(b"\r\n\r\n", 1)[0]
    assert len(fields_named(out, "from")) == 1
    assert b"shop.example.com" not in header_block


REPLY_TO_CASES = [
    pytest.param(
        ReplyTo.ORIGINAL,
        None,
        b"From: Alice <alice@shop.example.com>\r\n\r\nb",
        [b"Reply-To: Alice <alice@shop.example.com>\r\n"],
        id="original-copies-from",
    ),
    pytest.param(
        ReplyTo.ORIGINAL,
        None,
        b"From: Alice\r\n <alice@shop.example.com>\r\n\r\nb",
        [b"Reply-To: Alice\r\n <alice@shop.example.com>\r\n"],
        id="original-copies-folded-from",
    ),
    pytest.param(
        ReplyTo.ORIGINAL,
        None,
        b"from:alice@shop.example.com\r\n\r\nb",
        [b"Reply-To:alice@shop.example.com\r\n"],
        id="original-copies-lowercase-from",
    ),
    pytest.param(
        ReplyTo.ORIGINAL,
        None,
        b"From: alice@shop.example.com\r\nReply-To: Support <help@shop.example.com>\r\n\r\nb",
        [b"Reply-To: Support <help@shop.example.com>\r\n"],
        id="original-keeps-existing-reply-to",
    ),
    pytest.param(
        ReplyTo.ORIGINAL,
        None,
        b"reply-to: help@shop.example.com\r\nFrom: alice@shop.example.com\r\n\r\nb",
        [b"reply-to: help@shop.example.com\r\n"],
        id="original-keeps-existing-reply-to-as-written",
    ),
    pytest.param(
        ReplyTo.ORIGINAL, None, b"Subject: no from\r\n\r\nb", [], id="original-without-from"
    ),
    pytest.param(
        ReplyTo.NONE,
        None,
        b"From: alice@shop.example.com\r\nReply-To: help@shop.example.com\r\n\r\nb",
        [],
        id="none-removes-reply-to",
    ),
    pytest.param(
        ReplyTo.NONE, None, b"From: alice@shop.example.com\r\n\r\nb", [], id="none-adds-nothing"
    ),
    pytest.param(
        ReplyTo.ADDRESS,
        "support@example.com",
        b"From: alice@shop.example.com\r\nReply-To: help@shop.example.com\r\n\r\nb",
        [b"Reply-To: support@example.com\r\n"],
        id="address-replaces-reply-to",
    ),
    pytest.param(
        ReplyTo.ADDRESS,
        "support@example.com",
        b"From: alice@shop.example.com\r\n\r\nb",
        [b"Reply-To: support@example.com\r\n"],
        id="address-sets-reply-to",
    ),
]


@pytest.mark.parametrize(("reply_to", "address", "content", "expected"), REPLY_TO_CASES)
def test_reply_to_follows_the_sites_policy(
    reply_to: ReplyTo, address: str | None, content: bytes, expected: list[bytes]
) -> None:
    out = prepare(content, site(reply_to=reply_to, reply_to_address=address))
    assert [f.raw for f in fields_named(out, "reply-to")] == expected
    assert body_of(out) == b"b"


@pytest.mark.parametrize(
    "bcc_fields",
    [
        pytest.param(b"Bcc: hidden@example.net\r\n", id="single"),
        pytest.param(b"BCC: hidden@example.net\r\n", id="upper-case"),
        pytest.param(b"bcc:hidden@example.net\r\n", id="lower-case-no-space"),
        pytest.param(b"Bcc : hidden@example.net\r\n", id="space-before-colon"),
        pytest.param(b"Bcc: first@example.net,\r\n hidden@example.net\r\n", id="folded"),
        pytest.param(
            b"Bcc: first@example.net\r\nX-Other: kept\r\nBcc: hidden@example.net\r\n",
            id="multiple",
        ),
        pytest.param(b"Bcc:\r\n hidden@example.net\r\n", id="value-only-on-continuation"),
        pytest.param(b"Bcc: =?utf-8?q?Hidden?= <hidden@example.net>\r\n", id="encoded-name"),
    ],
)
def test_bcc_is_removed(bcc_fields: bytes) -> None:
    content = b"From: alice@shop.example.com\r\n" + bcc_fields + b"Subject: s\r\n\r\nbody\r\n"
    out = prepare(content, site())
    assert fields_named(out, "bcc") == []
    assert b"hidden@example.net" not in out
    assert body_of(out) == b"body\r\n"
    assert [f.raw for f in fields_named(out, "subject")] == [b"Subject: s\r\n"]


def test_bcc_text_in_the_body_is_left_alone() -> None:
    content = b"Subject: s\r\nBcc: hidden@example.net\r\n\r\nBcc: body-text@example.net\r\n"
    out = prepare(content, site())
    assert b"hidden@example.net" not in out
    assert body_of(out) == b"Bcc: body-text@example.net\r\n"


EXPECTED_MESSAGE_ID = f"Message-ID: <{MESSAGE_ID}@{HOSTNAME}>\r\n".encode()
EXPECTED_DATE = f"Date: {email.utils.formatdate(NOW, usegmt=True)}\r\n".encode()


@pytest.mark.parametrize(
    ("present", "expected_message_id", "expected_date"),
    [
        pytest.param(b"", [EXPECTED_MESSAGE_ID], [EXPECTED_DATE], id="both-missing"),
        pytest.param(
            b"Message-ID: <own@shop.example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\n",
            [b"Message-ID: <own@shop.example.com>\r\n"],
            [b"Date: Mon, 1 Jan 2024 10:00:00 +0100\r\n"],
            id="both-present",
        ),
        pytest.param(
            b"Message-Id: <own@shop.example.com>\r\n",
            [b"Message-Id: <own@shop.example.com>\r\n"],
            [EXPECTED_DATE],
            id="only-message-id",
        ),
        pytest.param(
            b"date: Mon, 1 Jan 2024 10:00:00 +0100\r\n",
            [EXPECTED_MESSAGE_ID],
            [b"date: Mon, 1 Jan 2024 10:00:00 +0100\r\n"],
            id="only-date-lower-case",
        ),
        pytest.param(
            b"MESSAGE-ID:\r\n <folded@shop.example.com>\r\n",
            [b"MESSAGE-ID:\r\n <folded@shop.example.com>\r\n"],
            [EXPECTED_DATE],
            id="folded-message-id",
        ),
    ],
)
def test_message_id_and_date_added_only_when_missing(
    present: bytes, expected_message_id: list[bytes], expected_date: list[bytes]
) -> None:
    content = b"From: alice@shop.example.com\r\n" + present + b"Subject: s\r\n\r\nbody\r\n"
    out = prepare(content, site())
    assert [f.raw for f in fields_named(out, "message-id")] == expected_message_id
    assert [f.raw for f in fields_named(out, "date")] == expected_date


def test_received_is_first_and_existing_trace_fields_follow_in_order() -> None:
    content = (
        b"Received: from inner by shop; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Received: from innermost by app; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"From: alice@shop.example.com\r\n\r\nbody\r\n"
    )
    out = prepare(content, site())
    fields, _ = split_message(out)
    date = email.utils.formatdate(NOW, usegmt=True)
    assert (
        fields[0].raw
        == (
            f"Received: from client.example ([{CLIENT_IP}])\r\n"
            f"\tby {HOSTNAME} with ESMTPSA id {MESSAGE_ID};\r\n\t{date}\r\n"
        ).encode()
    )
    assert [f.raw for f in fields[1:3]] == [
        b"Received: from inner by shop; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
        b"Received: from innermost by app; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"plain\r\n", id="plain"),
        pytest.param(b"", id="empty"),
        pytest.param(b"no final line break", id="no-eol"),
        pytest.param(b"caf\xc3\xa9 \x80\xff\x00 8-bit and NUL\r\n", id="8bit"),
        pytest.param(b"\r\n\r\nleading blank lines\r\n\r\n", id="blank-lines"),
        pytest.param(b"From: body@x.test\r\nBcc: body@x.test\r\n.\r\n..\r\n", id="header-like"),
        pytest.param(b"a" * 5000 + b"\r\n", id="long-line"),
        pytest.param(
            b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n--b--\r\n", id="mime-part-headers"
        ),
    ],
)
def test_body_bytes_pass_through_identical(body: bytes) -> None:
    content = (
        b"From: Alice <alice@shop.example.com>\r\nBcc: hidden@example.net\r\n"
        b"Subject: caf\xc3\xa9\r\n\r\n" + body
    )
    out = prepare(content, site())
    assert out.endswith(b"\r\n\r\n" + body)
    assert body_of(out) == body
    # 8-bit header bytes we do not rewrite are kept as they were.
    assert [f.raw for f in fields_named(out, "subject")] == [b"Subject: caf\xc3\xa9\r\n"]


def test_full_chain_result() -> None:
    content = (
        b"From: Alice Shopper <alice@shop.example.com>\r\n"
        b"To: bob@example.net\r\n"
        b"Bcc: hidden@example.net,\r\n other@example.net\r\n"
        b"Subject: Order 42\r\n"
        b"\r\n"
        b"Thanks for your order.\r\n"
    )
    out = prepare(content, site())
    keys = [f.key for f in split_message(out)[0]]
    assert keys[0] == "received"
    assert sorted(keys) == sorted(
        ["received", "to", "subject", "from", "reply-to", "message-id", "date"]
    )
    message = parsed(out)
    assert message["From"].addresses[0].addr_spec == "sales@example.com"
    assert message["Reply-To"].addresses[0].addr_spec == "alice@shop.example.com"
    assert message["To"] == "bob@example.net"
    assert message["Bcc"] is None
    assert body_of(out) == b"Thanks for your order.\r\n"


def test_rewrite_returns_the_original_fields() -> None:
    _out, original = headers.rewrite(ORIGINAL, [RemoveBcc(), RewriteFrom(site())])
    assert b"".join(f.raw for f in original) == ORIGINAL.split(b"\r\n\r\n", 1)[0] + b"\r\n"
