"""Value objects shared by every layer: sites, upstreams, replies, messages.

All are frozen: the configuration is parsed once into them, and a reload
builds new ones rather than mutating the old.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Secret:
    """A secret string whose repr never shows it (logs, tracebacks, debuggers)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TlsMode(enum.StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class AuthMode(enum.StrEnum):
    REQUIRED = "required"  # every session must AUTH
    OPTIONAL = "optional"  # AUTH offered; trusted networks may skip it
    NONE = "none"  # no AUTH; only trusted networks may send


class UpstreamKind(enum.StrEnum):
    SMTP = "smtp"
    FILE = "file"


class Strategy(enum.StrEnum):
    """How a route orders its candidate upstreams."""

    PRIORITY = "priority"  # the site's list in order, else by `priority`
    COST = "cost"  # cheapest `cost_per_1000` first
    WEIGHTED = "weighted"  # random order, each upstream first in proportion to `weight`
    PERFORMANCE = "performance"  # best measured success rate and attempt time first


class MessageClass(enum.StrEnum):
    TRANSACTIONAL = "transactional"
    BULK = "bulk"


class ReplyTo(enum.StrEnum):
    ORIGINAL = "original"
    NONE = "none"
    ADDRESS = "address"


@dataclass(frozen=True)
class Credential:
    username: str
    password_hash: str
    site_id: str


@dataclass(frozen=True)
class ApiKey:
    """A site's key for the send API, kept as its hash (``relay.core.tokens``)."""

    name: str
    key_hash: str  # sha256:<64 hex digits>
    site_id: str
    expires_at: float | None = None  # Unix seconds; past it the key is refused


@dataclass(frozen=True)
class FormSettings:
    """A site's landing-page form (``POST /api/send-inquiry``): where its mail goes, and how
    strangers' posts are told from bots and floods."""

    to: tuple[str, ...]  # fixed recipients: a post never chooses them
    allowed_origins: tuple[str, ...] = ()  # scheme://host[:port], lower case
    template: str | None = None  # None: a plain listing of the fields
    required: tuple[str, ...] = ()
    reply_to_field: str | None = None  # the visitor's address becomes Reply-To
    honeypot_field: str | None = None  # must arrive, and empty
    min_fill_seconds: int = 3  # a form token younger than this is a bot's
    rate_per_minute_per_ip: int = 5
    redirect: str | None = None  # 303 target for plain HTML posts


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    from_email: str
    from_name: str | None = None
    reply_to: ReplyTo = ReplyTo.ORIGINAL
    reply_to_address: str | None = None  # when reply_to is ADDRESS
    senders: tuple[str, ...] = ()  # fnmatch patterns, lower case
    upstreams: tuple[str, ...] = ()  # ordered failover list; empty = all active
    bounce_address: str | None = None  # envelope MAIL FROM; defaults to from_email
    rate_per_minute: int | None = None
    daily_limit: int | None = None
    monthly_limit: int | None = None
    strategy: Strategy | None = None  # None: the class's, else routing.strategy
    message_class: MessageClass = MessageClass.TRANSACTIONAL  # unless a message says otherwise
    form: FormSettings | None = None  # a landing-page form posts to the HTTP ingress
    managed_by_file: bool = True

    @property
    def envelope_sender(self) -> str:
        return self.bounce_address or self.from_email


@dataclass(frozen=True)
class UpstreamEvents:
    """``upstreams[].events``: the provider that reports this upstream's bounces, complaints
    and deliveries to ``POST /api/v1/provider-events/{upstream}``, and what verifies them."""

    provider: str  # ses | mailgun | sendgrid | postmark (core.providers.model.Provider)
    key: Secret | None = None  # Mailgun's signing key; SendGrid's verification key (base64 DER)
    username: str | None = None  # Postmark's basic-auth user name
    password: Secret | None = None  # Postmark's basic-auth password
    topics: tuple[str, ...] = ()  # SES: the SNS topic ARNs taken; empty: any


@dataclass(frozen=True)
class Upstream:
    name: str
    kind: UpstreamKind
    host: str | None = None
    port: int | None = None
    tls: TlsMode = TlsMode.STARTTLS
    verify_tls: bool = True
    ca_file: str | None = None  # trust this CA bundle instead of the system's
    username: str | None = None
    password: Secret | None = None
    allow_plaintext_auth: bool = False  # the file's explicit choice to send a password without TLS
    path: str | None = None  # kind: file
    priority: int = 100
    active: bool = True
    rate_per_minute: int | None = None
    daily_limit: int | None = None
    monthly_limit: int | None = None
    max_connections: int = 4
    timeout_seconds: float = 60.0
    cost_per_1000: float | None = None  # for `strategy: cost`; unknown cost sorts last
    weight: int = 1  # for `strategy: weighted`
    spf_include: tuple[str, ...] = ()  # what a sender's SPF must include for this upstream
    events: UpstreamEvents | None = None  # provider events in (relay/config_events.py)
    managed_by_file: bool = True


_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class SmtpReply:
    """One SMTP reply: code, and text that may start with an enhanced status (RFC 3463)."""

    code: int
    text: str

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.text)
        return match.group(1) if match else None

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def render(self) -> str:
        """The reply as one SMTP line (multi-line texts are joined)."""
        return f"{self.code} {' '.join(self.text.split())}"


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first or next attempt
    HELD = "held"  # kept out of delivery by an operator until released
    DEFERRED = "deferred"  # tried, temporary failure, waiting for backoff
    SENT = "sent"  # every recipient accepted by an upstream
    FAILED = "failed"  # every recipient failed permanently
    PARTIAL = "partial"  # final: some recipients sent, some failed


class RecipientStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class NewMessage:
    """A message accepted at ingress, rewritten, ready to be stored."""

    id: str
    site_id: str
    username: str | None
    client_ip: str
    original_sender: str
    envelope_sender: str
    recipients: tuple[str, ...]
    content: bytes
    original_headers: bytes
    subject: str
    created_at: float
    message_class: MessageClass = MessageClass.TRANSACTIONAL
    lease: tuple[str, float] | None = None  # (owner, until): stored already claimed by delivery
    campaign_id: str | None = None  # a campaign's: ``content`` may hold attachment references
    size: int | None = None  # the size as delivered, when ``content`` holds references


@dataclass(frozen=True)
class QueuedMessage:
    """A claimed message as the delivery worker sees it."""

    id: str
    site_id: str
    envelope_sender: str
    pending_recipients: tuple[str, ...]
    content: bytes
    created_at: float
    attempt_count: int
    original_sender: str = ""  # the site's MAIL FROM: where a DSN goes ("" = none)
    message_class: MessageClass = MessageClass.TRANSACTIONAL
    delay_notified: bool = False
    suppressed: dict[str, str] = field(default_factory=dict)  # recipient -> why
    campaign_id: str | None = None  # a campaign's message (its attachments spliced back in)


@dataclass(frozen=True)
class Attempt:
    """One try to hand a message to one upstream."""

    upstream: str
    started_at: float
    duration: float
    reply: SmtpReply | None
    outcome: str
    recipients: tuple[str, ...] = field(default=())
    detail: str = ""  # e.g. "connect: connection refused", "rcpt: 550 5.1.1 no such user"
    route: str = ""  # the route it was part of, with why other upstreams were skipped
