"""What every provider verifier answers: normalised events, or a refusal with its reason.

A verifier never raises on input: a body of the wrong size, encoding, JSON or shape is a
`Refused(MALFORMED)`. The cost of looking at a body is linear in its length: it is refused
before parsing when longer than `MAX_BODY_BYTES`, JSON nesting deeper than the parser's
recursion limit is a refusal (Python's ``json`` raises RecursionError there), strings kept
in an event are cut to `MAX_TEXT_CHARS`, and patterns only ever run on such cut strings.

`ProviderEvent.recipient` is lower-cased; `message_id` is our Message-ID as the provider
echoed it, without the angle brackets of RFC 5322 section 3.6.4 ``msg-id``.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.addresses import is_address
from relay.core.model import SmtpReply

# SendGrid posts a batch when it reaches 768 KB; SNS messages are at most 256 KB before escaping.
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 1000
_MAX_ID_CHARS = 256
# RFC 3464 section 2.3.6: Diagnostic-Code is "diagnostic-type; text", e.g. "smtp; 550 5.1.1 ...".
_DIAGNOSTIC_TYPE = re.compile(r"\s*smtp\s*;\s*", re.IGNORECASE)
_REPLY = re.compile(r"([2-5][0-9][0-9])(?:[ -]+(.*))?", re.DOTALL)


class Provider(enum.StrEnum):
    """The values of ``upstreams[].events``."""

    SES = "ses"
    MAILGUN = "mailgun"
    SENDGRID = "sendgrid"
    POSTMARK = "postmark"


class EventKind(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # the provider will try again
    BOUNCED_HARD = "bounced_hard"  # the address does not take mail: suppress it
    BOUNCED_SOFT = "bounced_soft"  # not delivered, for a reason that may pass
    DROPPED = "dropped"  # the provider did not try (its own suppression list, policy)
    COMPLAINED = "complained"  # the recipient reported the message as spam: suppress


class Refusal(enum.StrEnum):
    MALFORMED = "malformed"  # size, encoding, JSON or shape
    BAD_SIGNATURE = "bad_signature"  # signature absent, undecodable, or not ours
    BAD_CREDENTIALS = "bad_credentials"  # Postmark: basic-auth absent or wrong
    STALE_TIMESTAMP = "stale_timestamp"  # outside the replay window
    CERT_URL_REFUSED = "cert_url_refused"  # SNS: SigningCertURL is not an SNS host
    BAD_CERTIFICATE = "bad_certificate"  # SNS: the fetched certificate is not an RSA cert
    UNEXPECTED_TOPIC = "unexpected_topic"  # SNS: TopicArn not among the configured ones
    # A type the provider never documented. Given after authentication, except for an SNS
    # envelope's Type: without a known type there is no known string to sign.
    UNKNOWN_TYPE = "unknown_type"


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    detail: str  # short and safe to log: never a secret, a signature or body text


@dataclass(frozen=True)
class ProviderEvent:
    provider: Provider
    kind: EventKind
    recipient: str
    raw_type: str  # the provider's own name, e.g. "Bounce/Permanent", "failed/temporary"
    provider_message_id: str | None = None  # the upstream's queue id (its 250 reply)
    message_id: str | None = None  # our Message-ID, when the provider echoes headers
    occurred_at: dt.datetime | None = None  # aware; None when the provider gave none we read
    reply: SmtpReply | None = None  # the receiving server's reply, when given
    status: str | None = None  # RFC 3463 enhanced status, when given on its own
    diagnostic: str | None = None  # the provider's text about it, as given (cut)
    provider_event_id: str | None = None

    @property
    def suppresses(self) -> bool:
        """Hard bounces and complaints put the recipient on the site's suppression list."""
        return self.kind in (EventKind.BOUNCED_HARD, EventKind.COMPLAINED)


@dataclass(frozen=True)
class Accepted:
    events: tuple[ProviderEvent, ...]
    ignored: tuple[str, ...] = ()  # authenticated types we do not map (opens, clicks, ...)
    # What the caller records to refuse the same request twice (see each provider's module).
    replay_key: str | None = None


Verdict = Accepted | Refused


class Malformed(Exception):
    """Inside a verifier only: the input has the wrong shape. Caught at the module's edge."""


def load_json(body: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Parse a body; Malformed when too long, not UTF-8, not JSON, too deep, or NaN/Infinity."""
    if len(body) > max_bytes:
        raise Malformed(f"body longer than {max_bytes} bytes")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise Malformed(f"not JSON: {type(error).__name__}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not an object")
    return value


def items(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed(f"{what} is not a list")
    return value


def text(parent: Mapping[str, Any], key: str, *, limit: int = _MAX_ID_CHARS) -> str:
    """A required string field, at most ``limit`` characters."""
    value = parent.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Malformed(f"{key} is not a string of 1 to {limit} characters")
    return value


def optional_text(parent: Mapping[str, Any], key: str, *, cut: int = _MAX_ID_CHARS) -> str | None:
    """An optional string field; other types count as absent, long strings are cut."""
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        return None
    return value[:cut]


def recipient(value: Any) -> str:
    if not isinstance(value, str) or not is_address(value.strip()):
        raise Malformed("recipient is not an address")
    return value.strip().lower()


def msg_id(value: str | None) -> str | None:
    """RFC 5322 ``msg-id`` without its angle brackets and folding whitespace."""
    if value is None:
        return None
    stripped = value[:_MAX_ID_CHARS].strip().removeprefix("<").removesuffix(">").strip()
    return stripped or None


def timestamp(value: Any) -> dt.datetime | None:
    """An ISO 8601 time (aware), or Unix seconds; None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (ValueError, OverflowError, OSError):
            return None
    if isinstance(value, str) and len(value) <= 40:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    return None


def parse_reply(value: str | None) -> SmtpReply | None:
    """An SMTP reply from a provider's text: "250 OK", "smtp; 550 5.1.1 no such user"."""
    if value is None:
        return None
    head = value[:MAX_TEXT_CHARS]
    found = _DIAGNOSTIC_TYPE.match(head)
    if found:
        head = head[found.end() :]
    match = _REPLY.fullmatch(head.strip())
    if match is None:
        return None
    return SmtpReply(int(match.group(1)), " ".join((match.group(2) or "").split()))


def reply_from(code: Any, message: str | None) -> SmtpReply | None:
    """An SMTP reply from a numeric code and a text given apart (Mailgun's delivery-status)."""
    if isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599:
        return None
    return SmtpReply(code, " ".join((message or "").split()))


def accepted_or_refused(build: Callable[[], Verdict]) -> Verdict:
    """Run a mapping; a Malformed it raises is the refusal."""
    try:
        result = build()
    except Malformed as error:
        return Refused(Refusal.MALFORMED, str(error))
    return result
