"""Delivery status notifications (RFC 3464) for failed and delayed recipients.

A DSN goes only to an address the site owns (``recipient_for``), with a null
reverse path (RFC 5321 section 4.5.5), so it can never cause another DSN: the
caller sends none for a null sender, which every DSN is. It is a
multipart/report (RFC 6522) of a human-readable part, the
message/delivery-status part (one per-message group, one group per
recipient) and the original header block (text/rfc822-headers).
Field values are single lines of printable ASCII; an address that is not
ASCII is given as ``utf-8;`` (RFC 6533).
"""

from __future__ import annotations

import email.utils
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from relay.core.addresses import sender_matches
from relay.core.headers import CRLF, format_address, split_message
from relay.core.model import NewMessage, Site, SmtpReply
from relay.core.policy import NULL_SENDER


class Action(enum.StrEnum):
    FAILED = "failed"
    DELAYED = "delayed"


@dataclass(frozen=True)
class DsnRecipient:
    address: str
    status: str  # RFC 3463 code, e.g. 5.1.1
    diagnostic: str | None = None  # the upstream's reply, e.g. "550 5.1.1 no such user"
    remote_mta: str | None = None  # the upstream host that answered


@dataclass(frozen=True)
class Report:
    action: Action
    reporting_mta: str  # our hostname
    message_id: str  # the relay's id of the original message
    arrival: float
    to: str  # the DSN's recipient: recipient_for(site, original_sender)
    from_address: str  # who the DSN is from (an address the upstreams accept for the site)
    recipients: tuple[DsnRecipient, ...]
    original_content: bytes  # its header block is attached
    retry_until: float | None = None  # for delayed: when the relay gives up
    original_sender: str = ""  # the client's MAIL FROM, named when the DSN goes elsewhere


def recipient_for(site: Site | None, original_sender: str) -> str | None:
    """Where a DSN about a site's message may go: only to an address the site owns.

    The client's MAIL FROM when the site lists ``senders`` and it matches them
    (ingress enforced that; a reload may have changed the list since), else
    the site's bounce address. A site without ``senders`` lets its clients
    give any MAIL FROM, so sending there would let a leaked credential mail
    null-sender bounces with chosen text to anyone (backscatter). None: no
    DSN at all, for a null sender or a site that no longer exists.
    """
    if site is None or original_sender in ("", NULL_SENDER):
        return None
    if site.senders and sender_matches(original_sender, site.senders):
        return original_sender
    return site.envelope_sender


def status_of(reply: SmtpReply | None, *, permanent: bool) -> str:
    """The RFC 3463 status for a recipient: the reply's own, else its class."""
    if reply is not None and reply.enhanced:
        return reply.enhanced
    if reply is not None and reply.code >= 400:
        return f"{reply.code // 100}.0.0"
    return "5.4.7" if permanent else "4.4.7"  # delivery time expired / delayed


def as_message(report: Report, site_id: str, notice_id: str, now: float) -> NewMessage:
    """The DSN as a message to queue: null envelope sender, to ``report.to``."""
    return NewMessage(
        id=notice_id,
        site_id=site_id,
        username=None,
        client_ip="",
        original_sender=NULL_SENDER,
        envelope_sender="",
        recipients=(report.to,),
        content=build(report, notice_id, now),
        original_headers=b"",
        subject=subject(report.action),
        created_at=now,
    )


def subject(action: Action) -> str:
    if action is Action.FAILED:
        return "Undelivered Mail Returned to Sender"
    return "Delayed Mail (still being retried)"


def build(report: Report, dsn_id: str, now: float) -> bytes:
    boundary = f"{dsn_id}/{report.reporting_mta}"
    headers = [
        f"From: {format_address(report.from_address, 'Mail Delivery System')}",
        f"To: <{report.to}>",
        f"Subject: {subject(report.action)}",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: <{dsn_id}@{report.reporting_mta}>",
        "Auto-Submitted: auto-replied",  # RFC 3834: no auto-responder answers this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        (b"Content-Type: text/plain; charset=utf-8", _explanation(report).encode()),
        (b"Content-Type: message/delivery-status", _status_fields(report)),
        _headers_part(_header_block(report.original_content)),
    ]
    body = b"This is a MIME-encapsulated message." + CRLF
    for part_headers, content in parts:
        body += CRLF + f"--{boundary}".encode() + CRLF + part_headers + CRLF + CRLF + content
    body += CRLF + f"--{boundary}--".encode() + CRLF
    return CRLF.join(h.encode() for h in headers) + CRLF + CRLF + body


def _explanation(report: Report) -> str:
    if report.action is Action.FAILED:
        lines = [
            f"This is the mail relay at {report.reporting_mta}.",
            "",
            "Your message could not be delivered to the recipients below; the relay",
            "has given up on them. Their replies follow.",
        ]
    else:
        until = email.utils.formatdate(report.retry_until or report.arrival, usegmt=True)
        lines = [
            f"This is the mail relay at {report.reporting_mta}.",
            "",
            "Your message has not been delivered yet to the recipients below. The relay",
            f"keeps trying until {until}; you need do nothing now.",
        ]
    lines += ["", f"Message: {report.message_id}"]
    if report.original_sender and report.original_sender != report.to:
        lines.append(f"Envelope sender: <{report.original_sender}>")
    lines.append("")
    for r in report.recipients:
        lines.append(f"<{r.address}>: {r.diagnostic or r.status}")
    return "\r\n".join(_printable(line) for line in lines) + "\r\n"


def _status_fields(report: Report) -> bytes:
    """message/delivery-status: per-message fields, then a group per recipient (RFC 3464 2.1)."""
    groups = [
        [
            f"Reporting-MTA: dns; {report.reporting_mta}",
            f"X-Relay-Message-ID: {report.message_id}",
            f"Arrival-Date: {email.utils.formatdate(report.arrival, usegmt=True)}",
        ]
    ]
    for r in report.recipients:
        group = [
            f"Final-Recipient: {_address_field(r.address)}",
            f"Action: {report.action.value}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            group.append(f"Remote-MTA: dns; {_printable(r.remote_mta)}")
        if r.diagnostic:
            group.append(f"Diagnostic-Code: smtp; {_printable(r.diagnostic)}")
        if report.action is Action.DELAYED and report.retry_until is not None:
            group.append(
                f"Will-Retry-Until: {email.utils.formatdate(report.retry_until, usegmt=True)}"
            )
        groups.append(group)
    # Groups are separated by one empty line; the CRLF before the boundary ends the last.
    return CRLF.join(CRLF.join(line.encode("ascii") for line in group) + CRLF for group in groups)


def _headers_part(block: bytes) -> tuple[bytes, bytes]:
    kind = b"Content-Type: text/rfc822-headers"
    return (kind if block.isascii() else kind + CRLF + b"Content-Transfer-Encoding: 8bit", block)


def _header_block(content: bytes) -> bytes:
    fields, _ = split_message(content)
    return b"".join(f.raw for f in fields)


def _address_field(address: str) -> str:
    if address.isascii():
        return f"rfc822; {_printable(address)}"
    # RFC 6533 section 3: utf-8-addr-xtext, non-ASCII as \\x{HEX}.
    encoded = "".join(
        c if c.isascii() and c.isprintable() else f"\\x{{{ord(c):X}}}" for c in address
    )
    return f"utf-8; {encoded}"


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _printable(text: str) -> str:
    return _UNPRINTABLE.sub("?", " ".join(text.split()))


def recipients_of(
    states: Sequence[tuple[str, SmtpReply | None, str | None]], *, permanent: bool
) -> tuple[DsnRecipient, ...]:
    """DSN entries from (address, reply, remote host) triples."""
    return tuple(
        DsnRecipient(
            address,
            status_of(reply, permanent=permanent),
            reply.render() if reply else None,
            host,
        )
        for address, reply, host in states
    )
