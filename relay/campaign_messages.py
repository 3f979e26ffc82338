"""A campaign's messages: each contact's rendered, built and signed as the send API's are.

Synchronous and CPU-bound (rendering, DKIM): the generator runs ``build`` in a thread.
Per contact: unsubscribed or suppressed is skipped with the reason; an address the message
builder cannot write, a template that fails for its variables, or a message the ingress
refuses (too big) fails with the reason; any other gets its message: From and the rewrite
of the site, ``List-Unsubscribe`` (the public listener's ``/u/{token}``) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058) signed by DKIM with the
rest, the ``bulk`` class, and each attachment's block replaced by its reference after the
signature (``core.campaigns.replace_blocks``), so what is spliced back verifies.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from zoneinfo import ZoneInfo

from relay.campaign_database import Contact
from relay.campaign_generation_database import Item
from relay.config import Config
from relay.config_http import unsubscribe_base_url
from relay.core import message_events, unsubscribe
from relay.core.campaigns import Campaign, RecipientState, replace_blocks, variables
from relay.core.compose import Rendered, compose
from relay.core.model import MessageClass, Site
from relay.core.outbound_events import EventType, OutboxEntry, Subscriptions
from relay.core.policy import Reject
from relay.core.quota import Claim, Scope, Window, allowance, limits_of
from relay.core.send_request import Attachment, SendRequest, address_problem
from relay.core.templates import Deadline, Template, render
from relay.ingress_controller import IngressController

RENDER_SECONDS = 2.0
SITE_RESERVE = 0.10  # of each site limit, kept for the site's other mail


def unsubscribe_link(config: Config) -> tuple[str, str | None]:
    """The base of the one-click links (``http.public_url``, else the public listener's own
    address) and the mailto address for List-Unsubscribe, if any. A campaign is created only
    with ``http:``; one that lost it by a reload links to the server's name."""
    http = config.http
    if http is None:
        return f"http://{config.server.hostname}", None
    return unsubscribe_base_url(http), http.unsubscribe_mailto


def reserved_limits(site: Site) -> dict[Window, int]:
    """What the site's campaigns may use of each of its windows: all but ``SITE_RESERVE``."""
    return allowance(limits_of(site), SITE_RESERVE)


class MessageBuilder:
    def __init__(
        self,
        ingress: IngressController,
        config: Callable[[], Config],
        unsubscribe_key: bytes,
        zone: ZoneInfo,
        class_header: str,
        subscriptions: Callable[[], Subscriptions],
    ) -> None:
        self._ingress = ingress
        self._config = config
        self._key = unsubscribe_key
        self._zone = zone
        self._class_header = class_header
        self._subscriptions = subscriptions

    def build(
        self,
        site: Site,
        campaign: Campaign,
        contacts: list[Contact],
        listed: Mapping[tuple[str, str], str],
        attachments: tuple[Attachment, ...],
        blocks: dict[int, bytes],
        now: float,
    ) -> list[Item]:
        template = Template("campaign", campaign.subject, campaign.text, campaign.html)
        link = unsubscribe_link(self._config())
        wants_accepted = self._subscriptions().wants_any(EventType.ACCEPTED)
        limits = limits_of(site)
        ceiling = allowance(limits, SITE_RESERVE)  # the site's own mail keeps the rest
        items = []
        for contact in contacts:
            reason = listed.get((site.id, contact.email.lower()))
            if contact.unsubscribed:
                items.append(
                    Item(contact.id, contact.email, RecipientState.SKIPPED, "unsubscribed")
                )
            elif reason is not None:
                items.append(
                    Item(contact.id, contact.email, RecipientState.SKIPPED, f"suppressed: {reason}")
                )
            else:
                items.append(
                    self._message(site, campaign, template, contact, attachments, blocks, link, now)
                )
        return [
            replace(
                i,
                claim=Claim(Scope.SITE, site.id, limits, 1, now, self._zone, ceiling)
                if limits
                else None,
                outbox=self._accepted(i) if wants_accepted else (),
            )
            if i.message is not None
            else i
            for i in items
        ]

    def _message(
        self,
        site: Site,
        campaign: Campaign,
        template: Template,
        contact: Contact,
        attachments: tuple[Attachment, ...],
        blocks: dict[int, bytes],
        link: tuple[str, str | None],  # unsubscribe_link()
        now: float,
    ) -> Item:
        def failed(reason: str) -> Item:
            return Item(contact.id, contact.email, RecipientState.FAILED, reason)

        if problem := address_problem(contact.email):
            return failed(f"address: {problem}")
        token = unsubscribe.issue(self._key, campaign.id, contact.id)
        base_url, mailto = link
        url = f"{base_url.rstrip('/')}/u/{token}"
        rendered = render(
            template,
            variables(contact.fields(), url),
            deadline=Deadline.after(RENDER_SECONDS, time.monotonic),
        )
        if isinstance(rendered, list):
            return failed("template: " + "; ".join(rendered))
        request = SendRequest(
            from_email=site.from_email,
            from_name=site.from_name,
            to=(contact.email,),
            headers=(
                *unsubscribe.headers(token, base_url=base_url, mailto=mailto),
                (self._class_header, MessageClass.BULK.value),
            ),
            attachments=attachments,
        )
        hostname = self._config().server.hostname
        composed = compose(
            request,
            message_id=f"{uuid.uuid4().hex}@{hostname}",
            now=now,
            rendered=rendered if isinstance(rendered, Rendered) else None,
        )
        prepared = self._ingress.prepare_composed(site, composed, via="campaign")
        if isinstance(prepared, Reject):
            return failed(prepared.reply.render())
        # Signed over the whole message first; then each attachment's block is stored once.
        content = replace_blocks(prepared.content, blocks)
        message = replace(
            prepared,
            content=content,
            size=len(prepared.content),
            campaign_id=campaign.id,
            message_class=MessageClass.BULK,
        )
        return Item(contact.id, contact.email, RecipientState.QUEUED, message=message)

    def _accepted(self, item: Item) -> tuple[OutboxEntry, ...]:
        assert item.message is not None
        event = message_events.accepted(item.message, "campaign", os.urandom)
        return tuple(self._subscriptions().fan_out([event]))
