"""Header rewriting as bytes: the header block changes, the body never does.

The message is split at the first empty line into a list of raw header
fields (each with its continuation lines and CRLF, exactly as received) and
the body. Rewriters are small callables in the spirit of structlog's
processors: options in ``__init__``, a pure ``__call__`` from fields to
fields. The body bytes are re-attached untouched, so DKIM body hashes and
8-bit content survive (RFC 5322 section 2.1; RFC 6376 section 3.7).
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header

from relay.core.model import ReplyTo, Site

CRLF = b"\r\n"
_FIELD_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True)
class HeaderField:
    name: bytes  # as written, for output
    raw: bytes  # the whole field: "Name: value\r\n" plus any continuation lines

    @functools.cached_property
    def key(self) -> str:  # every rewriter asks, for every field
        return self.name.decode("ascii").lower()

    @property
    def value(self) -> bytes:
        """The unfolded value, without the name, colon and final CRLF."""
        value = self.raw.split(b":", 1)[1]
        return re.sub(rb"\r\n(?=[ \t])", b"", value).strip()


Fields = tuple[HeaderField, ...]
Rewriter = Callable[[Fields], Fields]


def split_message(content: bytes) -> tuple[Fields, bytes]:
    """Split into header fields and the body (everything after the empty line).

    A line that is neither a field nor a continuation ends the header block
    early (the message had no empty line): that line and the rest are body.
    """
    fields: list[HeaderField] = []
    pos = 0
    while pos < len(content):
        end = content.find(CRLF, pos)
        line_end = len(content) if end < 0 else end + 2
        line = content[pos:line_end]
        if line in (CRLF, b""):
            return tuple(fields), content[line_end:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = HeaderField(fields[-1].name, fields[-1].raw + line)
        else:
            match = _FIELD_NAME.match(line)
            if match is None:
                return tuple(fields), content[pos:]
            fields.append(HeaderField(match.group(1), line if line.endswith(CRLF) else line + CRLF))
        pos = line_end
    return tuple(fields), b""


def join_message(fields: Sequence[HeaderField], body: bytes) -> bytes:
    return b"".join(f.raw for f in fields) + CRLF + body


def make_field(name: str, value: str) -> HeaderField:
    """A field built by us. Refuses CR and LF so no value can inject a header."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} value contains a line break")
    raw = f"{name}: {value}".encode() + CRLF
    return HeaderField(name.encode("ascii"), raw)


def format_address(address: str, display_name: str | None) -> str:
    if not display_name:
        return address
    return email.utils.formataddr((display_name, address), charset="utf-8")


def decoded_text(value: bytes) -> str:
    """Readable text of an RFC 2047 value (for logs and search, never for output)."""
    text = value.decode("utf-8", errors="replace")
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError):
        return text


def first(fields: Fields, key: str) -> HeaderField | None:
    return next((f for f in fields if f.key == key), None)


def without(fields: Fields, *keys: str) -> Fields:
    return tuple(f for f in fields if f.key not in keys)


class RewriteFrom:
    """From becomes the site's address; Reply-To follows the site's `reply_to`."""

    def __init__(self, site: Site) -> None:
        self._from = make_field("From", format_address(site.from_email, site.from_name))
        self._site = site

    def __call__(self, fields: Fields) -> Fields:
        reply_to = self._reply_to(fields)
        kept = without(fields, "from", "reply-to")
        return (*kept, self._from, *([reply_to] if reply_to else []))

    def _reply_to(self, fields: Fields) -> HeaderField | None:
        if self._site.reply_to is ReplyTo.NONE:
            return None
        if self._site.reply_to is ReplyTo.ADDRESS:
            assert self._site.reply_to_address is not None
            return make_field("Reply-To", self._site.reply_to_address)
        existing = first(fields, "reply-to")
        if existing is not None:
            return existing
        original_from = first(fields, "from")
        if original_from is None:
            return None
        return HeaderField(b"Reply-To", b"Reply-To:" + original_from.raw.split(b":", 1)[1])


class RemoveBcc:
    """Bcc must never reach the recipients (RFC 5322 section 3.6.3)."""

    def __call__(self, fields: Fields) -> Fields:
        return without(fields, "bcc")


class RemoveField:
    """A field meant for the relay only (such as the message-class header)."""

    def __init__(self, name: str) -> None:
        self._key = name.lower()

    def __call__(self, fields: Fields) -> Fields:
        return without(fields, self._key)


class AddMissing:
    """Message-ID and Date are added when the site left them out (RFC 5322 section 3.6)."""

    def __init__(self, message_id: str, hostname: str, now: float) -> None:
        self._message_id = make_field("Message-ID", f"<{message_id}@{hostname}>")
        self._date = make_field("Date", email.utils.formatdate(now, usegmt=True))

    def __call__(self, fields: Fields) -> Fields:
        added = []
        if first(fields, "message-id") is None:
            added.append(self._message_id)
        if first(fields, "date") is None:
            added.append(self._date)
        return (*fields, *added)


class PrependReceived:
    """Our trace field, first in the block as RFC 5321 section 4.4 requires."""

    def __init__(self, received: HeaderField) -> None:
        self._received = received

    def __call__(self, fields: Fields) -> Fields:
        return (self._received, *fields)


def received_field(
    *, helo: str, client_ip: str, hostname: str, protocol: str, message_id: str, now: float
) -> HeaderField:
    helo = re.sub(r"[^\x21-\x7e]", "?", helo)[:100]
    date = email.utils.formatdate(now, usegmt=True)
    value = (
        f"from {helo} ([{client_ip}])\r\n\tby {hostname} with {protocol} id {message_id};"
        f"\r\n\t{date}"
    )
    return HeaderField(b"Received", b"Received: " + value.encode("ascii") + CRLF)


def rewrite(content: bytes, rewriters: Sequence[Rewriter]) -> tuple[bytes, Fields]:
    """Apply the rewriters to the header block; return the new message and the original fields."""
    fields, body = split_message(content)
    original = fields
    for rewriter in rewriters:
        fields = rewriter(fields)
    return join_message(fields, body), original
