"""Provider events in: verify a request the provider's way, then apply its events to our
messages in one transaction.

A request for an upstream with ``events:`` is verified by core.providers (SES through SNS:
its certificate fetched by relay/sns_client.py; Mailgun's HMAC and window; SendGrid's
ECDSA and window; Postmark's basic auth). A refused request changes nothing. An accepted
one is applied in ONE transaction: its replay key recorded (a request seen before changes
nothing more), then for each event the message it names found through ``provider_refs``
and the recipient among that message's recipients, the event put on the message's
timeline, a hard bounce or a complaint put on the site's suppression list, and our event
(``message.bounced``, ...) written to the webhook outbox. So a crash leaves either all of
it or none, and the provider, answered 5xx or never, sends it again.

Events of messages or recipients we cannot find are counted and dropped (the provider is
still answered 200: it would otherwise retry them for days).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection

from relay import provider_event_database as db
from relay.core.directory import Directory
from relay.core.model import UpstreamEvents
from relay.core.outbound_events import Event, Subscriptions
from relay.core.providers import effects, mailgun, postmark, sendgrid, ses, sns
from relay.core.providers.model import Accepted, Provider, Refusal, Refused
from relay.engine_database import Suppression, add_suppressions
from relay.metrics import Metrics
from relay.outbox_database import add_to_outbox
from relay.sns_client import SnsClient
from relay.store import GroupWriter

log = logging.getLogger(__name__)
# SNS signs its Timestamp but documents no window; its retries of one message end within
# hours. Older messages are refused, and their MessageIds remembered as long.
SNS_MAX_AGE_SECONDS = 24 * 3600.0
_MARGIN_SECONDS = 60.0
# How long a replay key is kept: past it the provider's own window refuses the request.
_REMEMBER_SECONDS = {
    Provider.MAILGUN: 2 * mailgun.DEFAULT_WINDOW_SECONDS + _MARGIN_SECONDS,
    Provider.SENDGRID: 2 * sendgrid.DEFAULT_WINDOW_SECONDS + _MARGIN_SECONDS,
    Provider.SES: 2 * SNS_MAX_AGE_SECONDS + _MARGIN_SECONDS,
    Provider.POSTMARK: 0.0,  # Postmark gives nothing to recognise a request by
}


@dataclass(frozen=True)
class Applied:
    """What an accepted request did."""

    events: int = 0
    matched: int = 0
    unmatched: int = 0
    ignored: int = 0
    replayed: bool = False  # seen before: nothing done again
    suppressed: tuple[str, ...] = ()  # the site of each address put on a list


@dataclass(frozen=True)
class Noted:
    """An SNS subscription message handled (confirmed, or its end noted)."""

    what: str


@dataclass(frozen=True)
class Unavailable:
    """We could not check it now (the SNS certificate did not come): the provider retries."""

    detail: str


Result = Applied | Noted | Refused | Unavailable


class ProviderEventController:
    def __init__(
        self,
        writer: GroupWriter,
        directory: Callable[[], Directory],
        metrics: Metrics,
        clock: Callable[[], float],
        *,
        subscriptions: Callable[[], Subscriptions] = Subscriptions,
        on_listed: Callable[[str], None] = lambda site_id: None,
        outbox_written: Callable[[], None] = lambda: None,
        sns_client: SnsClient | None = None,
        sns_test_host: str | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._writer = writer
        self._directory = directory
        self._metrics = metrics
        self._clock = clock
        self._subscriptions = subscriptions
        self._on_listed = on_listed  # the suppression controller's cache of listed sites
        self._outbox_written = outbox_written  # the webhooks' worker: send them now
        self._sns = sns_client or SnsClient()
        self._sns_test_host = sns_test_host
        self._random = random_bytes

    def settings(self, upstream: str) -> UpstreamEvents | None:
        """The upstream's ``events:``, or None when it has none or does not exist."""
        found = self._directory().upstream(upstream)
        return found.events if found is not None else None

    async def receive(
        self, upstream: str, settings: UpstreamEvents, body: bytes, headers: Mapping[str, str]
    ) -> Result:
        provider = Provider(settings.provider)
        if provider is Provider.SES:
            verdict = await self._sns_verdict(upstream, settings, body)
        else:
            verdict = self._verdict(provider, settings, body, headers)
        if isinstance(verdict, Refused):
            self._count(upstream, "refused")
            log.info(
                "provider events for upstream %s (%s) refused: %s (%s)",
                upstream,
                provider.value,
                verdict.reason.value,
                verdict.detail,
            )
            return verdict
        if isinstance(verdict, Noted | Unavailable):
            return verdict
        return await self._apply(upstream, provider, verdict)

    async def close(self) -> None:
        await self._sns.close()

    # -- verification

    def _verdict(
        self, provider: Provider, settings: UpstreamEvents, body: bytes, headers: Mapping[str, str]
    ) -> Accepted | Refused:
        now = self._clock()
        if provider is Provider.MAILGUN:
            assert settings.key is not None  # config_events requires it
            return mailgun.verify(body, settings.key.reveal().encode("utf-8"), now=now)
        if provider is Provider.SENDGRID:
            assert settings.key is not None
            key = _sendgrid_key(settings.key.reveal())
            if key is None:  # config_events loaded it once already
                return Refused(Refusal.BAD_SIGNATURE, "the configured key does not load")
            signature = headers.get(sendgrid.SIGNATURE_HEADER)
            signed_at = headers.get(sendgrid.TIMESTAMP_HEADER)
            return sendgrid.verify(body, signature, signed_at, key, now=now)
        assert settings.username is not None and settings.password is not None
        return postmark.verify(
            body, headers.get("Authorization"), settings.username, settings.password.reveal()
        )

    async def _sns_verdict(
        self, upstream: str, settings: UpstreamEvents, body: bytes
    ) -> Accepted | Refused | Noted | Unavailable:
        envelope = sns.parse_envelope(body, loopback_host=self._sns_test_host)
        if isinstance(envelope, Refused):
            return envelope
        if settings.topics and envelope.topic_arn not in settings.topics:
            # Before the certificate: another topic's posts never make us fetch anything.
            return Refused(Refusal.UNEXPECTED_TOPIC, "TopicArn is not a configured topic")
        pem = await self._sns.certificate(envelope.signing_cert_url)
        if pem is None:
            self._count(upstream, "unavailable")
            return Unavailable("the SNS signing certificate could not be fetched; try again")
        refused = sns.verify_envelope(
            envelope,
            pem,
            topic_arns=settings.topics or None,
            now=_utc(self._clock()),
            max_age_seconds=SNS_MAX_AGE_SECONDS,
        )
        if refused is not None:
            return refused
        if envelope.type == sns.SUBSCRIPTION_CONFIRMATION:
            return await self._confirm(upstream, settings, envelope)
        if envelope.type == sns.UNSUBSCRIBE_CONFIRMATION:
            log.info("upstream %s: SNS unsubscribed topic %s", upstream, envelope.topic_arn)
            self._count(upstream, "subscription")
            return Noted("unsubscribe confirmation noted")
        return ses.envelope_events(envelope)

    async def _confirm(
        self, upstream: str, settings: UpstreamEvents, envelope: sns.SnsEnvelope
    ) -> Refused | Noted | Unavailable:
        url = envelope.subscribe_url or ""
        if not sns.subscribe_url_allowed(url, loopback_host=self._sns_test_host):
            return Refused(Refusal.CERT_URL_REFUSED, "SubscribeURL is not an SNS URL")
        if not settings.topics:
            log.warning(
                "upstream %s: confirming SNS topic %s; set events_topics to take only yours",
                upstream,
                envelope.topic_arn,
            )
        if not await self._sns.confirm(url):
            self._count(upstream, "unavailable")
            return Unavailable("the SNS SubscribeURL could not be visited; try again")
        log.info("upstream %s: SNS subscription to %s confirmed", upstream, envelope.topic_arn)
        self._count(upstream, "subscription")
        return Noted("subscription confirmed")

    # -- effects

    async def _apply(self, upstream: str, provider: Provider, accepted: Accepted) -> Applied:
        now = self._clock()
        subscriptions = self._subscriptions()
        remember = _REMEMBER_SECONDS[provider]
        key = accepted.replay_key
        replay = effects.replay_key(upstream, key) if key and remember else None

        def job(connection: Connection) -> Applied:
            if replay is not None and not db.remember(connection, replay, now + remember):
                return Applied(events=len(accepted.events), replayed=True)
            return self._write(connection, upstream, accepted, subscriptions, now)

        applied = await self._writer.write_sync(job)
        self._outbox_written()
        self._report(upstream, provider, applied)
        return applied

    def _write(
        self,
        connection: Connection,
        upstream: str,
        accepted: Accepted,
        subscriptions: Subscriptions,
        now: float,
    ) -> Applied:
        outbound: list[Event] = []
        suppressed: list[str] = []
        unmatched = 0
        for event in accepted.events:
            match = db.find_message(connection, upstream, effects.refs(event), event.recipient)
            if match is None:
                unmatched += 1
                continue
            db.add_event(connection, event, match, upstream, now)
            source = effects.suppression_source(event)
            if source is not None:
                reason = effects.suppression_reason(event, upstream)
                entry = Suppression(
                    match.site_id, event.recipient, reason, match.message_id, now, source
                )
                add_suppressions(connection, [entry])
                suppressed.append(match.site_id)
            outbound.append(
                effects.outbound_event(
                    event,
                    now,
                    self._random(10),
                    message_id=match.message_id,
                    site=match.site_id,
                    upstream=upstream,
                )
            )
            log.info(
                "message %s (site %s): %s reported %s for %s",
                match.message_id,
                match.site_id,
                upstream,
                event.raw_type,
                event.recipient,
            )
        add_to_outbox(connection, subscriptions.fan_out(outbound))
        return Applied(
            events=len(accepted.events),
            matched=len(accepted.events) - unmatched,
            unmatched=unmatched,
            ignored=len(accepted.ignored),
            suppressed=tuple(suppressed),
        )

    def _report(self, upstream: str, provider: Provider, applied: Applied) -> None:
        if applied.replayed:
            self._count(upstream, "replayed")
            log.info(
                "provider events for upstream %s (%s) refused: replayed (seen before)",
                upstream,
                provider.value,
            )
            return
        for site in applied.suppressed:
            self._on_listed(site)
            self._metrics.suppressions.labels(site).inc()
        counts = Counter(
            {"matched": applied.matched, "unmatched": applied.unmatched, "ignored": applied.ignored}
        )
        for outcome, count in counts.items():
            if count:
                self._count(upstream, outcome, count)
        log.info(
            "provider events for upstream %s (%s): %d matched, %d unmatched, %d ignored",
            upstream,
            provider.value,
            applied.matched,
            applied.unmatched,
            applied.ignored,
        )

    def _count(self, upstream: str, outcome: str, count: int = 1) -> None:
        self._metrics.provider_events.labels(upstream, outcome).inc(count)


@lru_cache(maxsize=16)
def _sendgrid_key(text: str) -> ec.EllipticCurvePublicKey | None:
    """Loaded once per key text (a reload may change it)."""
    return sendgrid.load_public_key(text)


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
