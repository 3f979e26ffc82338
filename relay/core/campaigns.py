"""Campaigns: what a request may ask, which status changes are allowed, pace, and references.

Decides:

- a campaign request's shape (``parse_campaign``): every problem listed with its path, as
  the send API does; the audience is ``"all"`` (the site's contacts) or ``{"tags": [...]}``
  (contacts with any of the tags);
- the lifecycle (``transition``): draft or scheduled -> in_progress (start, or a scheduled
  one's time comes) -> completed (every contact reached and no message left waiting), with
  pause/resume and cancel; anything else is refused with a sentence saying why;
- the variables a contact's message is rendered with (``variables``);
- pace (``Pace``): at most ``rate_per_minute`` messages generated per minute, a token bucket
  holding at most one second of tokens;
- the ETA from what remains and the rate, asked or measured (``eta_seconds``);
- a campaign attachment's reference: its base64 block in a stored message is replaced by a
  marker holding NUL bytes, which composed mail (7-bit, NUL-free) never holds, so splicing
  the exact block back gives the bytes that were signed, byte for byte.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.compose import attachment_base64
from relay.core.outbound_events import Event, EventType, event
from relay.core.send_request import Attachment, parse_attachments, shown, text_problem

MAX_NAME_CHARS = 200
MAX_TAGS = 50
MAX_TAG_CHARS = 64
MAX_RATE_PER_MINUTE = 1_000_000
MAX_PART_CHARS = 100_000  # as a saved template's parts
_KEYS = frozenset(
    {"site", "name", "template", "subject", "text", "html", "attachments", "audience"}
    | {"schedule_at", "rate_per_minute"}
)
_YEAR_10000 = 253_402_300_800.0
_DIGEST_CHARS = 16
_REFERENCE = re.compile(rb"\x00relay-attachment:([0-9]{1,18}):([0-9a-f]{16})\x00")
MIN_REFERENCED_BYTES = 1024  # a smaller attachment is stored in each message as it is


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class RecipientState(enum.StrEnum):
    QUEUED = "queued"  # its message waits for delivery
    SENT = "sent"
    FAILED = "failed"  # refused, expired, suppressed at delivery, or its render failed
    SKIPPED = "skipped"  # unsubscribed or suppressed when its turn came: no message
    CANCELLED = "cancelled"  # its message was still waiting when the campaign was cancelled


class Action(enum.StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


_S = CampaignStatus
_TRANSITIONS: dict[Action, tuple[frozenset[CampaignStatus], CampaignStatus]] = {
    Action.START: (frozenset({_S.DRAFT, _S.SCHEDULED}), _S.IN_PROGRESS),
    Action.PAUSE: (frozenset({_S.IN_PROGRESS, _S.SCHEDULED}), _S.PAUSED),
    Action.RESUME: (frozenset({_S.PAUSED}), _S.IN_PROGRESS),
    Action.CANCEL: (frozenset({_S.DRAFT, _S.SCHEDULED, _S.IN_PROGRESS, _S.PAUSED}), _S.CANCELLED),
}
FINAL = frozenset({_S.COMPLETED, _S.CANCELLED, _S.FAILED})
# A campaign may be deleted in these (one in progress or paused must be cancelled first).
DELETABLE = frozenset({_S.DRAFT, _S.SCHEDULED, *FINAL})


@dataclass(frozen=True)
class NotAllowed:
    reason: str


def transition(status: CampaignStatus, action: Action) -> CampaignStatus | NotAllowed:
    """The status ``action`` leads to from ``status``, or why it is not allowed."""
    allowed, target = _TRANSITIONS[action]
    if status in allowed:
        return target
    names = " or ".join(sorted(s.value for s in allowed))
    return NotAllowed(
        f"cannot {action.value} a campaign that is {status.value} (only one that is {names})"
    )


@dataclass(frozen=True)
class Audience:
    """Who a campaign reaches: the site's contacts with any of ``tags``; no tags: all of them."""

    tags: tuple[str, ...] = ()

    def to_json(self) -> Any:
        return {"tags": list(self.tags)} if self.tags else "all"

    @classmethod
    def from_json(cls, value: Any) -> Audience:
        if isinstance(value, dict):
            return cls(tuple(value.get("tags") or ()))
        return cls()


@dataclass(frozen=True)
class CampaignRequest:
    site_id: str
    name: str
    template: str | None
    subject: str | None
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    audience: Audience
    schedule_at: float | None
    rate_per_minute: int | None


def parse_campaign(
    body: Mapping[str, Any], *, max_attachment_bytes: int
) -> CampaignRequest | list[str]:
    """The request, or every problem (``"<path>: <what is wrong>"``)."""
    problems = [f"{shown(k)}: unknown key" for k in body if k not in _KEYS]
    site = _string(body, "site", problems, required=True, limit=64)
    name = _string(body, "name", problems, required=True, limit=MAX_NAME_CHARS)
    template = _string(body, "template", problems, required=False, limit=128)
    parts = {p: _part(body, p, problems) for p in ("subject", "text", "html")}
    if template is not None and any(v is not None for v in parts.values()):
        problems.append("template: give a template, or subject and text/html, not both")
    if template is None:
        if parts["subject"] is None:
            problems.append("subject: is required (unless a template is named)")
        if parts["text"] is None and parts["html"] is None:
            problems.append("text: text or html is required (unless a template is named)")
    attachments = parse_attachments(body.get("attachments"), (), problems)
    total = sum(len(a.content) for a in attachments)
    if total > max_attachment_bytes:
        problems.append(f"attachments: {total} bytes in all, more than {max_attachment_bytes}")
    audience = parse_audience(body.get("audience"), problems)
    schedule_at = parse_schedule(body.get("schedule_at"), problems)
    rate = body.get("rate_per_minute")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_RATE_PER_MINUTE
    ):
        problems.append(f"rate_per_minute: a whole number from 1 to {MAX_RATE_PER_MINUTE}")
        rate = None
    if problems:
        return problems
    assert site is not None and name is not None
    return CampaignRequest(
        site, name, template, parts["subject"], parts["text"], parts["html"],
        attachments, audience, schedule_at, rate,
    )  # fmt: skip


def parse_audience(value: Any, problems: list[str]) -> Audience:
    if value == "all":
        return Audience()
    if not isinstance(value, dict) or set(value) != {"tags"}:
        problems.append('audience: must be "all" or {"tags": ["...", ...]}')
        return Audience()
    tags = value["tags"]
    if not isinstance(tags, list) or not 1 <= len(tags) <= MAX_TAGS:
        problems.append(f"audience.tags: a list of 1 to {MAX_TAGS} tags")
        return Audience()
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
            problems.append(f"audience.tags[{index}]: a string of 1 to {MAX_TAG_CHARS} characters")
    return Audience(tuple(dict.fromkeys(t for t in tags if isinstance(t, str))))


def parse_schedule(value: Any, problems: list[str]) -> float | None:
    """UNIX seconds or ISO 8601 (UTC when no offset is given), as the admin API's other times."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=dt.UTC)
                seconds = moment.timestamp()
            except (ValueError, OverflowError):
                seconds = None
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds < _YEAR_10000:
        problems.append("schedule_at: ISO 8601 (2026-11-21T10:00:00Z) or UNIX seconds")
        return None
    return seconds


def variables(contact: Mapping[str, Any], unsubscribe_url: str) -> dict[str, Any]:
    """A contact's template variables: its attributes at the top level, then its own fields
    (which an attribute of the same name never hides), then ``unsubscribe_url``."""
    attributes = contact.get("attributes")
    found: dict[str, Any] = dict(attributes) if isinstance(attributes, dict) else {}
    for key in ("email", "first_name", "last_name", "company"):
        found[key] = contact.get(key) or ""
    found["unsubscribe_url"] = unsubscribe_url
    return found


class Pace:
    """A campaign's rate in this process: a token bucket of ``rate_per_minute`` that holds at
    most one second of tokens (at least one), so a pause or a lease taken over never bursts."""

    def __init__(self, rate_per_minute: int, now: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(self.rate, 1.0)
        self.tokens = 1.0
        self.at = now

    def available(self, now: float) -> int:
        self.tokens = min(self.capacity, self.tokens + max(now - self.at, 0.0) * self.rate)
        self.at = now
        return int(self.tokens)

    def take(self, count: int) -> None:
        self.tokens -= count

    def wait(self) -> float:
        """Seconds until the next token."""
        return max((1.0 - self.tokens) / self.rate, 0.0)


def eta_seconds(
    remaining: int, rate_per_minute: int | None, measured_per_minute: float | None
) -> int | None:
    """Seconds until the rest is sent at the slower of the asked and the measured rate;
    None when nothing is known to go by."""
    if remaining <= 0:
        return 0
    rates = [r for r in (rate_per_minute, measured_per_minute) if r]
    if not rates:
        return None
    return math.ceil(remaining / min(rates) * 60)


def measured_rate(sent: int, started_at: float | None, now: float) -> float | None:
    """Messages sent per minute since the start (None before a minute's worth of evidence)."""
    if started_at is None or sent <= 0 or now - started_at < 1.0:
        return None
    return sent / (now - started_at) * 60


# -- attachments by reference


Ref = tuple[int, str]  # (attachment id, digest of its encoded block)


def encoded_block(content: bytes) -> bytes:
    """An attachment's body exactly as ``core.compose`` writes it: base64, CRLF line ends."""
    return attachment_base64(content).encode("ascii").replace(b"\n", b"\r\n")


def block_digest(block: bytes) -> str:
    """Names a block beside its id: a cache shared by stores (or an id reused after a delete)
    can never put another attachment's bytes in its place."""
    return hashlib.sha256(block).hexdigest()[:_DIGEST_CHARS]


def reference(attachment_id: int, block: bytes) -> bytes:
    return b"\x00relay-attachment:%d:%s\x00" % (attachment_id, block_digest(block).encode())


def replace_blocks(content: bytes, blocks: Mapping[int, bytes]) -> bytes:
    """``content`` with each attachment's encoded block replaced by its reference."""
    for attachment_id, block in blocks.items():
        if len(block) >= MIN_REFERENCED_BYTES:
            content = content.replace(block, reference(attachment_id, block))
    return content


def referenced(content: bytes) -> set[Ref]:
    """The attachments ``content`` refers to (cheap when it refers to none)."""
    if b"\x00" not in content:
        return set()
    return {(int(m.group(1)), m.group(2).decode()) for m in _REFERENCE.finditer(content)}


def splice(content: bytes, blocks: Mapping[Ref, bytes]) -> bytes:
    """``content`` with every reference replaced by its block (an unknown one by nothing: its
    campaign was deleted)."""
    if b"\x00" not in content:
        return content
    return _REFERENCE.sub(
        lambda m: blocks.get((int(m.group(1)), m.group(2).decode()), b""), content
    )


def _string(
    body: Mapping[str, Any], key: str, problems: list[str], *, required: bool, limit: int
) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            problems.append(f"{key}: is required")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key}: must be a non-empty string")
        return None
    if problem := text_problem(value, header=True, limit=limit):
        problems.append(f"{key}: {problem}")
        return None
    return value


def _part(body: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: must be a string")
        return None
    if len(value) > MAX_PART_CHARS:
        problems.append(f"{key}: longer than {MAX_PART_CHARS} characters")
        return None
    return value


@dataclass(frozen=True)
class AttachmentInfo:
    id: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Campaign:
    """A campaign as the store holds it (the ``campaigns`` row, with its attachments' info)."""

    id: str
    site_id: str
    name: str
    status: CampaignStatus
    template: str | None
    subject: str | None
    text: str | None
    html: str | None
    audience: Audience
    rate_per_minute: int | None
    schedule_at: float | None
    cursor: int
    generated: bool
    total_contacts: int
    queued_count: int
    sent_count: int
    failed_count: int
    skipped_count: int
    lease_owner: str | None
    leased_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attachments: tuple[AttachmentInfo, ...] = ()

    @property
    def reached(self) -> int:
        """Contacts with a recipient row: queued, sent, failed or skipped."""
        return self.queued_count + self.sent_count + self.failed_count + self.skipped_count


def finished_event(
    campaign: Campaign, status: CampaignStatus, now: float, random_bytes: bytes
) -> Event:
    """``campaign.finished``: the campaign completed (or was cancelled), with its counts."""
    return event(
        EventType.CAMPAIGN_FINISHED,
        now,
        random_bytes,
        campaign_id=campaign.id,
        site=campaign.site_id,
        name=campaign.name,
        status=status.value,
        total_contacts=campaign.total_contacts,
        queued_count=campaign.queued_count,
        sent_count=campaign.sent_count,
        failed_count=campaign.failed_count,
        skipped_count=campaign.skipped_count,
    )
