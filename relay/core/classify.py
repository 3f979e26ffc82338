"""What an upstream's answer means for each recipient: sent, retry elsewhere, or failed.

The one place that turns (stage, reply or transport error) into a decision,
as Postfix keeps its defer-or-bounce policy in smtp_trouble.c:

- a transport error (refused, reset, timeout, TLS) at any stage: retry;
- any reply before MAIL (greeting, EHLO, STARTTLS, AUTH), even 5xx: retry,
  because it says the upstream is unusable, not that the message is bad;
- MAIL: 4xx retry, 5xx fails every recipient;
- RCPT: per recipient, 4xx retry, 5xx fails that recipient;
- DATA: applies to the recipients the upstream accepted at RCPT;
- a 4xx about the mailbox itself (enhanced 4.2.x: full, busy) defers: another
  upstream would reach the same mailbox, so it waits for backoff instead.

"Retry" means the next upstream of the route at once, then backoff; "defer"
means backoff at once. A permanent failure with enhanced status 5.1.x (bad
address) or 5.2.1 (mailbox disabled) is a hard bounce: the site's
suppression list takes the address. Separately, ``upstream_failed`` says
whether an answer counts against the upstream's health (circuit breaker).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relay.core.model import SmtpReply


class Stage(enum.StrEnum):
    CONNECT = "connect"
    TLS = "tls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # next upstream now, backoff when none is left
    DEFER = "defer"  # backoff now
    FAILED = "failed"


@dataclass(frozen=True)
class TransactionResult:
    """Everything one upstream said to one transaction, as data."""

    stage: Stage  # the last stage reached
    reply: SmtpReply | None = None  # the reply that ended it (the DATA reply on success)
    recipient_replies: Mapping[str, SmtpReply] = field(default_factory=dict)
    transport_error: str | None = None  # refused, reset, timeout, TLS: no reply to judge

    @property
    def summary(self) -> str:
        if self.transport_error is not None:
            return f"{self.stage}: {self.transport_error}"
        return f"{self.stage}: {self.reply.render()}" if self.reply else str(self.stage)


@dataclass(frozen=True)
class RecipientOutcome:
    outcome: Outcome
    reply: SmtpReply | None
    detail: str


_BEFORE_MAIL = frozenset({Stage.CONNECT, Stage.TLS, Stage.AUTH})


def classify(result: TransactionResult, recipients: Sequence[str]) -> dict[str, RecipientOutcome]:
    retry = RecipientOutcome(Outcome.RETRY, result.reply, result.summary)
    if result.stage in _BEFORE_MAIL or (result.stage is Stage.MAIL and result.reply is None):
        return dict.fromkeys(recipients, retry)
    if result.stage is Stage.MAIL:
        assert result.reply is not None
        return dict.fromkeys(recipients, _judge(result.reply, result.summary))
    outcomes: dict[str, RecipientOutcome] = {}
    for recipient in recipients:
        rcpt_reply = result.recipient_replies.get(recipient)
        if rcpt_reply is not None and not rcpt_reply.is_success:
            # A refusal at RCPT stands even if the connection failed afterwards.
            outcomes[recipient] = _judge(rcpt_reply, f"rcpt: {rcpt_reply.render()}")
        elif rcpt_reply is None or result.stage is not Stage.DATA or result.reply is None:
            outcomes[recipient] = retry  # never reached, or no verdict on the message
        else:
            outcomes[recipient] = _judge(result.reply, result.summary)
    return outcomes


def _judge(reply: SmtpReply, detail: str) -> RecipientOutcome:
    if reply.is_success:
        return RecipientOutcome(Outcome.SENT, reply, detail)
    if reply.is_permanent:
        return RecipientOutcome(Outcome.FAILED, reply, detail)
    if (reply.enhanced or "").startswith("4.2."):
        return RecipientOutcome(Outcome.DEFER, reply, detail)
    return RecipientOutcome(Outcome.RETRY, reply, detail)


def is_hard_bounce(reply: SmtpReply | None) -> bool:
    """A permanent refusal of the address itself (RFC 3463: 5.1.x address, 5.2.1 disabled)."""
    if reply is None or not reply.is_permanent:
        return False
    enhanced = reply.enhanced or ""
    return enhanced.startswith("5.1.") or enhanced == "5.2.1"


def upstream_failed(result: TransactionResult) -> bool:
    """Did the upstream fail us (connect, TLS, AUTH, a dropped connection, 421)?

    Anything else -- even a refusal of the message -- shows the upstream works.
    """
    if result.stage in _BEFORE_MAIL or result.transport_error is not None:
        return True
    return result.reply is not None and result.reply.code == 421
