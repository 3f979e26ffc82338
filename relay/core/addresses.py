"""Address syntax: what we accept as an address, and sender pattern matching.

Deliberately stricter than RFC 5321 where the lenient forms are only ever
used for abuse: source routes, the `%` hack and bang paths are refused
(RFC 5321 section 3.6.1 lets a relay refuse them). No address and no display
name may hold a control character (C0 with NUL and TAB, DEL, C1): RFC 5321
section 4.1.2 already keeps them out of quoted local parts (qtextSMTP and
quoted-pairSMTP are printable ASCII, RFC 6531 adds only UTF-8 that is not
ASCII), and in a header or a log line they only ever hide or forge text.
"""

from __future__ import annotations

import fnmatch
import re

# RFC 5321 4.1.2: qtextSMTP is %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP is "\" %d32-126;
# RFC 6531 3.3 adds UTF8-non-ascii to qtextSMTP, which we take without the C1 controls and
# without lone surrogates (undecodable bytes under surrogateescape, not characters).
_QTEXT = r"[\x20\x21\x23-\x5b\x5d-\x7e\u00a0-\ud7ff\ue000-\U0010ffff]"
_LOCAL = rf"[A-Za-z0-9!#$&'*+/=?^_`{{|}}~.-]+|\"(?:{_QTEXT}|\\[\x20-\x7e])+\""
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
_LITERAL = r"\[(?:\d{1,3}\.){3}\d{1,3}\]"
_ADDRESS = re.compile(rf"(?:{_LOCAL})@(?:{_DOMAIN}|{_LITERAL})")
_PATTERN = re.compile(r"[A-Za-z0-9!#$&'*+/=?^_`{|}~.*?-]+@[A-Za-z0-9.*?-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0, DEL and C1


def is_address(address: str) -> bool:
    """A routable mailbox address: local@domain, no routing tricks, no spaces, no controls."""
    if len(address) > 254 or "%" in address or "!" in address:
        return False
    return _ADDRESS.fullmatch(address) is not None


def control_character(text: str) -> str | None:
    """The first control character in ``text`` (C0 with NUL and TAB, DEL, C1), or None.

    For display names: `from.name` becomes a From header and a log field.
    """
    found = _CONTROL.search(text)
    return found.group() if found else None


def is_sender_pattern(pattern: str) -> bool:
    """A `senders` entry: an address where `*` and `?` match any text."""
    return _PATTERN.fullmatch(pattern) is not None


def sender_matches(address: str, patterns: tuple[str, ...]) -> bool:
    address = address.lower()
    return any(fnmatch.fnmatchcase(address, pattern) for pattern in patterns)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
