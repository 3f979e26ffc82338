"""Accepting mail: identify the site, rewrite, and queue durably.

Callable without aiosmtpd (the HTTP ingestion of a later issue uses the same
path). ``accept`` answers only after the message and its recipients are
committed: the caller may then say 250, and a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, overload

from relay.config import LimitsConfig
from relay.core import dkim, headers, message_events
from relay.core.addresses import domain_of
from relay.core.compose import Composed
from relay.core.directory import Directory
from relay.core.dkim import SigningKey
from relay.core.fingerprint import fingerprint
from relay.core.ids import new_message_id
from relay.core.model import MessageClass, NewMessage, Site, SmtpReply
from relay.core.outbound_events import EventType, OutboxEntry, Subscriptions
from relay.core.policy import (
    LOCAL_ERROR,
    Accept,
    Reject,
    SessionFacts,
    TempFail,
    Verdict,
    check_content,
    check_header_size,
    check_recipient,
    check_sender_syntax,
    identify_site,
    message_class,
    site_over_limit,
    suppressed_recipient,
)
from relay.core.policy_hooks import DataFacts, header_pairs
from relay.core.quota import Claim, OverLimit
from relay.fingerprint_database import Fingerprint
from relay.form_database import FormGate
from relay.idempotency_database import Answer
from relay.ingress_activity import IngressActivity
from relay.metrics import Metrics
from relay.outbox_database import add_to_outbox
from relay.policy_hooks_controller import PolicyHooks
from relay.queue_database import Admission, Admitted, admit_messages
from relay.store import GroupWriter
from relay.suppression_controller import SuppressionController
from relay.usage_controller import UsageController

log = logging.getLogger(__name__)
# Up to this size an unsigned message is rewritten on the event loop: at most a few ms
# even when it is all header, while a thread hand-off costs about as much CPU as the
# rewrite of a 2 KB message (70 us against 60 us: 5 % of a message's CPU here).
_ON_LOOP_BYTES = 65_536


@dataclass(frozen=True)
class Queued:
    message_id: str

    @property
    def reply(self) -> SmtpReply:
        return SmtpReply(250, f"2.0.0 queued as {self.message_id}")


@dataclass(frozen=True)
class Barred:
    """A form post its gate kept out (nothing stored, its token not spent unless it was used
    before): the limit on its client that refused it, or None when its token was used."""

    over: OverLimit | None


@dataclass(frozen=True)
class Submission:
    """One transaction as the ingress saw it, whatever the protocol."""

    site: Site
    username: str | None
    client_ip: str
    helo: str
    protocol: str  # for Received: ESMTP, ESMTPS, ESMTPSA (RFC 3848)
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    via: str = "smtp"  # smtp, api or form: in message.accepted
    added: tuple[headers.HeaderField, ...] = ()  # by the policy's on_data


class Handover(Protocol):
    """Where stored messages go: delivery (relay.delivery_controller.DeliveryController)."""

    def reserve(
        self, now: float, message_class: MessageClass = MessageClass.TRANSACTIONAL
    ) -> tuple[str, float] | None:
        """A delivery slot for a message about to be stored: its lease, or None when busy
        (bulk mail: when its share of the slots is busy)."""

    def hand_over(
        self, message: NewMessage, stored: bool, suppressed: Mapping[str, str] = {}
    ) -> None:
        """The message is stored (deliver it, or find it in the queue) or not (free its slot).

        ``suppressed``: its recipients on the site's suppression list, read when it was stored.
        """


class IngressController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        hostname: str,
        limits: LimitsConfig,
        metrics: Metrics,
        usage: UsageController,
        delivery: Handover,
        class_header: str = "X-Relay-Class",
        clock: Callable[[], float] = time.time,
        suppressions: SuppressionController | None = None,
        subscriptions: Callable[[], Subscriptions] = Subscriptions,
        outbox_written: Callable[[], None] = lambda: None,
        policy: PolicyHooks | None = None,
    ) -> None:
        self._policy = policy
        self.activity = IngressActivity()  # accepts under way in this process
        self._writer = writer
        self._subscriptions = subscriptions  # the webhooks' filters
        self._outbox_written = outbox_written  # the webhooks' worker: send them now
        self._suppressions = suppressions
        self._usage = usage
        self._class_header = class_header
        self._directory = directory
        self._hostname = hostname
        self._limits = limits
        self._metrics = metrics
        self._delivery = delivery
        self._clock = clock

    def begin(self, facts: SessionFacts, sender: str) -> Site | Reject | TempFail:
        """MAIL FROM: which site this transaction belongs to, or why not.

        Identification comes first: a client that may not send at all gets 530
        whatever the address, and learns nothing about our syntax rules.
        """
        site = identify_site(facts, sender, self._directory())
        if isinstance(site, Reject):
            return site
        verdict = check_sender_syntax(sender)
        if isinstance(verdict, Reject):
            return verdict
        return self._check_site_limits(site) or site

    def _check_site_limits(self, site: Site) -> TempFail | None:
        over = self._usage.site_over(site)
        return None if over is None else self._refused(site, over)

    def _refused(self, site: Site, over: OverLimit) -> TempFail:
        self._metrics.quota_refusals.labels(site.id, over.window.value).inc()
        log.warning("site %s: refused, %s", site.id, over.describe("messages"))
        return site_over_limit(site, over, self._clock())

    def _stored_meanwhile(
        self, message: NewMessage, claim: Claim | None, done: asyncio.Future[Any]
    ) -> None:
        """The client left during the commit: deliver what was stored all the same."""
        admitted: Admitted | None = None if done.cancelled() or done.exception() else done.result()
        if admitted is None:
            self._delivery.hand_over(message, stored=False)
            return
        if claim is not None and admitted.verdict is not None:
            self._usage.settle(claim, admitted.verdict)
        self._delivery.hand_over(message, admitted.stored, admitted.suppressed)

    async def add_recipient(self, site: Site, address: str, accepted_so_far: int) -> Verdict:
        """RCPT TO: syntax and count, then the site's suppression list (a store lookup)."""
        verdict = check_recipient(address, accepted_so_far, self._limits.max_recipients)
        if not isinstance(verdict, Accept) or self._suppressions is None:
            return verdict
        reason = await self._suppressions.check(site.id, address)
        if reason is None:
            return verdict
        if isinstance(reason, TempFail):
            return reason
        self._metrics.suppressed_recipients.labels(site.id, "smtp").inc()
        log.info("site %s rcpt %s: refused, suppressed", site.id, address)
        await self.report_suppressed(site.id, {address: reason}, "smtp")
        return suppressed_recipient(address, reason)

    async def report_suppressed(self, site_id: str, reasons: Mapping[str, str], via: str) -> None:
        """``message.suppressed`` for recipients refused before a message existed (RCPT, the
        send API), in a transaction of its own: there is no change to go with."""
        subscriptions = self._subscriptions()
        if not subscriptions.wants_any(EventType.SUPPRESSED):
            return
        now = self._clock()
        entries = subscriptions.fan_out(
            message_events.suppressed_at_ingress(site_id, address, reason, via, now, os.urandom)
            for address, reason in reasons.items()
        )
        try:
            await self._writer.write_sync(partial(add_to_outbox, entries=entries))
        except Exception as error:  # the refusal stands; only its report is lost
            log.warning("site %s: message.suppressed not recorded: %s", site_id, error)
            return
        self._outbox_written()

    async def accept(
        self, submission: Submission, answer: Callable[[str], Answer] | None = None
    ) -> Queued | Reject | TempFail:
        """``answer``: the Idempotency-Key answer for the message's id (the send API's), stored
        in the transaction that stores the message."""
        return await self._accept(submission, answer, None)

    @overload
    async def _accept(
        self, submission: Submission, answer: Callable[[str], Answer] | None, gate: None
    ) -> Queued | Reject | TempFail: ...

    @overload
    async def _accept(
        self, submission: Submission, answer: Callable[[str], Answer] | None, gate: FormGate
    ) -> Queued | Reject | TempFail | Barred: ...

    async def _accept(
        self,
        submission: Submission,
        answer: Callable[[str], Answer] | None,
        gate: FormGate | None,
    ) -> Queued | Reject | TempFail | Barred:
        """``gate``: a form post's, passed in the transaction that stores the message."""
        with self.activity:  # campaign generation steps aside meanwhile
            return await self._admit(submission, answer, gate)

    async def _admit(
        self,
        submission: Submission,
        answer: Callable[[str], Answer] | None,
        gate: FormGate | None,
    ) -> Queued | Reject | TempFail | Barred:
        unfit = self._refused_content(submission.content)
        if unfit is not None:
            return unfit
        if self._policy is not None and self._policy.on_data is not None:
            added = await self._policy.check_data(_data_facts(submission))
            if isinstance(added, Reject | TempFail):
                return added
            if isinstance(added, tuple):
                submission = replace(submission, added=added)
        key = self._directory().signing_key(domain_of(submission.site.from_email))
        if key is None and len(submission.content) <= _ON_LOOP_BYTES:
            prepared = self._prepare(submission, key)
        else:  # one hand-off for the rewrite and the signature (OpenSSL runs without the GIL)
            prepared = await asyncio.to_thread(self._prepare, submission, key)
        if isinstance(prepared, Reject):
            return prepared
        message, retry_print = prepared
        # Checked again on the cache (cheap): other sessions may have used the last messages.
        over = self._check_site_limits(submission.site)
        if over is not None:
            return over
        # The store counts the message in the transaction that stores it, or refuses it.
        claim = self._usage.claim_for(submission.site, 1, message.created_at)
        # With a free delivery slot the message is stored already leased and handed over:
        # delivery starts without looking for it in the queue.
        lease = self._delivery.reserve(message.created_at, message.message_class)
        message = replace(message, lease=lease)
        admission = Admission(
            message,
            claim,
            answer(message.id) if answer else None,
            gate,
            self._accepted_events(message, submission.via),
            self._fingerprint(message, retry_print),
        )
        stored = asyncio.ensure_future(self._writer.write_item(admit_messages, admission))
        try:
            # Shielded: a client that hangs up during the commit does not undo it, and the
            # message still goes to delivery once stored (it was never answered 250, so the
            # client may send it again: at least once).
            admitted: Admitted = await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(lambda f: self._stored_meanwhile(message, claim, f))
            raise
        except Exception:
            self._delivery.hand_over(message, stored=False)
            log.exception("message %s site %s: could not be stored", message.id, message.site_id)
            return LOCAL_ERROR
        if admitted.gate is False or isinstance(admitted.gate, OverLimit):  # kept out by it
            self._delivery.hand_over(message, stored=False)
            return Barred(admitted.gate if isinstance(admitted.gate, OverLimit) else None)
        if admitted.duplicate_of is not None:  # a retry: answered as the first was
            self._delivery.hand_over(message, stored=False)
            self._metrics.smtp_duplicates.labels(message.site_id).inc()
            log.info(
                "message %s site %s: a retry of message %s from %s, not queued again",
                message.id,
                message.site_id,
                admitted.duplicate_of,
                submission.client_ip,
            )
            return Queued(admitted.duplicate_of)
        refused = None
        if claim is not None and admitted.verdict is not None:
            refused = self._usage.settle(claim, admitted.verdict)
        if refused is not None:  # nothing stored: another process took the last messages
            self._delivery.hand_over(message, stored=False)
            return self._refused(submission.site, refused)
        self._metrics.accepted.labels(message.site_id).inc()
        if admission.outbox:
            self._outbox_written()
        log.info(
            "message %s site %s: queued from %s for %d recipients, %d bytes",
            message.id,
            message.site_id,
            submission.client_ip,
            len(message.recipients),
            len(message.content),
        )
        self._delivery.hand_over(message, stored=True, suppressed=admitted.suppressed)
        return Queued(message.id)

    def _fingerprint(self, message: NewMessage, retry_print: str | None) -> Fingerprint | None:
        window = self._limits.duplicate_window_seconds
        if retry_print is None or window <= 0:
            return None
        now = message.created_at
        return Fingerprint(message.site_id, retry_print, message.id, now, now + window)

    def _accepted_events(self, message: NewMessage, via: str) -> tuple[OutboxEntry, ...]:
        subscriptions = self._subscriptions()
        if not subscriptions.wants_any(EventType.ACCEPTED):
            return ()
        return tuple(subscriptions.fan_out([message_events.accepted(message, via, os.urandom)]))

    async def accept_composed(
        self,
        site: Site,
        composed: Composed,
        client_ip: str,
        via: str,
        username: str | None,
        answer: Callable[[str], Answer] | None = None,
    ) -> Queued | Reject | TempFail:
        """A message built from HTTP input (``via``: "api"; a form's goes by ``accept_form``): the
        path of SMTP's DATA, with the site already known (an API key's site)."""
        return await self.accept(self._composed(site, composed, client_ip, via, username), answer)

    async def accept_form(
        self, site: Site, composed: Composed, client_ip: str, gate: FormGate
    ) -> Queued | Reject | TempFail | Barred:
        """A form's inquiry: ``accept_composed``, stored only when ``gate`` lets it in, in one
        transaction with the gate's count and nonce."""
        submission = self._composed(site, composed, client_ip, "form", None)
        return await self._accept(submission, None, gate)

    def prepare_composed(self, site: Site, composed: Composed, via: str) -> NewMessage | Reject:
        """A message built here (a campaign's, ``via`` "campaign") as it would be stored: size
        checks, rewrite and DKIM signature; synchronous (signing costs CPU: call it in a
        thread). The caller stores it (``queue_database.insert_messages``)."""
        submission = self._composed(site, composed, "127.0.0.1", via, None)
        unfit = self._refused_content(submission.content)
        if unfit is not None:
            return unfit
        key = self._directory().signing_key(domain_of(site.from_email))
        prepared = self._prepare(submission, key)
        return prepared if isinstance(prepared, Reject) else prepared[0]

    def _refused_content(self, content: bytes) -> Reject | None:
        """Why a message's bytes may not be taken (line endings, size, header block), if so."""
        for verdict in (
            check_content(content, self._limits.max_message_bytes),
            check_header_size(content, self._limits.max_header_bytes),
        ):
            if isinstance(verdict, Reject):
                return verdict
        return None

    @staticmethod
    def _composed(
        site: Site, composed: Composed, client_ip: str, via: str, username: str | None
    ) -> Submission:
        return Submission(
            site=site,
            username=username,
            client_ip=client_ip,
            helo=via,
            protocol="HTTP",
            sender=composed.sender,
            recipients=composed.recipients,
            content=composed.content,
            via=via,
        )

    def _prepare(
        self, s: Submission, key: SigningKey | None
    ) -> tuple[NewMessage, str | None] | Reject:
        """The message as it is stored and sent: rewritten, then signed with ``key``; and,
        for SMTP within a duplicate window, the fingerprint that tells a client's retry."""
        now = self._clock()
        message_id = new_message_id(now, os.urandom(10))
        received = headers.received_field(
            helo=s.helo,
            client_ip=s.client_ip,
            hostname=self._hostname,
            protocol=s.protocol,
            message_id=message_id,
            now=now,
        )
        content, original = headers.rewrite(
            s.content,
            [
                headers.StripSpaceBeforeColon(),
                headers.RemoveBcc(),
                headers.RemoveField(self._class_header),
                headers.RewriteFrom(s.site),
                headers.AddMissing(message_id, self._hostname, now),
                *([headers.Append(s.added)] if s.added else []),
                headers.PrependReceived(received),
            ],
        )
        kind = message_class(original, self._class_header, s.site)
        if isinstance(kind, Reject):
            return kind
        if key is not None:  # after the rewrite: the signature covers what goes out
            content = dkim.sign(content, key, now)
        subject = headers.first(original, "subject")
        retry_print = None
        if s.via == "smtp" and self._limits.duplicate_window_seconds > 0:
            client_id = headers.first(original, "message-id")
            retry_print = fingerprint(
                s.site.id,
                client_id.value if client_id else None,
                s.sender,
                s.recipients,
                s.content,
            )
        message = NewMessage(
            id=message_id,
            site_id=s.site.id,
            username=s.username,
            client_ip=s.client_ip,
            original_sender=s.sender,
            envelope_sender=s.site.envelope_sender,
            recipients=s.recipients,
            content=content,
            original_headers=b"".join(f.raw for f in original),
            subject=headers.decoded_text(subject.value) if subject else "",
            created_at=now,
            message_class=kind,
        )
        return message, retry_print


def _data_facts(s: Submission) -> DataFacts:
    end = s.content.find(b"\r\n\r\n")  # the header block alone: the body is not copied
    fields, _ = headers.split_message(s.content if end < 0 else s.content[: end + 2])
    return DataFacts(
        s.site.id,
        s.sender,
        s.recipients,
        header_pairs(fields),
        len(s.content),
        s.username,
        s.client_ip,
        s.via,
    )
