"""What the relay changed in a message's header: the site's original block against what went out.

For the admin API's message view. It reads, it never rewrites: values are
decoded for display (UTF-8, undecodable bytes replaced), unfolded (RFC 5322
section 2.2.3: a line break followed by whitespace is just that whitespace)
and stripped. Fields compare by case-insensitive name, each name as the
ordered list of its values, so a repeated field (Received) or a reordering
of one name's values counts as a change. Malformed lines (no colon, a
continuation with no field before it) are skipped: stored headers came from
arbitrary clients, and a diff must never fail on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5322 section 3.6.8: printable ASCII except ":", then optional obsolete
# whitespace before the colon (section 4.5.8).
_FIELD = re.compile(r"^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)\Z", re.DOTALL)
_LINE_BREAK = re.compile(r"\r?\n")


@dataclass(frozen=True)
class HeaderChange:
    name: str  # as it first appears (in the sent block when it is there)
    change: str  # "added" | "removed" | "changed"
    before: tuple[str, ...]  # the field's values in the original, unfolded, in order
    after: tuple[str, ...]  # the field's values as sent, unfolded, in order


def header_block(message: bytes) -> bytes:
    """The bytes before the first empty line (CRLF or bare LF); all of it when there is none."""
    ends = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    return message[: min(ends)] if ends else message


def header_diff(original: bytes, sent: bytes) -> list[HeaderChange]:
    """Every field name whose values differ, in the order of ``sent`` then of ``original``.

    ``sent`` may be a whole message; only its header block is read.
    """
    before, before_names = _fields(original)
    after, after_names = _fields(header_block(sent))
    changes = []
    for key, name in after_names.items():
        old, new = before.get(key, ()), after[key]
        if old != new:
            changes.append(HeaderChange(name, "changed" if key in before else "added", old, new))
    for key, name in before_names.items():
        if key not in after:
            changes.append(HeaderChange(name, "removed", before[key], ()))
    return changes


def _fields(block: bytes) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(lower-case name -> values in order, lower-case name -> name as first written)."""
    values: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name, value in _unfolded(block.decode("utf-8", errors="replace")):
        key = name.lower()
        names.setdefault(key, name)
        values.setdefault(key, []).append(value.strip())
    return {key: tuple(v) for key, v in values.items()}, names


def _unfolded(text: str) -> list[tuple[str, str]]:
    """(name, value) per field, continuation lines joined to their field.

    A field's pieces are collected and joined once: growing its value line by
    line made a field folded into N lines cost N squared (3.1 s for 1 MB).
    """
    fields: list[tuple[str, list[str]]] = []
    open_field = False  # whether the previous line belongs to fields[-1]
    for line in _LINE_BREAK.split(text):
        if line[:1] in (" ", "\t"):
            if open_field:
                fields[-1][1].append(line)
            continue
        match = _FIELD.match(line)
        open_field = match is not None
        if match:
            fields.append((match.group(1), [match.group(2)]))
    return [(name, "".join(pieces)) for name, pieces in fields]
