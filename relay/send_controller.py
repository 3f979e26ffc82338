"""The send API's use cases: who is calling (a site's API key), send a message, its status.

- A key is known by its SHA-256 hash (the directory's index of the file's and
  the store's keys); a missing, unknown or expired one is refused, and a
  client address (IPv6: its /64) with too many refusals in the window is
  refused before any look-up. The count is this process's (the admin API's
  throttle): a key is 256 random bits, so the throttle bounds log noise and
  work, not guessing, and the store's cluster-wide AUTH counts (made to stop
  password guessing before scrypt) would cost a write per refusal here.
- A use is recorded in the key's ``last_used_at`` at most once a minute per
  key and process.
- A message takes SMTP's DATA path (``IngressController.accept_composed``):
  site limits, rewrite, DKIM, durable store before the answer. Its class
  reaches the ingress as the ``routing.class_header`` header, which the
  ingress reads and removes.
- ``Idempotency-Key`` (relay/core/idempotency.py): claimed in the store
  before the message is composed, so of concurrent requests on any node one
  sends; the answer is written in the transaction that stores the message,
  so a crash after that commit still answers a retry with it (never a second
  send); a refused or failed request gives the key back so a retry can
  succeed. Expired claims are swept at most once a minute per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from relay import api_key_database, idempotency_database
from relay.config import LimitsConfig
from relay.core import idempotency
from relay.core.compose import Composed, Rendered, compose
from relay.core.directory import Directory
from relay.core.model import ApiKey, Site
from relay.core.policy import LOCAL_ERROR, Reject, TempFail
from relay.core.send_request import SendRequest, Upload, parse_send_request
from relay.core.throttle import FailureThrottle, client_network
from relay.core.tokens import hash_token
from relay.ingress_controller import IngressController, Queued
from relay.metrics import Metrics
from relay.queue_database import MessageDetail, load_message
from relay.store import GroupWriter
from relay.suppression_controller import SuppressionController
from relay.template_controller import render_off_loop

log = logging.getLogger(__name__)
MAX_FAILURES, FAILURE_WINDOW_SECONDS = 10, 300.0  # as the admin API's tokens
TOUCH_SECONDS = 60.0  # a key's last_used_at is written at most this often (per process)
_ON_LOOP_BYTES = 65_536  # attachments beyond this are base64-encoded in a thread


@dataclass(frozen=True)
class Unauthorized:
    message: str
    reason: str = "invalid"  # or "expired", "missing": the metric's label


@dataclass(frozen=True)
class Throttled:
    retry_after: int


@dataclass(frozen=True)
class Invalid:
    problems: list[str]


@dataclass(frozen=True)
class Sent:
    """Stored (202); ``suppressed``: the recipients (as given) left out, being on the site's
    suppression list, with the reasons."""

    message_id: str
    suppressed: dict[str, str]


@dataclass(frozen=True)
class AllSuppressed:
    """Every recipient is on the site's suppression list: nothing stored (422)."""

    suppressed: dict[str, str]


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    body_hash: str  # relay/core/idempotency.py json_digest or multipart_digest


SendResult = (
    Sent
    | AllSuppressed
    | Reject
    | TempFail
    | Invalid
    | idempotency.Replay
    | idempotency.InProgress
    | idempotency.OtherRequest
)


class SendController:
    def __init__(
        self,
        writer: GroupWriter,
        ingress: IngressController,
        directory: Callable[[], Directory],
        limits: LimitsConfig,
        hostname: str,
        class_header: str,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        suppressions: SuppressionController | None = None,
    ) -> None:
        self._writer = writer
        self._suppressions = suppressions
        self._ingress = ingress
        self._directory = directory
        self._limits = limits
        self._hostname = hostname
        self._class_header = class_header
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._throttle = FailureThrottle(MAX_FAILURES, FAILURE_WINDOW_SECONDS)
        self._touched: dict[str, float] = {}  # key hash -> when this process last wrote its use

    # -- who is calling

    async def authenticate(
        self, authorization: str | None, client_ip: str
    ) -> tuple[ApiKey, Site] | Unauthorized | Throttled:
        """The key and its site from an ``Authorization: Bearer <key>`` header, or why not."""
        client = f"ip:{client_network(client_ip)}"
        if self._throttle.is_blocked(client, self._monotonic()):
            self._metrics.send_api_auth_failures.labels("blocked").inc()  # not logged: a flood
            return Throttled(int(FAILURE_WINDOW_SECONDS))
        scheme, _, presented = (authorization or "").partition(" ")
        found = self._key(presented.strip(), bearer=scheme.lower() == "bearer")
        if isinstance(found, Unauthorized) and found.reason == "missing":
            self._metrics.send_api_auth_failures.labels("missing").inc()  # not a guess
            return found
        if isinstance(found, Unauthorized):
            self._throttle.record_failure(client, self._monotonic())
            self._metrics.send_api_auth_failures.labels(found.reason).inc()
            log.warning("send API: %s, from %s", found.message, client_ip)
            return found
        await self._touch(found[0])
        return found

    def _key(self, presented: str, bearer: bool) -> tuple[ApiKey, Site] | Unauthorized:
        if not presented:
            return Unauthorized("an API key is required (Authorization: Bearer <key>)", "missing")
        directory = self._directory()
        key = directory.api_key(hash_token(presented)) if bearer else None
        site = directory.site(key.site_id) if key is not None else None
        if key is None or site is None:
            return Unauthorized("the API key is not valid")
        if key.expires_at is not None and key.expires_at <= self._clock():
            return Unauthorized(f"the API key {key.name!r} has expired", "expired")
        return key, site

    async def _touch(self, key: ApiKey) -> None:
        now = self._monotonic()
        if now - self._touched.get(key.key_hash, float("-inf")) < TOUCH_SECONDS:
            return
        self._touched[key.key_hash] = now
        if len(self._touched) > 10_000:  # keys come and go with the catalog: keep it bounded
            self._touched = {key.key_hash: now}
        try:
            await self._writer.write_sync(
                partial(api_key_database.touch, key_hash=key.key_hash, now=self._clock())
            )
        except Exception as error:  # a missed use must not refuse a send
            log.warning("send API: last use of key %s not recorded: %s", key.name, error)

    # -- sending

    async def send(
        self,
        key: ApiKey,
        site: Site,
        body: object,
        files: Sequence[Upload],
        client_ip: str,
        idempotency_key: IdempotencyKey | None = None,
    ) -> SendResult:
        parse = partial(
            parse_send_request,
            body,
            site=site,
            max_recipients=self._limits.max_recipients,
            files=files,
        )
        # Attachments (base64 decoding, up to the body cap) are checked off the event loop.
        attached = bool(files) or (isinstance(body, dict) and bool(body.get("attachments")))
        request = await asyncio.to_thread(parse) if attached else parse()
        if isinstance(request, list):
            return Invalid(request)
        rendered = await self._render(request)
        if isinstance(rendered, Invalid):
            return rendered
        if idempotency_key is not None:
            claim = await self._claim(site, idempotency_key)
            if not isinstance(claim, idempotency.Claimed):
                return claim
        try:
            result = await self._accept(key, site, request, rendered, client_ip, idempotency_key)
        except Exception:
            if idempotency_key is not None:
                await self._release(site, idempotency_key)
            raise
        if idempotency_key is not None and not isinstance(result, Sent):
            await self._release(site, idempotency_key)
        return result

    async def _render(self, request: SendRequest) -> Rendered | Invalid | None:
        if request.template is None:
            return None
        template = self._directory().template(request.template)
        if template is None:
            return Invalid([f"template: no template named {request.template!r}"])
        # Off the loop with a deadline: the caller's variables may make any template slow.
        rendered = await render_off_loop(template, request.variables)
        if isinstance(rendered, list):
            return Invalid([f"template {request.template}: {p}" for p in rendered])
        return rendered

    async def _accept(
        self,
        key: ApiKey,
        site: Site,
        request: SendRequest,
        rendered: Rendered | None,
        client_ip: str,
        idempotency_key: IdempotencyKey | None,
    ) -> Sent | AllSuppressed | Reject | TempFail:
        if request.message_class is not None:
            # The ingress reads the class from this header (and removes it), as for SMTP.
            name = self._class_header.lower()
            headers = tuple(h for h in request.headers if h[0].lower() != name)
            request = replace(
                request, headers=(*headers, (self._class_header, request.message_class.value))
            )
        build = partial(
            compose,
            request,
            message_id=f"{uuid.uuid4().hex}@{self._hostname}",
            now=self._clock(),
            rendered=rendered,
        )
        size = sum(len(a.content) for a in request.attachments)
        composed: Composed = build() if size <= _ON_LOOP_BYTES else await asyncio.to_thread(build)
        suppressed = await self._suppressed(site, composed.recipients)
        if isinstance(suppressed, TempFail):
            return suppressed
        if suppressed:
            await self._ingress.report_suppressed(site.id, suppressed, "api")
            kept = tuple(r for r in composed.recipients if r not in suppressed)
            if not kept:
                return AllSuppressed(suppressed)
            composed = replace(composed, recipients=kept)
        answer = (
            partial(_answer, site, idempotency_key, suppressed)
            if idempotency_key is not None
            else None
        )
        result = await self._ingress.accept_composed(
            site, composed, client_ip, via="api", username=f"api-key:{key.name}", answer=answer
        )
        return Sent(result.message_id, suppressed) if isinstance(result, Queued) else result

    async def _suppressed(self, site: Site, recipients: Sequence[str]) -> dict[str, str] | TempFail:
        """The envelope's recipients on the site's suppression list. They are left out of the
        envelope, as SMTP's RCPT refuses them; one listed between this read and the store
        still fails at delivery (the store's check, ``queue_database.admit_messages``)."""
        if self._suppressions is None:
            return {}
        try:
            found = await self._suppressions.reasons(site.id, recipients)
        except Exception as error:
            log.warning("site %s: suppression check failed: %s", site.id, type(error).__name__)
            return LOCAL_ERROR
        if found:
            self._metrics.suppressed_recipients.labels(site.id, "api").inc(len(found))
        return found

    # -- Idempotency-Key

    async def _claim(self, site: Site, key: IdempotencyKey) -> idempotency.Claim:
        now = self._clock()
        held = await self._writer.write_sync(
            partial(
                idempotency_database.claim,
                site_id=site.id,
                key=key.key,
                body_hash=key.body_hash,
                now=now,
            )
        )
        if held is None:
            return idempotency.Claimed()
        return idempotency.repeat(key.body_hash, *held)

    async def _release(self, site: Site, key: IdempotencyKey) -> None:
        try:
            await self._writer.write_sync(
                partial(
                    idempotency_database.release,
                    site_id=site.id,
                    key=key.key,
                    body_hash=key.body_hash,
                )
            )
        except Exception as error:  # the claim lapses after idempotency.ABANDONED_SECONDS
            log.warning("site %s: idempotency key not given back: %s", site.id, error)

    # -- status

    async def status(self, site: Site, message_id: str) -> MessageDetail | None:
        """The message if it is this site's; None for another site's or an unknown id."""
        if len(message_id) > 64:
            return None
        async with self._writer.engine.connect() as connection:
            detail = await load_message(connection, message_id)
        return detail if detail is not None and detail.site_id == site.id else None


def sent_body(message_id: str, suppressed: Mapping[str, str]) -> dict[str, Any]:
    """The 202's JSON; ``suppressed`` only when some recipient was left out."""
    body: dict[str, Any] = {"id": message_id, "status": "queued"}
    if suppressed:
        body["suppressed"] = [{"address": a, "reason": r} for a, r in suppressed.items()]
    return body


def _answer(
    site: Site, key: IdempotencyKey, suppressed: Mapping[str, str], message_id: str
) -> idempotency_database.Answer:
    """What a repeat of the request gets: the 202 the send view answers for ``message_id``."""
    body = sent_body(message_id, suppressed)
    answer = idempotency.stored_answer(202, body)
    return idempotency_database.Answer(site.id, key.key, message_id, answer)
