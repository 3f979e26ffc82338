"""The send API's request body: what is accepted, and every problem with its path."""

from __future__ import annotations

import base64
import random
from email.headerregistry import Address
from typing import Any

import pytest

from relay.core.model import MessageClass, Site
from relay.core.send_request import (
    Attachment,
    SendRequest,
    Upload,
    address_problem,
    parse_send_request,
)

SHOP = Site(
    id="shop",
    name="Shop",
    from_email="sales@example.com",
    from_name="Example Shop",
    senders=("*@shop.example.com",),
)


def parse(body: object, files: tuple[Upload, ...] = ()) -> SendRequest | list[str]:
    return parse_send_request(body, site=SHOP, max_recipients=5, files=files)


def ok(body: dict[str, Any], files: tuple[Upload, ...] = ()) -> SendRequest:
    request = parse(body, files)
    assert isinstance(request, SendRequest), request
    return request


def problems(body: object) -> list[str]:
    found = parse(body)
    assert isinstance(found, list), found
    return found


MINIMAL = {"to": ["ann@example.net"], "subject": "Hi", "text": "Hello"}


def test_minimal_request_takes_the_sites_from() -> None:
    request = ok(MINIMAL)
    assert (request.from_email, request.from_name) == ("sales@example.com", "Example Shop")
    assert request.to == ("ann@example.net",) and request.cc == () and request.bcc == ()
    assert request.message_class is None and request.attachments == ()


def test_full_request() -> None:
    request = ok(
        {
            "from": {"email": "news@shop.example.com", "name": "Shop News"},
            "to": ["a@example.net"],
            "cc": ["b@example.net"],
            "bcc": ["c@example.net"],
            "reply_to": "help@example.com",
            "subject": "Grüße",
            "text": "t",
            "html": "<p>h</p>",
            "attachments": [{"filename": "a.pdf", "content": "JVBERg=="}],
            "headers": {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"},
            "message_class": "bulk",
        }
    )
    assert (request.from_email, request.from_name) == ("news@shop.example.com", "Shop News")
    assert request.reply_to == "help@example.com"
    assert request.attachments == (Attachment("a.pdf", b"%PDF", "application/pdf"),)
    assert request.headers == (
        ("X-Campaign", "spring"),
        ("List-Unsubscribe", "<mailto:u@example.com>"),
    )
    assert request.message_class is MessageClass.BULK


def test_a_template_needs_no_subject_nor_body() -> None:
    request = ok({"to": ["a@example.net"], "template": "welcome", "variables": {"n": [1, None]}})
    assert request.template == "welcome" and dict(request.variables) == {"n": [1, None]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"from": {"email": "x@evil.test"}}, "from.email: not this site's address"),
        ({"from": "sales@example.com"}, "from: must be an object"),
        ({"from": {"email": "sales@example.com", "x": 1}}, "from.x: unknown key"),
        ({"from": {"name": "A\r\nBcc: x@evil.test"}}, "from.name: contains a control character"),
        ({"to": []}, "to: at least one recipient is required"),
        ({"to": "a@example.net"}, "to: must be a list of addresses"),
        ({"to": ["a@example.net", "not an address"]}, "to[1]: not an email address"),
        ({"cc": ["a..b@example.net"]}, "cc[0]: not an email address"),
        ({"bcc": ['"jöhn"@example.net']}, "bcc[0]: non-ASCII addresses are not supported"),
        ({"to": ["x@example.net\r\nBcc: y@evil.test"]}, "to[0]: not an email address"),
        ({"to": ["a@example.net"] * 3, "bcc": ["b@example.net"] * 3}, "to: too many recipients"),
        ({"reply_to": ["a@example.net"]}, "reply_to: must be a string"),
        ({"subject": "Hi\r\nBcc: x@evil.test"}, "subject: contains a control character (U+000D)"),
        ({"subject": "x" * 999}, "subject: longer than 998 characters"),
        ({"subject": "\ud800"}, "subject: not valid Unicode"),
        ({"subject": None, "text": "t"}, "subject: is required"),
        ({"text": None}, "text: text or html is required"),
        ({"text": "a\0b"}, "text: contains a control character (U+0000)"),
        ({"html": 5}, "html: must be a string"),
        ({"variables": []}, "variables: must be an object"),
        ({"message_class": "urgent"}, "message_class: must be transactional or bulk"),
        ({"message_class": ["bulk"]}, "message_class: must be transactional or bulk"),
        ({"extra": 1}, "extra: unknown key"),
        ({"template": ""}, "template: must be a template's name"),
        ({"\n": 1}, "'\\n': unknown key"),
    ],
)
def test_problems(body: dict[str, Any], expected: str) -> None:
    found = problems({**MINIMAL, **body})
    assert any(problem.startswith(expected) for problem in found), found


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Foo": "a\nb"}, "headers.X-Foo: contains a control character (U+000A)"),
        ({"X-Foo": 1}, "headers.X-Foo: must be a string"),
        ({"X-Foo": None}, "headers.X-Foo: must be a string"),
        ({"X Foo": "a"}, "headers.X Foo: not a header name"),
        ({"X-Foo:": "a"}, "headers.X-Foo:: not a header name"),
        ({"X-Fö": "a"}, "headers.X-Fö: not a header name"),
        ({"": "a"}, "headers.: not a header name"),
        ({"X-Foo\r\nBcc": "x@evil.test"}, "headers.'X-Foo\\r\\nBcc': not a header name"),
        ({"bcc": "x@evil.test"}, "headers.bcc: set by the relay"),
        ({"DKIM-SIGNATURE": "v=1"}, "headers.DKIM-SIGNATURE: set by the relay"),
        ({"Content-Type": "text/plain"}, "headers.Content-Type: set by the relay"),
        ({"content-disposition": "inline"}, "headers.content-disposition: set by the relay"),
        ({"Subject": "x"}, "headers.Subject: set by the relay"),
        ({"Mime-Version": "1.0"}, "headers.Mime-Version: set by the relay"),
        ({"Resent-To": "x@evil.test"}, "headers.Resent-To: set by the relay"),
    ],
)
def test_header_problems(headers: dict[str, Any], expected: str) -> None:
    assert expected in [p[: len(expected)] for p in problems({**MINIMAL, "headers": headers})]


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "Sender",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Message-ID",
        "Date",
        "Received",
        "DKIM-Signature",
        "Return-Path",
        "MIME-Version",
        "Content-Transfer-Encoding",
    ],
)
def test_owned_headers_refused_in_any_case(name: str) -> None:
    for spelled in (name, name.lower(), name.upper(), name.swapcase()):
        found = problems({**MINIMAL, "headers": {spelled: "x"}})
        assert found == [f"headers.{spelled}: set by the relay, not by a request"]


def test_every_problem_is_listed() -> None:
    found = problems({"to": ["bad"], "cc": ["worse"], "subject": 1, "html": [], "extra": {}})
    assert found == [
        "extra: unknown key",
        "to[0]: not an email address",
        "cc[0]: not an email address",
        "subject: must be a string",
        "html: must be a string",
    ]


@pytest.mark.parametrize("body", [None, 1, 1.5, True, "x", [], [MINIMAL], [[[]]]])
def test_body_of_any_json_type(body: object) -> None:
    assert problems(body) == ["(top level): must be a JSON object"]


ODD_VALUES: list[object] = [
    None,
    0,
    -1,
    1e308,
    True,
    "",
    "x",
    [],
    [None],
    [[1]],
    {},
    {"a": {"b": []}},
]


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize(
    "key",
    [
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text",
        "html",
        "template",
        "variables",
        "attachments",
        "headers",
        "message_class",
    ],
)
def test_odd_values_never_crash(key: str, value: object) -> None:
    assert isinstance(parse({**MINIMAL, key: value}), SendRequest | list)
    assert isinstance(parse({"attachments": [value], "headers": {"X-A": value}}), list)
    assert isinstance(parse({"from": {"email": value, "name": value}}), SendRequest | list)
    assert isinstance(parse({"attachments": [{"filename": value, "content": value}]}), list)


def test_attachments() -> None:
    pdf = bytes(range(256))
    request = ok(
        {
            **MINIMAL,
            "attachments": [
                {"filename": "Résumé \u2013 2026.pdf", "content": base64.b64encode(pdf).decode()},
                {"filename": "notes", "content": "", "content_type": "Text/Plain"},
                {"filename": "x.tar.gz", "content": "AA=="},
                {"filename": "no-extension", "content": "AA=="},
            ],
        },
        files=(Upload("photo.png", None, b"\x89PNG"), Upload("data.bin", "image/gif", b"GIF")),
    )
    assert request.attachments == (
        Attachment("Résumé \u2013 2026.pdf", pdf, "application/pdf"),
        Attachment("notes", b"", "text/plain"),
        Attachment("x.tar.gz", b"\0", "application/octet-stream"),
        Attachment("no-extension", b"\0", "application/octet-stream"),
        Attachment("photo.png", b"\x89PNG", "image/png"),
        Attachment("data.bin", b"GIF", "image/gif"),
    )


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        ({"filename": "a.pdf", "content": "JVBER g=="}, "attachments[0].content: not valid base64"),
        ({"filename": "a.pdf", "content": "JVBERg"}, "attachments[0].content: not valid base64"),
        ({"filename": "a.pdf", "content": "JVBERg==\n"}, "attachments[0].content: not valid"),
        ({"filename": "a.pdf", "content": "é"}, "attachments[0].content: not valid base64"),
        ({"filename": "a.pdf", "content": 12}, "attachments[0].content: must be a base64 string"),
        ({"filename": "a.pdf"}, "attachments[0].content: must be a base64 string"),
        ({"content": "AA=="}, "attachments[0].filename: must be a non-empty string"),
        ({"filename": "", "content": "AA=="}, "attachments[0].filename: must be a non-empty"),
        ({"filename": "a\r\n.pdf", "content": "AA=="}, "attachments[0].filename: contains a"),
        ({"filename": "a" * 256, "content": "AA=="}, "attachments[0].filename: longer than 255"),
        (
            {"filename": "a", "content": "AA==", "content_type": "text/plain; charset=x"},
            "attachments[0].content_type: must be a type/subtype",
        ),
        (
            {"filename": "a", "content": "AA==", "content_type": "multipart/mixed"},
            "attachments[0].content_type: multipart and message types cannot be attached",
        ),
        ({"filename": "a", "content": "AA==", "size": 1}, "attachments[0].size: unknown key"),
        ("a.pdf", "attachments[0]: must be an object"),
    ],
)
def test_attachment_problems(attachment: object, expected: str) -> None:
    found = problems({**MINIMAL, "attachments": [attachment]})
    assert any(problem.startswith(expected) for problem in found), found


def test_upload_problems() -> None:
    found = parse(MINIMAL, files=(Upload(None, None, b"x"), Upload("a", "not a type", b"x")))
    assert found == [
        "files[0].filename: must be a non-empty string",
        "files[1].content_type: must be a type/subtype like application/pdf",
    ]


def test_many_recipients_cost_no_more_than_the_cap() -> None:
    found = problems({**MINIMAL, "to": ["bad"] * 1_000_000})
    assert found == ["to: too many recipients (1000000; at most 5 in all)"]


def test_plain_addresses_skip_the_parse_only_where_it_agrees() -> None:
    """address_problem's shortcut for dot-atoms is what the email package's parse says."""
    chars = "aZ09#$&'*+/?^_`{|}~-"  # no ! (is_address refuses bang paths)
    rng = random.Random(5322)  # noqa: S311 -- reproducible test data, not a secret
    for _ in range(3000):
        words = ["".join(rng.choices(chars, k=rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        address = f"{'.'.join(words)}@example.com"
        assert address_problem(address) is None
        assert Address(addr_spec=address).addr_spec == address
    for refused in ("a..b@example.com", ".a@example.com", "=?utf-8?q?a?=@example.com"):
        assert address_problem(refused) == "not an email address", refused
