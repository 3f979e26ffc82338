"""Message ids: 26 characters of Crockford base32, sortable by creation time (like ULID)."""

from __future__ import annotations

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_message_id(now: float, random_bytes: bytes) -> str:
    """48 bits of milliseconds, then 80 random bits; safe in URLs, logs and Message-IDs."""
    assert len(random_bytes) == 10
    value = (int(now * 1000) & (2**48 - 1)) << 80 | int.from_bytes(random_bytes, "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
