"""Address syntax: what we accept as an address, and sender pattern matching.

Deliberately stricter than RFC 5321 where the lenient forms are only ever
used for abuse: source routes, the `%` hack and bang paths are refused
(RFC 5321 section 3.6.1 lets a relay refuse them).
"""

from __future__ import annotations

import fnmatch
import re

_LOCAL = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]+|\"(?:[^\"\\\r\n]|\\.)+\""
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
_LITERAL = r"\[(?:\d{1,3}\.){3}\d{1,3}\]"
_ADDRESS = re.compile(rf"(?:{_LOCAL})@(?:{_DOMAIN}|{_LITERAL})")
_PATTERN = re.compile(r"[A-Za-z0-9!#$&'*+/=?^_`{|}~.*?-]+@[A-Za-z0-9.*?-]+")


def is_address(address: str) -> bool:
    """A routable mailbox address: local@domain, no routing tricks, no spaces."""
    if len(address) > 254 or "%" in address or "!" in address:
        return False
    return _ADDRESS.fullmatch(address) is not None


def is_sender_pattern(pattern: str) -> bool:
    """A `senders` entry: an address where `*` and `?` match any text."""
    return _PATTERN.fullmatch(pattern) is not None


def sender_matches(address: str, patterns: tuple[str, ...]) -> bool:
    address = address.lower()
    return any(fnmatch.fnmatchcase(address, pattern) for pattern in patterns)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
