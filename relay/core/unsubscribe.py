"""The signed one-click unsubscribe token of a campaign message, and the headers that carry it.

A token is URL-safe base64 (no padding) of::

    version (1 byte) | contact id (8 bytes, big-endian) | campaign id (ASCII, the rest)
    | tag (16 bytes)

where the tag is HMAC-SHA256 over everything before it with a key derived from the server
secret for this one purpose (``form_token.derive_key(secret, b"unsubscribe")``), truncated to
128 bits. It never expires: RFC 8058 asks that the link keep working. `read` never raises on
any string, refuses input longer than a token can be before decoding it, and accepts only the
canonical encoding, so no two strings pass for one token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from relay.core.form_token import decode_token, encode_token
from relay.core.outbound_events import Event, EventType, message_event

_VERSION = 1
_HEAD = struct.Struct(">BQ")  # version, contact id
_TAG_BYTES = 16
_MAX_CAMPAIGN_ID_BYTES = 32
_MAX_TOKEN_CHARS = -(-(_HEAD.size + _MAX_CAMPAIGN_ID_BYTES + _TAG_BYTES) * 4 // 3)
_CAMPAIGN_ID = re.compile(rb"[A-Za-z0-9_-]{1,32}")

ONE_CLICK = "List-Unsubscribe=One-Click"  # the List-Unsubscribe-Post value (RFC 8058 section 3.1)


@dataclass(frozen=True)
class Unsubscribe:
    campaign_id: str
    contact_id: int


def issue(key: bytes, campaign_id: str, contact_id: int) -> str:
    """The token that unsubscribes contact ``contact_id`` (who got campaign ``campaign_id``)."""
    campaign = campaign_id.encode("ascii")
    if not _CAMPAIGN_ID.fullmatch(campaign) or not 0 <= contact_id < 2**63:
        raise ValueError("an unsubscribe token needs a campaign id and a contact id")
    body = _HEAD.pack(_VERSION, contact_id) + campaign
    return encode_token(body + _tag(key, body))


def read(key: bytes, token: str) -> Unsubscribe | None:
    """What ``token`` unsubscribes, or None when it is not one of ours, unaltered."""
    raw = decode_token(token, _MAX_TOKEN_CHARS)
    if raw is None or len(raw) <= _HEAD.size + _TAG_BYTES or raw[0] != _VERSION:
        return None
    body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, body)):
        return None
    _, contact_id = _HEAD.unpack_from(body)
    campaign = body[_HEAD.size :]
    if not _CAMPAIGN_ID.fullmatch(campaign):
        return None
    return Unsubscribe(campaign_id=campaign.decode("ascii"), contact_id=contact_id)


def headers(token: str, *, base_url: str, mailto: str | None) -> list[tuple[str, str]]:
    """List-Unsubscribe (https, and mailto when given) and List-Unsubscribe-Post (RFC 8058).

    ``base_url`` is the public HTTP listener's address as recipients reach it
    (``https://relay.example.com``); the POST goes to ``{base_url}/u/{token}``.
    """
    links = [f"<{base_url.rstrip('/')}/u/{token}>"]
    if mailto:
        links.append(f"<mailto:{mailto}?subject=unsubscribe%20{token}>")
    return [("List-Unsubscribe", ", ".join(links)), ("List-Unsubscribe-Post", ONE_CLICK)]


def unsubscribed_event(
    now: float,
    random_bytes: bytes,
    *,
    site: str,
    recipient: str,
    campaign_id: str,
    message_id: str | None,
) -> Event:
    """``message.unsubscribed``: ``recipient`` (a contact of ``site``) asked for no more campaign
    mail through the link of campaign ``campaign_id``'s message ``message_id`` (None when the
    campaign's row for them names no message)."""
    return message_event(
        EventType.UNSUBSCRIBED,
        now,
        random_bytes,
        message_id=message_id,
        site=site,
        recipient=recipient,
        campaign_id=campaign_id,
    )


def masked(address: str) -> str:
    """An address as the confirmation page shows it to whoever holds the link: the first
    character of the mailbox and the whole domain (``j***@example.com``), enough for its owner
    to recognise and too little to harvest from a forwarded link."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, hashlib.sha256)[:_TAG_BYTES]
