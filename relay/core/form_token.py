"""The signed form token of ``GET /api/form-token``: who issued it, for which site, and when.

A token is URL-safe base64 (no padding) of::

    version (1 byte) | issued_at (8 bytes, big-endian seconds) | nonce (16 bytes)
    | site id (UTF-8, the rest) | tag (16 bytes)

where the tag is HMAC-SHA256 over everything before it, truncated to 128 bits
(RFC 2104 section 5 allows truncation; a forger still needs about 2**128 tries).

`check` decides, for a token presented with a form post, whether it is ours,
for this site, and between `min_age_seconds` (bots post at once) and
`max_age_seconds` old. It never raises on any string: input longer than a
token can be is refused before it is decoded, and only the canonical encoding
of a token is accepted, so no two strings pass for one token. The tag is
compared in constant time. That a nonce is used only once is the caller's to
record: `TokenOk.nonce` is the key to record it under.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

_VERSION = 1
_HEAD = struct.Struct(">BQ16s")  # version, issued_at, nonce
_TAG_BYTES = 16
_MAX_SITE_ID_BYTES = 255
# Four base64 characters for every three bytes of the longest token, rounded up.
_MAX_TOKEN_CHARS = -(-(_HEAD.size + _MAX_SITE_ID_BYTES + _TAG_BYTES) * 4 // 3)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class Refusal(enum.StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    FORGED = "forged"
    OTHER_SITE = "other_site"
    TOO_YOUNG = "too_young"
    EXPIRED = "expired"


@dataclass(frozen=True)
class TokenOk:
    nonce: str  # 32 hex digits: record it as used, once
    issued_at: int


@dataclass(frozen=True)
class TokenRefused:
    reason: Refusal


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose: HKDF-SHA256 (RFC 5869) with no salt, ``purpose`` as info.

    With no salt, HKDF-Extract uses a key of zeros (RFC 5869 section 2.2), so any
    secret, random or not, gives a uniform key; one output block (section 2.3) is enough.
    """
    pseudo_random_key = hmac.digest(bytes(hashlib.sha256().digest_size), secret, "sha256")
    return hmac.digest(pseudo_random_key, purpose + b"\x01", "sha256")


def issue(key: bytes, site_id: str, now: float, nonce: bytes) -> str:
    """A token for ``site_id`` issued at ``now`` (seconds); ``nonce`` is 16 random bytes."""
    site = site_id.encode("utf-8")
    if len(nonce) != 16 or not 0 < len(site) <= _MAX_SITE_ID_BYTES:
        raise ValueError("a form token needs a 16-byte nonce and a site id of 1-255 bytes")
    body = _HEAD.pack(_VERSION, int(now), nonce) + site
    return encode_token(body + _tag(key, body))


def check(
    key: bytes,
    token: str | None,
    site_id: str,
    now: float,
    *,
    min_age_seconds: int,
    max_age_seconds: int,
) -> TokenOk | TokenRefused:
    if not token:
        return TokenRefused(Refusal.MISSING)
    raw = decode_token(token)
    if raw is None or len(raw) <= _HEAD.size + _TAG_BYTES or raw[0] != _VERSION:
        return TokenRefused(Refusal.MALFORMED)
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, body)):
        return TokenRefused(Refusal.FORGED)
    _, issued_at, nonce = _HEAD.unpack_from(body)
    # surrogatepass: ``site_id`` comes from the request too, and may hold any code point.
    if body[_HEAD.size :] != site_id.encode("utf-8", "surrogatepass"):
        return TokenRefused(Refusal.OTHER_SITE)
    age = int(now) - issued_at
    if age < min_age_seconds:  # a token from the future (clock skew) is too young as well
        return TokenRefused(Refusal.TOO_YOUNG)
    if age > max_age_seconds:
        return TokenRefused(Refusal.EXPIRED)
    return TokenOk(nonce=nonce.hex(), issued_at=issued_at)


def _tag(key: bytes, body: bytes) -> bytes:
    # A copy of the keyed HMAC, where hmac.digest() would let go of the GIL for a 2 us hash:
    # in the relay's busy process, getting it back cost about 60 us (measured under cProfile).
    mac = _keyed(key).copy()
    mac.update(body)
    return mac.digest()[:_TAG_BYTES]


@functools.lru_cache(maxsize=4)  # one key per process (the server secret's), kept once
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def encode_token(raw: bytes) -> str:
    """Unpadded base64url: the text of a signed token (the unsubscribe link's too)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str, max_chars: int = _MAX_TOKEN_CHARS) -> bytes | None:
    """The token's bytes, or None when it is not the canonical unpadded base64url of any."""
    if len(token) > max_chars or not _BASE64URL.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # The last character may carry unused bits; only the encoding we issue is accepted.
    return raw if encode_token(raw) == token else None
