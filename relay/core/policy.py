"""Who may send what: the ingress decisions, as verdict values.

Every check answers ``Accept``, ``Reject(reply)`` (permanent, 5xx) or
``TempFail(reply)`` (4xx: the client should retry). Only the SMTP view turns
a reply into text on the wire.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from relay.core.addresses import is_address, sender_matches
from relay.core.directory import Directory
from relay.core.headers import Fields, decoded_text, first, header_block_fits
from relay.core.model import Credential, MessageClass, Site, SmtpReply
from relay.core.quota import OverLimit

NULL_SENDER = "<>"


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class Reject:
    reply: SmtpReply


@dataclass(frozen=True)
class TempFail:
    reply: SmtpReply
    retry_after: int | None = None  # seconds, when the relay knows (HTTP's Retry-After)


Verdict = Accept | Reject | TempFail
ACCEPT = Accept()

# RFC 4954 section 6 and RFC 3463 for the enhanced codes.
AUTH_REQUIRED = Reject(SmtpReply(530, "5.7.0 Authentication required"))
AUTH_INVALID = SmtpReply(535, "5.7.8 Authentication credentials invalid")
AUTH_THROTTLED = SmtpReply(454, "4.7.0 Too many failed authentication attempts; try again later")
AUTH_BUSY = SmtpReply(454, "4.7.0 Too many authentications in progress; try again shortly")
AUTH_LINE_TOO_LONG = SmtpReply(500, "5.5.6 Authentication Exchange line is too long")
AUTH_SUCCEEDED = SmtpReply(235, "2.7.0 Authentication successful")
LOCAL_ERROR = TempFail(SmtpReply(451, "4.3.0 Local error in processing; try again later"))
BARE_LINE_ENDING = Reject(
    SmtpReply(
        554, "5.6.0 Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)"
    )
)


def has_only_crlf(content: bytes) -> bool:
    """No bare CR and no bare LF: every CR and every LF is part of a CRLF pair.

    Three counts run in C; a regex with look-around cost 2 ms per 50 KB.
    """
    pairs = content.count(b"\r\n")
    return content.count(b"\r") == pairs and content.count(b"\n") == pairs


@dataclass(frozen=True)
class SessionFacts:
    """What the session has established before MAIL."""

    site_id: str | None  # from AUTH
    trusted: bool  # client address in the listener's trusted_networks
    credential: Credential | None = None  # what AUTH verified, checked again at every MAIL


def identify_site(facts: SessionFacts, sender: str, directory: Directory) -> Site | Reject:
    """The site a transaction belongs to, or why it may not send at all.

    Never an open relay: a session that neither authenticated nor comes from
    a trusted network is refused whatever the addresses are.
    """
    if facts.credential is not None and directory.credential(facts.credential.username) != (
        facts.credential
    ):
        return credential_revoked(facts.credential.username)
    if facts.site_id is not None:
        site = directory.site(facts.site_id)
        if site is None:  # the credential's site was removed by a reload
            return AUTH_REQUIRED
        if site.senders and not sender_matches(sender, site.senders):
            return Reject(
                SmtpReply(550, f"5.7.1 Sender <{_shown(sender)}> not allowed for site {site.id}")
            )
        return site
    if not facts.trusted:
        return AUTH_REQUIRED
    site = directory.site_for_sender(sender) if sender != NULL_SENDER else None
    if site is None:
        return Reject(
            SmtpReply(550, f"5.7.1 Sender <{_shown(sender)}> belongs to no site on this relay")
        )
    return site


def credential_revoked(username: str) -> Reject:
    """The session's credential was removed or its password changed since AUTH."""
    return Reject(
        SmtpReply(530, f"5.7.0 Credential {username} was removed or changed; authenticate again")
    )


def check_sender_syntax(sender: str) -> Verdict:
    if sender == NULL_SENDER or is_address(sender):
        return ACCEPT
    return Reject(SmtpReply(553, f"5.1.7 Sender address <{_shown(sender)}> is not a valid address"))


def check_recipient(address: str, accepted_so_far: int, max_recipients: int) -> Verdict:
    if accepted_so_far >= max_recipients:
        # RFC 5321 section 4.5.3.1.10: 452 lets the client send the rest later.
        return TempFail(SmtpReply(452, f"4.5.3 Too many recipients (at most {max_recipients})"))
    if not is_address(address):
        return Reject(
            SmtpReply(
                553,
                f"5.1.3 Recipient <{_shown(address)}> is not a valid address (no routing syntax)",
            )
        )
    return ACCEPT


SUPPRESSION_LOOKUP_FAILED = TempFail(
    SmtpReply(451, "4.3.0 Recipient could not be checked; try again later")
)
_MAX_REASON_CHARS = 200  # a reply line is at most 512 octets (RFC 5321 4.5.3.1.5)


def suppressed_recipient(address: str, reason: str) -> Reject:
    """RCPT of an address on the site's suppression list. 550 with 5.1.1 (RFC 3463: bad
    destination mailbox), as the hard bounce that usually put it there said."""
    why = " ".join(_shown(reason).split())
    if len(why) > _MAX_REASON_CHARS:
        why = why[: _MAX_REASON_CHARS - 3] + "..."
    return Reject(
        SmtpReply(550, f"5.1.1 <{_shown(address)}>: recipient is suppressed for this site ({why})")
    )


def _shown(address: str) -> str:
    """An address as a reply may quote it: replies are printable ASCII (RFC 5321 4.2)."""
    return re.sub(r"[^\x20-\x7e]", "?", address)


def check_content(content: bytes, max_bytes: int) -> Verdict:
    if len(content) > max_bytes:
        return Reject(SmtpReply(552, f"5.3.4 Message too big (at most {max_bytes} bytes)"))
    if not has_only_crlf(content):
        return BARE_LINE_ENDING
    return ACCEPT


def check_header_size(content: bytes, max_bytes: int) -> Verdict:
    """The header block is what every header pass reads: its size bounds their cost."""
    if header_block_fits(content, max_bytes):
        return ACCEPT
    # RFC 3463 5.3.4: message too big for system (here: its header block).
    return Reject(SmtpReply(552, f"5.3.4 Header block too big (at most {max_bytes} bytes)"))


def site_over_limit(site: Site, over: OverLimit, now: float) -> TempFail:
    """4xx: the client's cue to retry later (RFC 3463 4.7.1: delivery not authorized, yet)."""
    wait = max(math.ceil(over.reopens_at - now), 1)
    return TempFail(
        SmtpReply(
            451, f"4.7.1 Site {site.id} is {over.describe('messages')}; try again in {wait} s"
        ),
        retry_after=wait,
    )


def message_class(fields: Fields, header: str, site: Site) -> MessageClass | Reject:
    """The class the message asks for in ``header``, else the site's."""
    field = first(fields, header.lower())
    if field is None:
        return site.message_class
    value = decoded_text(field.value).strip().lower()
    try:
        return MessageClass(value)
    except ValueError:
        allowed = " or ".join(c.value for c in MessageClass)
        shown = re.sub(r"[^\x20-\x7e]", "?", value[:40])  # replies are ASCII, one line
        return Reject(SmtpReply(550, f"5.6.0 {header} must be {allowed}, not '{shown}'"))
