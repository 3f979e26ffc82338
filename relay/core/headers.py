"""Header rewriting as bytes: the header block changes, the body never does.

The message is split at the first empty line into a list of raw header
fields (each with its continuation lines and CRLF, exactly as received) and
the body. Rewriters are small callables in the spirit of structlog's
processors: options in ``__init__``, a pure ``__call__`` from fields to
fields. The body bytes are re-attached untouched, so DKIM body hashes and
8-bit content survive (RFC 5322 section 2.1; RFC 6376 section 3.7).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header

from relay.core.model import ReplyTo, Site

CRLF = b"\r\n"
# RFC 5322 section 3.6.8 printable ASCII but ":", then the obsolete whitespace
# before the colon that section 4.5.8 (obs-optional) still lets us receive.
# Matched at a line's start, never across lines (CR is not a name character).
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_WSP = b" \t"
TEXT_CHARS = 1000  # of a decoded value the relay keeps (a message's subject)
_DECODED_BYTES = 4096  # of a value it decodes for that: 1.5 ms at most


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
        # Unfolding (RFC 5322 section 2.2.3) removes each CRLF that precedes whitespace.
        return value.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t").strip()


Fields = tuple[HeaderField, ...]
Rewriter = Callable[[Fields], Fields]


def split_message(content: bytes) -> tuple[Fields, bytes]:
    """Split into header fields and the body (everything after the empty line).

    A line that is neither a field nor a continuation ends the header block
    early (the message had no empty line): that line and the rest are body.
    Linear in the header block: a field is cut out of ``content`` once, when
    its last continuation line is passed, never grown line by line.
    """
    fields: list[HeaderField] = []
    field: re.Match[bytes] | None = None  # the field being read, until a line is not its own
    pos = 0
    while pos < len(content):
        end = content.find(CRLF, pos)
        next_line = len(content) if end < 0 else end + 2
        if field is not None and content[pos] in _WSP:
            pos = next_line
            continue
        if field is not None:
            fields.append(_cut(content, field, pos))
            field = None
        if end == pos:
            return tuple(fields), content[next_line:]
        field = _FIELD_NAME.match(content, pos)
        if field is None:
            return tuple(fields), content[pos:]
        pos = next_line
    if field is not None:
        fields.append(_cut(content, field, pos))
    return tuple(fields), b""


def _cut(content: bytes, field: re.Match[bytes], end: int) -> HeaderField:
    raw = content[field.start() : end]
    return HeaderField(field.group(1), raw if raw.endswith(CRLF) else raw + CRLF)


def header_block_fits(content: bytes, limit: int) -> bool:
    """Whether the header block (its fields with their CRLFs) has at most ``limit`` bytes.

    Linear, and reads about ``limit`` bytes of ``content`` whatever its size:
    the end of the block is an empty line looked for only that far, or, in a
    message without one, the first line that is neither a field nor a
    continuation. A message may begin with the empty line (no header at all).
    """
    if len(content) <= limit or content.startswith(CRLF):
        return True
    if content.find(b"\r\n\r\n", 0, limit + 2) >= 0:  # the empty line follows in time
        return True
    # No empty line in time: the block is small only if a line that starts within the
    # limit is not a header line. Whole lines first, then the one that crosses the limit.
    last = content.rfind(CRLF, 0, limit + 2)
    whole = last + 2 if last >= 0 else 0
    fields, body = split_message(content[:whole])
    if body:
        return True
    if whole > limit:
        return False
    if content[whole : whole + 1] in (b" ", b"\t"):
        return not fields
    return _FIELD_NAME.match(content, whole) is None


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


def decoded_text(value: bytes, limit: int = TEXT_CHARS) -> str:
    """Readable text of an RFC 2047 value (for logs and search, never for output).

    At most ``limit`` characters, decoded from the value's first
    ``_DECODED_BYTES`` only: email.header's decoder grows faster than the
    value (2.9 s for 1 MB of encoded words), and a subject shown in a log
    line or a search result needs no more. The value is cut at a space, so
    no encoded word is cut in half (RFC 2047 section 2: they are separated
    by whitespace and at most 75 characters long).
    """
    if len(value) > _DECODED_BYTES:
        cut = max(value.rfind(b" ", 0, _DECODED_BYTES), value.rfind(b"\t", 0, _DECODED_BYTES))
        value = value[: cut if cut > 0 else _DECODED_BYTES]
    text = value.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, LookupError):  # a malformed value stays as it is
        text = str(make_header(decode_header(text)))
    return text[:limit]


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


class StripSpaceBeforeColon:
    """``X-Foo : bar`` goes out as ``X-Foo: bar``.

    The space before the colon is obsolete syntax (RFC 5322 section 4.5.8):
    received, never to be generated, and some DKIM verifiers (dkimpy) refuse
    a message that has it.
    """

    def __call__(self, fields: Fields) -> Fields:
        return tuple(_close_up(f) for f in fields)


def _close_up(field: HeaderField) -> HeaderField:
    colon = field.raw.index(b":", len(field.name))
    if colon == len(field.name):
        return field
    return HeaderField(field.name, field.name + field.raw[colon:])


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


class Append:
    """Fields added after the message's own (the policy's on_data: checked by the core)."""

    def __init__(self, added: Sequence[HeaderField]) -> None:
        self._added = tuple(added)

    def __call__(self, fields: Fields) -> Fields:
        return (*fields, *self._added)


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
