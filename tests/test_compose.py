"""Composed messages, read back with the standard library's parser."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage, MIMEPart

import pytest

from relay.core.compose import Composed, Rendered, compose, compose_inquiry
from relay.core.model import Site
from relay.core.send_request import Attachment, SendRequest, parse_send_request

SITE = Site(id="shop", name="Shop", from_email="sales@example.com", from_name="Zoë's Shop, Inc.")
NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
ID = "01jgrb9s00abcdefghjkmnpqrs@relay.example.com"
BINARY = bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def build(request: SendRequest, rendered: Rendered | None = None) -> Composed:
    return compose(request, message_id=ID, now=NOW, rendered=rendered)


def parsed(composed: Composed) -> EmailMessage:
    content = composed.content
    assert b"\n" not in content.replace(b"\r\n", b"") and b"\r" not in content.replace(b"\r\n", b"")
    assert content.isascii()  # 7-bit: no upstream needs 8BITMIME for it
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage) and not message.defects
    return message


def content(part: MIMEPart | None) -> str:
    """A text part's content with the wire's CRLF read as a newline."""
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def request(**changes: object) -> SendRequest:
    values: dict[str, object] = {
        "from_email": "sales@example.com",
        "from_name": "Zoë's Shop, Inc.",
        "to": ("ann@example.net",),
        "subject": "Hello",
        "text": "Hi Ann\n",
    }
    return SendRequest(**{**values, **changes})  # type: ignore[arg-type]


def test_text_only() -> None:
    composed = build(request(cc=("bob@example.net",), reply_to="help@example.com"))
    message = parsed(composed)
    assert message.keys() == [
        "From",
        "To",
        "Cc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    assert message["From"].addresses[0].display_name == "Zoë's Shop, Inc."
    assert message["From"].addresses[0].addr_spec == "sales@example.com"
    assert message["Date"] == "Thu, 01 Jan 2026 00:00:00 +0000"
    assert message["Message-ID"] == f"<{ID}>"
    assert message.get_content_type() == "text/plain"
    assert content(message) == "Hi Ann\n"
    assert composed.sender == "sales@example.com"
    assert composed.recipients == ("ann@example.net", "bob@example.net")


def test_same_input_same_bytes() -> None:
    two = request(html="<p>x</p>", attachments=(Attachment("a.bin", b"x", "application/pdf"),))
    assert build(two).content == build(two).content


def test_html_only_and_both() -> None:
    html_only = parsed(build(request(text=None, html="<p>Hi</p>")))
    assert html_only.get_content_type() == "text/html"
    both = parsed(build(request(html="<p>Hi</p>")))
    assert both.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in both.iter_parts()] == ["text/plain", "text/html"]
    assert content(both.get_body(("html",))) == "<p>Hi</p>\n"


def test_non_ascii_subject_and_body() -> None:
    message = parsed(build(request(subject="Grüße \u2013 ☃", text="Ünïcödé body ☃\n" * 3)))
    assert message["Subject"] == "Grüße \u2013 ☃"
    assert content(message) == "Ünïcödé body ☃\n" * 3


def test_attachments_come_back_byte_identical() -> None:
    attachments = (
        Attachment("Résumé \u2013 2026.pdf", BINARY, "application/pdf"),
        Attachment("pixel.png", PNG, "image/png"),
        Attachment("crlf.txt", b"one\r\ntwo\r\n", "text/plain"),
        Attachment("lf.txt", b"one\ntwo\n\n", "text/plain"),
        Attachment("cr.txt", b"one\rtwo", "text/csv"),
        Attachment("empty", b"", "application/octet-stream"),
    )
    message = parsed(build(request(html="<p>Hi</p>", attachments=attachments)))
    assert message.get_content_type() == "multipart/mixed"
    body, *parts = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [
        (p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in parts
    ] == [(a.filename, a.content_type, a.content) for a in attachments]


def test_bcc_never_written() -> None:
    composed = build(request(to=(), bcc=("hidden@example.net", "Ann@Example.net")))
    assert b"hidden" not in composed.content and b"Bcc" not in composed.content
    assert "To" not in parsed(composed)
    assert composed.recipients == ("hidden@example.net", "Ann@Example.net")


def test_recipients_once_each_in_order() -> None:
    composed = build(
        request(
            to=("a@example.net", "B@example.net"),
            cc=("b@example.net", "c@example.net"),
            bcc=("A@EXAMPLE.NET", "d@example.net"),
        )
    )
    assert composed.recipients == (
        "a@example.net",
        "B@example.net",
        "c@example.net",
        "d@example.net",
    )


def test_custom_headers_after_the_relays() -> None:
    headers = (("X-Campaign", "spring ☃"), ("List-Unsubscribe", "<mailto:u@example.com>"))
    message = parsed(build(request(headers=headers)))
    assert message.keys()[5:8] == ["MIME-Version", "X-Campaign", "List-Unsubscribe"]
    assert message["X-Campaign"] == "spring ☃"


def test_rendered_replaces_the_requests_parts() -> None:
    rendered = Rendered(subject="Welcome, Ann", html="<h1>Welcome</h1>")
    message = parsed(build(request(template="welcome"), rendered))
    assert message["Subject"] == "Welcome, Ann"
    assert [content(p) for p in message.iter_parts()] == ["Hi Ann\n", "<h1>Welcome</h1>\n"]


ENCODED_CRLF = "=?utf-8?q?Hi=0D=0ABcc:_x@evil.test?="


@pytest.mark.parametrize(
    "hostile",
    [
        SendRequest(from_email="sales@example.com", to=("ann@example.net",), subject=ENCODED_CRLF),
        SendRequest(
            from_email="sales@example.com", to=("ann@example.net",), from_name=ENCODED_CRLF
        ),
        SendRequest(
            from_email="sales@example.com",
            to=("ann@example.net",),
            headers=(("X-A", ENCODED_CRLF),),
        ),
        SendRequest(
            from_email="sales@example.com",
            to=("ann@example.net",),
            attachments=(Attachment(ENCODED_CRLF, b"x", "application/pdf"),),
        ),
    ],
)
def test_encoded_words_cannot_add_a_header(hostile: SendRequest) -> None:
    """CVE-2024-6923: the stdlib writes a CR LF decoded from an encoded word raw."""
    composed = build(hostile)
    assert b"\r\nBcc" not in composed.content and b"\nBcc" not in composed.content
    message = parsed(composed)
    assert "Bcc" not in message and composed.recipients == ("ann@example.net",)
    for part in message.walk():
        assert "Bcc" not in part


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Hi\r\nBcc: x@evil.test", "Hi  Bcc: x@evil.test"),
        ("Hi\nBcc: x@evil.test", "Hi Bcc: x@evil.test"),
        ("Hi\0\x85\ud800 there", "Hi    there"),
        (ENCODED_CRLF, "= ?utf-8?q?Hi=0D=0ABcc:_x@evil.test?="),
    ],
)
def test_rendered_subject_cannot_add_a_header(subject: str, expected: str) -> None:
    composed = build(request(), Rendered(subject=subject))
    message = parsed(composed)
    assert "Bcc" not in message and composed.recipients == ("ann@example.net",)
    assert message["Subject"] == expected


def test_a_header_it_did_not_set_stops_the_composer() -> None:
    """The last guard, for a request that skipped parse_send_request's checks."""
    with pytest.raises(RuntimeError):
        build(request(headers=(("X-A: a\r\nBcc", "x@evil.test"),)))


def test_injection_through_the_send_api_is_refused() -> None:
    body = {
        "to": ["ann@example.net"],
        "subject": "Hi\r\nBcc: x@evil.test",
        "text": "x",
        "headers": {"X-A": "a\nBcc: x@evil.test"},
    }
    found = parse_send_request(body, site=SITE, max_recipients=5)
    assert isinstance(found, list) and len(found) == 2


def test_bodies_with_nul_or_surrogates_still_compose() -> None:
    message = parsed(build(request(), Rendered(text="a\0b\udc80c")))
    assert content(message) == "a\ufffdb\ufffdc\n"


def test_long_lines_and_1_mb_body_in_linear_time() -> None:
    for line in ("a" * 1_000_000, "é" * 70 + "\n", "short line\n"):
        body = line * (1_000_000 // len(line))
        started = time.perf_counter()
        composed = build(request(text=body, html=body))
        assert time.perf_counter() - started < 1.0
        assert max(len(line) for line in composed.content.split(b"\r\n")) <= 998
        expected = body if body.endswith("\n") else body + "\n"
        assert content(parsed(composed).get_body(("plain",))) == expected


FIELDS = {
    "name": "Ann <script>alert(1)</script>",
    "email": "ann@example.net",
    "bcc": "x@evil.test",
    "to": "y@evil.test\r\nBcc: z@evil.test",
    "message": "Hello,\r\nI'd like a quote & more.\nThanks",
}


def inquiry(rendered: Rendered | None = None, reply_to: str | None = None) -> Composed:
    return compose_inquiry(
        FIELDS,
        site=SITE,
        to=("sales@example.com", "boss@example.com"),
        reply_to=reply_to,
        message_id=ID,
        now=NOW,
        page="product-page-1",
        rendered=rendered,
    )


def test_inquiry_default() -> None:
    composed = inquiry(reply_to="ann@example.net")
    message = parsed(composed)
    assert composed.recipients == ("sales@example.com", "boss@example.com")
    assert composed.sender == "sales@example.com"
    assert message["Subject"] == "New inquiry from product-page-1"
    assert message["From"] == '"Zoë\'s Shop, Inc." <sales@example.com>'
    assert message["To"] == "sales@example.com, boss@example.com"
    assert message["Reply-To"] == "ann@example.net"
    assert "Bcc" not in message and "Cc" not in message
    text = content(message.get_body(("plain",)))
    assert text == (
        "name: Ann <script>alert(1)</script>\n"
        "email: ann@example.net\n"
        "bcc: x@evil.test\n"
        "to: y@evil.test\n"
        "    Bcc: z@evil.test\n"
        "message: Hello,\n"
        "    I'd like a quote & more.\n"
        "    Thanks\n"
    )
    html = content(message.get_body(("html",)))
    assert "<script>" not in html and "Ann &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Hello,<br>I&#x27;d like a quote &amp; more.<br>Thanks" in html
    assert html.index(">name<") < html.index(">email<") < html.index(">message<")


def test_inquiry_without_reply_to_and_with_a_template() -> None:
    message = parsed(inquiry(Rendered(subject="Quote request", text="From the template\n")))
    assert "Reply-To" not in message
    assert message["Subject"] == "Quote request"
    assert content(message.get_body(("plain",))) == "From the template\n"


def header_lines(composed: Composed) -> list[bytes]:
    return composed.content.partition(b"\r\n\r\n")[0].split(b"\r\n")


def test_long_header_text_fits_lines_and_reads_back() -> None:
    """No header line over RFC 5322's 998; a word too long for any line becomes encoded words."""
    filename = ("Résumé \u2013 ☃ " * 30)[:250] + ".pdf"
    long_url = "<https://example.com/unsubscribe/" + "a" * 300 + ">"
    composed = build(
        request(
            subject="x" * 998,
            from_name="Zoë",
            headers=(("X-Long", "é" * 998), ("List-Unsubscribe", long_url)),
            attachments=(Attachment(filename, b"pdf", "application/pdf"),),
        )
    )
    assert max(map(len, header_lines(composed))) <= 998
    body_lines = composed.content.split(b"\r\n")
    assert max(map(len, body_lines)) <= 998
    message = parsed(composed)
    assert message["Subject"] == "x" * 998
    assert message["X-Long"] == "é" * 998
    assert message["From"].addresses[0].display_name == "Zoë"
    assert message["List-Unsubscribe"] == long_url  # a URL that fits a line is never encoded
    attachment = list(message.iter_parts())[1]
    assert attachment.get_filename() == filename
    assert all(len(line) <= 100 for line in body_lines if b"filename" in line)


@pytest.mark.parametrize(
    ("text", "encoding", "expected"),
    [
        ("Hi Ann\n", "7bit", "Hi Ann\n"),
        ("one\r\ntwo\rthree", "7bit", "one\ntwo\nthree\n"),  # any line end is a line end
        ("From here\n.\n", "7bit", "From here\n.\n"),  # no ">From": the body is not mangled
        ("Grüße from all of us\n" * 5, "quoted-printable", "Grüße from all of us\n" * 5),
        ("☃☃☃☃ ☃☃☃☃\n" * 5, "base64", "☃☃☃☃ ☃☃☃☃\n" * 5),
        ("x" * 79 + "\n", "quoted-printable", "x" * 79 + "\n"),  # over 78: encoded
        ("", "7bit", "\n"),
    ],
)
def test_body_transfer_encoding(text: str, encoding: str, expected: str) -> None:
    message = parsed(build(request(text=text)))
    assert message["Content-Transfer-Encoding"] == encoding
    assert content(message) == expected
