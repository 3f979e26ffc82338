"""Landing-page forms: a signed token for the page, then each post judged and, when it is a
person's, sent as an inquiry on the path of SMTP's DATA.

What a post gets, decided in this order:

- no site with that id, or one without ``form:``: ``NOT_FOUND``;
- an ``Origin`` not in the form's ``allowed_origins``: ``ORIGIN_REFUSED`` (a post
  without Origin is no browser's cross-site request; the token and limits still apply);
- a bot (token missing, malformed, forged, another site's, too young, expired;
  honeypot filled or absent; token already used): a ``Decoy``, answered like a
  queued message with an id shaped like a real one, and nothing stored;
- a person's mistake (a required field empty, a reply-to that is no address, a
  control character, too many or too long fields): ``Invalid`` with every problem;
  the token is not spent, so the corrected form goes with it;
- else the inquiry (the form's template, or the default listing of the fields) goes
  through ``IngressController.accept_form``: rewrite, DKIM and the durable store,
  as SMTP's DATA, where one transaction counts the post for the client's network
  (over ``form.rate_per_minute_per_ip``: ``RateLimited``), spends the token's
  nonce (used before: a ``Decoy``; the post counted all the same), then counts
  the message for its site and stores it; its ``Queued``, ``Reject`` or ``TempFail``.

The checks that cost nothing and need no store (token, fields) come first, so
a bot's post is never composed; a person's post then costs one commit, its
message's (``queue_database.admit_messages`` with the post's ``FormGate``).
Count and nonce are exact across nodes: the count is a ``Scope.FORM_IP`` usage
counter, the nonce a row whose key says it was used (relay/form_database.py).
A post not stored (rate limited, refused, the store failed) leaves its nonce
unspent, so the visitor may send the form once more.

Guarantees: recipients are the form's ``to`` only; From is the site's; the
visitor's fields reach only the body (and a template's subject, collapsed to one
line); a template that fails to render is logged and the default listing is sent
instead, never losing the inquiry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from relay.config_http import HttpConfig
from relay.core import form_token
from relay.core.compose import Composed, Rendered, compose_inquiry
from relay.core.directory import Directory
from relay.core.form_input import FormInput, check_form
from relay.core.ids import new_message_id
from relay.core.model import FormSettings, ReplyTo, Site
from relay.core.policy import Reject, TempFail
from relay.core.quota import Claim, Scope, Window
from relay.core.throttle import client_network
from relay.form_database import FormGate, UsedNonce
from relay.ingress_controller import Barred, IngressController, Queued
from relay.metrics import Metrics
from relay.template_controller import render_off_loop
from relay.usage_controller import UsageController

log = logging.getLogger(__name__)
MAX_FIELDS = 50  # a contact form has a handful; more is refused before any is looked at
MAX_FIELD_CHARS = 20_000  # a long message, well under the listener's body cap


@dataclass(frozen=True)
class NotFound:
    pass


@dataclass(frozen=True)
class OriginRefused:
    pass


NOT_FOUND, ORIGIN_REFUSED = NotFound(), OriginRefused()


@dataclass(frozen=True)
class Decoy:
    """A bot's answer: looks queued, nothing was."""

    message_id: str


@dataclass(frozen=True)
class Invalid:
    problems: list[str]


@dataclass(frozen=True)
class RateLimited:
    retry_after: int  # seconds until the client's minute ends


@dataclass(frozen=True)
class FormPost:
    """A post as the HTTP view read it."""

    landing_page_id: str
    fields: Mapping[str, object]  # formData, names and values as sent
    token: str | None
    origin: str | None  # the Origin header, when there was one
    client_ip: str
    problems: tuple[str, ...] = ()  # what the view could not take (a file part, say)


Outcome = Queued | Decoy | Invalid | RateLimited | NotFound | OriginRefused | Reject | TempFail


def origin_allowed(form: FormSettings, origin: str | None) -> bool:
    """No Origin (no browser's cross-site request), or one the form lists (as browsers
    write it: lower case; ``null`` only when listed)."""
    return origin is None or origin.lower() in form.allowed_origins


class FormController:
    def __init__(
        self,
        ingress: IngressController,
        usage: UsageController,
        directory: Callable[[], Directory],
        http: Callable[[], HttpConfig],
        key: bytes,  # form_token.derive_key(server secret, b"form-token")
        metrics: Metrics,
        hostname: str,
        clock: Callable[[], float] = time.time,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._ingress = ingress
        self._usage = usage
        self._directory = directory
        self._http = http
        self._key = key
        self._metrics = metrics
        self._hostname = hostname
        self._clock = clock
        self._random = random

    def site(self, landing_page_id: str) -> Site | None:
        """The site whose form this is; None when there is no such site or it has no form."""
        site = self._directory().site(landing_page_id)
        return site if site is not None and site.form is not None else None

    def issue_token(
        self, landing_page_id: str, origin: str | None
    ) -> str | NotFound | OriginRefused:
        site = self.site(landing_page_id)
        if site is None or site.form is None:
            return NOT_FOUND
        if not origin_allowed(site.form, origin):
            return ORIGIN_REFUSED
        return form_token.issue(self._key, site.id, self._clock(), self._random(16))

    def preflight_allowed(self, origin: str | None, landing_page_id: str | None) -> bool:
        """A CORS preflight names no form unless its URL does (``?landingPageId=``): then any
        form's origin is allowed to ask, and the post itself is judged by its own form."""
        if origin is None:
            return False
        if landing_page_id is not None:
            site = self.site(landing_page_id)
            return site is not None and site.form is not None and origin_allowed(site.form, origin)
        return self.any_form_allows(origin)

    def any_form_allows(self, origin: str) -> bool:
        return any(
            site.form is not None and origin.lower() in site.form.allowed_origins
            for site in self._directory().sites
        )

    async def submit(self, post: FormPost) -> Outcome:
        site = self.site(post.landing_page_id)
        if site is None or site.form is None:
            return NOT_FOUND
        form = site.form
        if not origin_allowed(form, post.origin):
            self._count(site, "refused")
            return ORIGIN_REFUSED
        now = self._clock()
        max_age = self._http().form_token_max_age_seconds
        token = form_token.check(
            self._key,
            post.token,
            site.id,
            now,
            min_age_seconds=form.min_fill_seconds,
            max_age_seconds=max_age,
        )
        if isinstance(token, form_token.TokenRefused):
            return self._decoy(site, now, f"token {token.reason.value}")
        checked = check_form(
            post.fields,
            required=form.required,
            reply_to_field=form.reply_to_field,
            honeypot_field=form.honeypot_field,
            max_field_chars=MAX_FIELD_CHARS,
            max_fields=MAX_FIELDS,
        )
        if isinstance(checked, FormInput) and checked.is_bot:
            return self._decoy(site, now, "honeypot")
        problems = [*post.problems, *(checked if isinstance(checked, list) else [])]
        if problems or not isinstance(checked, FormInput):
            self._count(site, "invalid")
            return Invalid(problems)
        # The token outlives its nonce's row by nothing: check() passes it until
        # int(now) - issued_at > max_age, so the row stays until a second after that.
        used = UsedNonce(token.nonce, site.id, token.issued_at + max_age + 1)
        gate = FormGate(self._client_claim(site, form, post.client_ip, now), used)
        return await self._send(site, form, checked, post, gate, now)

    def _client_claim(self, site: Site, form: FormSettings, client_ip: str, now: float) -> Claim:
        """The post's count for its client's network. Strangers' networks are many: counted in
        the store only, never cached (memory would grow with every address) nor warned about
        or exported as gauges (their names would be unbounded labels)."""
        name = hashlib.sha256(f"{site.id}|{client_network(client_ip)}".encode()).hexdigest()[:32]
        limits = {Window.MINUTE: form.rate_per_minute_per_ip}
        return Claim(Scope.FORM_IP, name, limits, 1, now, self._usage.book.zone)

    async def _send(
        self,
        site: Site,
        form: FormSettings,
        checked: FormInput,
        post: FormPost,
        gate: FormGate,
        now: float,
    ) -> Queued | Decoy | RateLimited | Reject | TempFail:
        composed = await self._compose(site, form, checked, post.landing_page_id, now)
        # The visitor's checked address is the Reply-To, whatever the site does to SMTP mail's.
        sender = replace(site, reply_to=ReplyTo.ORIGINAL) if form.reply_to_field else site
        result = await self._ingress.accept_form(sender, composed, post.client_ip, gate)
        if isinstance(result, Queued):
            self._count(site, "queued")
            return result
        if isinstance(result, Barred):
            if result.over is None:
                return self._decoy(site, now, "token used")
            self._count(site, "rate_limited")
            return RateLimited(max(math.ceil(result.over.reopens_at - now), 1))
        limited = isinstance(result, TempFail) and result.retry_after is not None
        self._count(site, "rate_limited" if limited else "refused")
        return result

    async def _compose(
        self, site: Site, form: FormSettings, checked: FormInput, page_id: str, now: float
    ) -> Composed:
        rendered = await self._render(site, form, checked.fields, page_id)
        return compose_inquiry(
            checked.fields,
            site=site,
            to=form.to,
            reply_to=checked.reply_to,
            message_id=f"{new_message_id(now, self._random(10))}@{self._hostname}",
            now=now,
            page=site.name,
            rendered=rendered,
        )

    async def _render(
        self, site: Site, form: FormSettings, fields: Mapping[str, str], page_id: str
    ) -> Rendered | None:
        """The form's template's parts, or None (the default listing) when it cannot render."""
        if form.template is None:
            return None
        template = self._directory().template(form.template)
        if template is None:  # deleted through the API since the file named it
            log.warning(
                "site %s: form template %s not found: default listing sent", site.id, form.template
            )
            return None
        # The form's own names last: a field called formData cannot stand in for them.
        variables = {**fields, "formData": dict(fields), "landingPageId": page_id}
        # Off the loop with the render deadline: strangers' fields may make a template slow.
        rendered = await render_off_loop(template, variables)
        if isinstance(rendered, list):
            log.warning(
                "site %s: form template %s failed (%s): default listing sent",
                site.id,
                form.template,
                "; ".join(rendered),
            )
            return None
        return rendered

    def _decoy(self, site: Site, now: float, why: str) -> Decoy:
        self._count(site, "bot")
        log.debug("site %s: form post taken for a bot's (%s): nothing stored", site.id, why)
        return Decoy(new_message_id(now, self._random(10)))

    def _count(self, site: Site, outcome: str) -> None:
        self._metrics.form_submissions.labels(site.id, outcome).inc()
