"""Message bytes from a send request or a form submission, built with the stdlib's email package.

Decides the message's shape: text/plain, text/html, or multipart/alternative
of both, inside multipart/mixed when there are attachments; the relay's
headers first (From, To, Cc, Reply-To, Subject, Date, Message-ID,
MIME-Version), then the request's own, then the builder's Content ones.

Guarantees: lines end in CRLF and the output is 7-bit, so any upstream takes
it without 8BITMIME; Bcc never appears; attachments are base64, so their bytes
come back exactly; the same input gives the same bytes (MIME boundaries come
from the message id); a form's field names and values reach only the body,
HTML-escaped in its HTML part. No text, whatever it holds, can add a header:
control characters in header text become spaces, and text that looks like an
RFC 2047 encoded word is defused, because Python's email package before
3.11.10 and 3.12.5 decodes such a word and writes the CR LF inside it raw
(CVE-2024-6923). The written header block is checked once more.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import MIMEPart

from relay.core.model import Site
from relay.core.send_request import SendRequest

# policy.SMTP writes CRLF; 7bit makes non-ASCII bodies quoted-printable or base64.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # controls, lone surrogates
_BODY_UNSAFE = re.compile(
    "[\x00\ud800-\udfff]"
)  # NUL has no place in SMTP; surrogates can't encode
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


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
    message = MIMEPart(policy=_POLICY)  # unlike EmailMessage, no MIME-Version in every part
    message["From"] = _address(request.from_email, request.from_name)
    if request.to:
        message["To"] = [_address(address) for address in request.to]
    if request.cc:
        message["Cc"] = [_address(address) for address in request.cc]
    if request.reply_to:
        message["Reply-To"] = _address(request.reply_to)
    message["Subject"] = _header_text(subject)
    message["Date"] = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = f"<{message_id}>"
    message["MIME-Version"] = "1.0"
    for name, value in request.headers:
        message[name] = _header_text(value)
    text = _body_text(text) if text is not None else None
    body_html = _body_text(body_html) if body_html is not None else None
    tag = _boundary_tag(message_id, (text or "", body_html or ""))
    if text is not None and body_html is not None:
        message.set_content(text)
        message.make_alternative(boundary=f"=_alternative_{tag}")
        message.add_alternative(body_html, subtype="html")
    elif body_html is not None:
        message.set_content(body_html, subtype="html")
    else:
        message.set_content(text or "")
    if request.attachments:
        message.make_mixed(boundary=f"=_mixed_{tag}")
    for attachment in request.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        # bytes are always base64 (RFC 2045 6.8): text attachments keep their exact line ends
        message.add_attachment(
            attachment.content,
            maintype=maintype,
            subtype=subtype,
            filename=_header_text(attachment.filename),
        )
    content = message.as_bytes(policy=_POLICY)
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


def _address(address: str, name: str | None = None) -> Address:
    """An address already checked (send_request.address_problem); a display name of any text."""
    return Address(display_name=_header_text(name or ""), addr_spec=address)


def _header_text(text: str) -> str:
    """Text for a header that cannot add one: see the module's docstring."""
    text = _HEADER_UNSAFE.sub(" ", text)
    start = text.find("=?")
    if start >= 0 and text.find("?=", start + 2) >= 0:
        text = text.replace("=?", "= ?")  # an encoded word needs "=?" exactly
    return text


def _body_text(text: str) -> str:
    return _BODY_UNSAFE.sub("\ufffd", text)


def _boundary_tag(message_id: str, texts: tuple[str, ...]) -> str:
    """A tag for the MIME boundaries that no body holds; base64 and quoted-printable can't."""
    tag = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    while any(tag in text for text in texts):
        tag = hashlib.sha256(tag.encode()).hexdigest()[:32]
    return tag


def _check_header_block(content: bytes, names: set[str]) -> None:
    """Every header line is one we set or its continuation; else we have a bug to stop at."""
    head = content.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n"):
        if (
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
