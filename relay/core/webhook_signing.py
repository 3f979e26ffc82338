"""Standard Webhooks signatures: the secret's form, and the header a receiver checks.

A secret is ``whsec_`` and the base64 of 24 to 64 random bytes (the spec's
range; we make 32). The signature of one try is ``v1,`` and the base64 of
HMAC-SHA256 over ``"{webhook-id}.{webhook-timestamp}.{body}"`` keyed with the
decoded bytes, sent as ``webhook-signature`` beside ``webhook-id`` (the event's
id, the same on every try, so a receiver can drop duplicates) and
``webhook-timestamp`` (whole UNIX seconds of this try; receivers refuse old ones).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


class BadSecret(ValueError):
    """Not a ``whsec_`` secret; the message says what is wrong."""


def new_secret(random_bytes: bytes) -> str:
    """A secret from ``random_bytes`` (give SECRET_BYTES of them, from ``secrets``)."""
    if not MIN_SECRET_BYTES <= len(random_bytes) <= MAX_SECRET_BYTES:
        raise BadSecret(f"a secret takes {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes")
    return PREFIX + base64.b64encode(random_bytes).decode("ascii")


def parse_secret(text: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (padding optional), or BadSecret saying why."""
    if not text.startswith(PREFIX):
        raise BadSecret("must start with whsec_ (whsec_ and the base64 of 24 to 64 random bytes)")
    encoded = text[len(PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadSecret("the part after whsec_ is not base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise BadSecret(
            f"the part after whsec_ must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} "
            f"bytes (it has {len(key)})"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value of one try."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }
