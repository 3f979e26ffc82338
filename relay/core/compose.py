"""Message bytes from a send request or a form submission, built with the stdlib's email package.

Decides the message's shape: text/plain, text/html, or multipart/alternative
of both, inside multipart/mixed when there are attachments; the relay's
headers first (From, To, Cc, Reply-To, Subject, Date, Message-ID,
MIME-Version), then the request's own, then the body's Content ones.

Guarantees: lines end in CRLF and the output is 7-bit, so any upstream takes
it without 8BITMIME; no line is longer than 998 characters (RFC 5322 2.1.1);
Bcc never appears; attachments are base64, so their bytes come back exactly;
the same input gives the same bytes (MIME boundaries come from the message
id); a form's field names and values reach only the body, HTML-escaped in
its HTML part. No text, whatever it holds, can add a header: control
characters in header text become spaces, and text that looks like an RFC
2047 encoded word is defused, so that no reader decodes a CR LF out of it
(Python's own new email API before 3.11.10 and 3.12.5 wrote such a decoded
CR LF raw: CVE-2024-6923). The written header block is checked once more.

Built with the legacy API (``email.message.Message`` and the compat32
generator, writing CRLF): it writes header values as given, folded at
whitespace, and text needing RFC 2047 as encoded words (``email.header``),
where the new API (EmailMessage, policy.SMTP) parses every value with the
full RFC 5322 parser when it is set and again when it is folded: about four
times the CPU for a 2 KB message (``python -m bench.compose_cost``). The
body's transfer encoding is chosen here, as the new API did: 7bit for ASCII
lines of at most 78 characters, else the shorter of quoted-printable and
base64 (both encoded in C by ``binascii``).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import html
import io
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.policy import Compat32
from typing import Any

from relay.core.model import Site
from relay.core.send_request import Attachment, SendRequest

_MAX_LINE = 998  # RFC 5322 2.1.1: characters in a line, CRLF not counted
_PLAIN_LINE = 78  # RFC 5322 2.1.1's SHOULD: a longer body line is encoded
# A header word that folding cannot fit in a line is written as encoded words instead.
_MAX_WORD = 900
# RFC 2231 sections of a non-ASCII filename: 20 characters or %XX escapes, 20 to 60 characters
_SECTION_UNITS = 20
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # controls, lone surrogates
_BODY_UNSAFE = re.compile(
    "[\x00\ud800-\udfff]"
)  # NUL has no place in SMTP; surrogates can't encode
_TAG_DIGITS = 16  # of a MIME boundary's tag (see _boundary_tag)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_PERCENT_ENCODED = re.compile(rf"(?:%[0-9A-F]{{2}}|[^%]){{1,{_SECTION_UNITS}}}")


class _Policy(Compat32):
    """compat32 (headers folded at 78 characters where whitespace allows), writing as it is a
    header line that fits (what folding would return, at a tenth of the cost) or one word
    that no folding could shorten (folding would put it alone on the next line)."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, str) and value.isascii():
            fits = len(name) + len(value) + 2 <= _PLAIN_LINE
            if fits or (len(name) + len(value) + 2 <= _MAX_LINE and " " not in value):
                return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _Policy(linesep="\r\n")  # SMTP's line end


class _Generator(BytesGenerator):
    """compat32's generator, writing a text body's line ends as CRLF in one pass where the
    stdlib writes it line by line (a third of a form's message). Same bytes: that method
    splits at CR LF, CR or LF and joins with the line end."""

    def _write_lines(self, lines: str) -> None:
        if "\r" in lines:
            lines = _LINE_BREAK.sub("\n", lines)
        self.write(lines.replace("\n", _POLICY.linesep))


@dataclass(frozen=True)
class Rendered:
    """A template's output: each part that is not None replaces the request's."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None


@dataclass(frozen=True)
class Composed:
    content: bytes
    sender: str  # the From address
    recipients: tuple[str, ...]  # to, cc and bcc, each once (case-insensitively), in order


def compose(
    request: SendRequest, *, message_id: str, now: float, rendered: Rendered | None = None
) -> Composed:
    """The message for a checked request; ``message_id`` goes between < and >."""
    subject, text, body_html = request.subject, request.text, request.html
    if rendered is not None:
        subject = rendered.subject if rendered.subject is not None else subject
        text = rendered.text if rendered.text is not None else text
        body_html = rendered.html if rendered.html is not None else body_html
    message: Message[str, str | Header] = Message(_POLICY)
    message["From"] = _mailbox("From", request.from_email, request.from_name)
    if request.to:
        message["To"] = ", ".join(request.to)  # checked addresses: ASCII, nothing to quote
    if request.cc:
        message["Cc"] = ", ".join(request.cc)
    if request.reply_to:
        message["Reply-To"] = request.reply_to
    message["Subject"] = _header_value("Subject", subject)
    message["Date"] = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = f"<{message_id}>"
    message["MIME-Version"] = "1.0"
    for name, value in request.headers:
        message[name] = _header_value(name, value)
    text = _body_text(text) if text is not None else None
    body_html = _body_text(body_html) if body_html is not None else None
    tag = _boundary_tag(message_id, (text or "", body_html or ""))
    body = _body(text, body_html, tag)
    if request.attachments:
        body = _multipart("mixed", tag, [body, *map(_attachment, request.attachments)])
    for name, value in body.items():  # the body's Content- headers after the relay's
        message[name] = value
    message.set_payload(body.get_payload())
    written = io.BytesIO()
    _Generator(written, mangle_from_=False, policy=_POLICY).flatten(message)
    content = written.getvalue()
    _check_header_block(content, {name.lower() for name in message})
    recipients = _unique(request.to + request.cc + request.bcc)
    return Composed(content=content, sender=request.from_email, recipients=recipients)


def compose_inquiry(
    fields: Mapping[str, str],
    *,
    site: Site,
    to: tuple[str, ...],
    reply_to: str | None,
    message_id: str,
    now: float,
    page: str,
    rendered: Rendered | None = None,
) -> Composed:
    """The email a landing page's form sends to the form's fixed recipients.

    Without a template: "New inquiry from <page>", the fields as "name: value"
    lines in the order received, and the same as an HTML table.
    """
    request = SendRequest(
        from_email=site.from_email,
        from_name=site.from_name,
        to=to,
        reply_to=reply_to,
        subject=f"New inquiry from {page}",
        text=_inquiry_text(fields),
        html=_inquiry_html(fields, page),
    )
    return compose(request, message_id=message_id, now=now, rendered=rendered)


def _inquiry_text(fields: Mapping[str, str]) -> str:
    lines = []
    for name, value in fields.items():
        first, *more = _LINE_BREAK.split(value)
        lines.append(f"{name}: {first}")
        lines.extend(f"    {line}" for line in more)  # indented: a value's lines stay its own
    return "\n".join(lines) + "\n"


def _inquiry_html(fields: Mapping[str, str], page: str) -> str:
    rows = "".join(
        '<tr><th align="left" valign="top" style="padding:4px 16px 4px 0">'
        f"{html.escape(name)}</th>"
        f'<td style="padding:4px 0">{"<br>".join(map(html.escape, _LINE_BREAK.split(value)))}'
        "</td></tr>\n"
        for name, value in fields.items()
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f"<p><strong>New inquiry from {html.escape(page)}</strong></p>\n"
        f'<table cellspacing="0" cellpadding="0">\n{rows}</table>\n</body></html>\n'
    )


def _mailbox(field: str, address: str, name: str | None) -> str | Header:
    """An address already checked (send_request.address_problem); a display name of any text."""
    name = _header_text(name or "")
    if not name:
        return address
    if _plain(name):
        return email.utils.formataddr((name, address))  # quoted when it holds specials
    mailbox = Header(name, "utf-8", header_name=field)
    mailbox.append(f"<{address}>", "us-ascii")  # written after a space
    return mailbox


def _header_value(field: str, text: str) -> str | Header:
    """Header text as written: plain when it can be, else RFC 2047 encoded words."""
    text = _header_text(text)
    return text if _plain(text) else Header(text, "utf-8", header_name=field)


def _plain(text: str) -> bool:
    """ASCII whose every word fits a folded line."""
    return text.isascii() and (len(text) <= _MAX_WORD or max(map(len, text.split())) <= _MAX_WORD)


def _header_text(text: str) -> str:
    """Text for a header that cannot add one: see the module's docstring."""
    text = _HEADER_UNSAFE.sub(" ", text)
    start = text.find("=?")
    if start >= 0 and text.find("?=", start + 2) >= 0:
        text = text.replace("=?", "= ?")  # an encoded word needs "=?" exactly
    return text


def _body_text(text: str) -> str:
    if text.isascii() and "\0" not in text:  # the common case, without a scan by the regex
        return text
    return _BODY_UNSAFE.sub("\ufffd", text)


def _body(text: str | None, body_html: str | None, tag: str) -> Message:
    if text is not None and body_html is not None:
        parts = [_text_part(text, "plain"), _text_part(body_html, "html")]
        return _multipart("alternative", tag, parts)
    if body_html is not None:
        return _text_part(body_html, "html")
    return _text_part(text or "", "plain")


def _multipart(subtype: str, tag: str, parts: Sequence[Message]) -> Message:
    multipart = Message(_POLICY)
    multipart["Content-Type"] = f'multipart/{subtype}; boundary="=_{subtype}_{tag}"'
    multipart.set_payload(list(parts))
    return multipart


def _text_part(text: str, subtype: str) -> Message:
    encoding, payload = _transfer_encoded(text)
    part = Message(_POLICY)
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = encoding
    part.set_payload(payload)  # its newlines are written as CRLF
    return part


def _transfer_encoded(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, the body) for text whose lines may end in CR, LF or CRLF.

    Every line ends in a newline, the last one too.
    """
    if "\r" in text:
        text = _LINE_BREAK.sub("\n", text)
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and max(map(len, text.split("\n"))) <= _PLAIN_LINE:
        return "7bit", text
    data = text.encode("utf-8")
    quoted = binascii.b2a_qp(data, istext=True)  # soft line breaks at 76 (RFC 2045 6.7)
    # base64's length: 4 characters per 3 bytes, and a newline per line of 76 (57 bytes)
    if len(quoted) <= (len(data) + 2) // 3 * 4 + (len(data) + 56) // 57:
        return "quoted-printable", quoted.decode("ascii")
    return "base64", base64.encodebytes(data).decode("ascii")


def _attachment(attachment: Attachment) -> Message:
    """Always base64 (RFC 2045 6.8): even a text attachment keeps its exact line ends."""
    part = Message(_POLICY)
    part["Content-Type"] = attachment.content_type  # checked: type/subtype
    part["Content-Transfer-Encoding"] = "base64"
    part["Content-Disposition"] = _disposition(_header_text(attachment.filename))
    part.set_payload(attachment_base64(attachment.content))
    return part


def attachment_base64(content: bytes) -> str:
    """An attachment's body as it is written (LF line ends; the generator writes CRLF)."""
    return base64.encodebytes(content).decode("ascii")


def _disposition(filename: str) -> str:
    """RFC 2183's attachment with the filename quoted, or, when it is not ASCII, in RFC 2231's
    encoding, in sections short enough for the folded header's lines."""
    if filename.isascii():
        return f'attachment; filename="{email.utils.quote(filename)}"'
    sections = _PERCENT_ENCODED.findall(urllib.parse.quote(filename, safe=""))
    if len(sections) == 1:
        return f"attachment; filename*=utf-8''{sections[0]}"
    first, *more = sections
    numbered = [f"filename*{n}*={section}" for n, section in enumerate(more, 1)]
    return "; ".join(["attachment", f"filename*0*=utf-8''{first}", *numbered])


def _boundary_tag(message_id: str, texts: tuple[str, ...]) -> str:
    """A tag for the MIME boundaries that no body holds; base64 and quoted-printable can't.

    16 hex digits: the longest Content-Type with it, multipart/alternative's, fits the 78
    characters of a line that is written without folding.
    """
    tag = hashlib.sha256(message_id.encode()).hexdigest()[:_TAG_DIGITS]
    while any(tag in text for text in texts):
        tag = hashlib.sha256(tag.encode()).hexdigest()[:_TAG_DIGITS]
    return tag


def _check_header_block(content: bytes, names: set[str]) -> None:
    """Every header line is one we set or its continuation, and fits a line; else we have a
    bug to stop at."""
    head = content.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n"):
        if len(line) > _MAX_LINE or (
            line[:1] not in (b" ", b"\t")
            and line.partition(b":")[0].lower().decode("ascii", "replace") not in names
        ):
            raise RuntimeError("the composed header block holds a header that was not set")


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    unique = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            unique.append(address)
    return tuple(unique)
