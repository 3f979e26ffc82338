"""One-click unsubscribe end to end: a real relay with its public HTTP listener on loopback, a
real HTTP client, the real store (SQLite; one test on PostgreSQL), a real webhook receiver.

The campaign engine is not needed: each test writes a contact, a campaign and the
campaign's recipient row with SQL, as the engine would, and signs the link's token with the
relay's own key (``RelayApp.unsubscribe_key``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from relay.core.form_token import derive_key
from relay.core.unsubscribe import issue
from relay.tables import campaign_recipients, campaigns, contacts, webhook_outbox
from tests.conftest import RunningRelay, base_config, smtp_upstream
from tests.postgres import throwaway_database
from tests.test_webhooks_functional import hook
from tests.webhook_receiver import Receiver, receiving

EMAIL = "kim.lee@example.org"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}  # the body RFC 8058 posts, form-encoded
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SITE_NAME = "Shop"


@dataclass
class World:
    relay: RunningRelay
    http: aiohttp.ClientSession
    receiver: Receiver

    def url(self, token: str) -> str:
        return f"http://127.0.0.1:{self.relay.app.http_port}/u/{token}"

    async def add_recipient(
        self, email: str = EMAIL, campaign: str = "spring-sale", site: str = "shop"
    ) -> tuple[int, str]:
        """A contact of ``site``, a campaign, and the campaign's row for the contact, as the
        campaign engine writes them; (the contact's id, its link's token)."""
        now = time.time()
        async with self.relay.app.engine.begin() as connection:
            contact_id = (
                await connection.execute(
                    contacts.insert()
                    .values(
                        site_id=site,
                        email=email,
                        attributes={},
                        tags=[],
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(contacts.c.id)
                )
            ).scalar_one()
            exists = await connection.execute(
                sa.select(campaigns.c.id).where(campaigns.c.id == campaign)
            )
            if exists.first() is None:
                await connection.execute(
                    campaigns.insert().values(
                        id=campaign,
                        site_id=site,
                        name="Spring sale",
                        status="in_progress",
                        audience="all",
                        created_at=now,
                        updated_at=now,
                    )
                )
            await connection.execute(
                campaign_recipients.insert().values(
                    campaign_id=campaign,
                    contact_id=contact_id,
                    email=email,
                    status="sent",
                    message_id=f"msg{contact_id:023d}",
                    updated_at=now,
                )
            )
        return contact_id, issue(self.relay.app.unsubscribe_key, campaign, contact_id)

    async def contact(self, contact_id: int) -> Any:
        async with self.relay.app.engine.connect() as connection:
            found = await connection.execute(sa.select(contacts).where(contacts.c.id == contact_id))
            return found.first()

    async def outbox(self) -> list[Any]:
        async with self.relay.app.engine.connect() as connection:
            return list(await connection.execute(sa.select(webhook_outbox)))

    async def post(self, token: str, **options: Any) -> tuple[int, str, Any]:
        async with self.http.post(self.url(token), **options) as reply:
            return reply.status, await reply.text(), reply.headers

    async def get(self, token: str, method: str = "GET", **options: Any) -> tuple[int, str, Any]:
        async with self.http.request(method, self.url(token), **options) as reply:
            return reply.status, await reply.text(), reply.headers

    def metric(self, name: str, **labels: str) -> float:
        value = self.relay.app.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def relay_config(tmp_path: Path, receiver_url: str, store_url: str | None = None) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("sink", 2525)])
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config["events"] = {"allow_private_targets": True}
    config["webhooks"] = [hook("app", receiver_url, events=["message.unsubscribed"])]
    config["sites"][0]["name"] = SITE_NAME
    if store_url is not None:
        config["store"] = {"url": store_url}
    return config


@asynccontextmanager
async def opened(
    start_relay: Any, tmp_path: Path, store_url: str | None = None, **changes: Any
) -> AsyncIterator[World]:
    async with receiving() as receiver, aiohttp.ClientSession() as http:
        config = relay_config(tmp_path, receiver.url, store_url)
        config["sites"][0].update(changes)
        relay = await start_relay(config)
        try:
            yield World(relay, http, receiver)
        finally:
            await relay.app.stop()  # before its store (a throwaway database) goes


@pytest.fixture
async def world(start_relay: Any, tmp_path: Path) -> AsyncIterator[World]:
    async with opened(start_relay, tmp_path) as w:
        yield w


async def one_click_unsubscribes_once(world: World) -> None:
    contact_id, token = await world.add_recipient()
    assert not (await world.contact(contact_id)).unsubscribed

    before = time.time()
    status, page, _ = await world.post(token, data=ONE_CLICK)
    assert status == 200, page
    assert "You are unsubscribed" in page and "k***@example.org" in page and SITE_NAME in page
    row = await world.contact(contact_id)
    assert row.unsubscribed and before <= row.unsubscribed_at <= time.time()
    assert row.updated_at == row.unsubscribed_at
    [entry] = await world.outbox()
    assert (entry.webhook, entry.event_type, entry.site_id) == (
        "app",
        "message.unsubscribed",
        "shop",
    )
    payload = json.loads(entry.payload)
    assert payload["data"] == {
        "message_id": f"msg{contact_id:023d}",
        "site": "shop",
        "recipient": EMAIL,
        "campaign_id": "spring-sale",
    }
    [delivered] = await world.receiver.wait_accepted(1)
    assert delivered.event == payload  # the webhook got it, signed, as written

    # Again (the provider retries; the person presses twice): the same answer, nothing new.
    again = await world.post(token, data=ONE_CLICK)
    assert (again[0], again[1]) == (status, page)
    assert len(await world.outbox()) == 1
    assert (await world.contact(contact_id)).unsubscribed_at == row.unsubscribed_at
    assert world.metric("relay_unsubscribes_total", site="shop") == 1


async def test_one_click_post_unsubscribes_and_reports_it_once(world: World) -> None:
    await one_click_unsubscribes_once(world)


async def test_one_click_on_postgresql(start_relay: Any, tmp_path: Path) -> None:
    async with throwaway_database() as url, opened(start_relay, tmp_path, url) as world:
        await one_click_unsubscribes_once(world)
        # Posts at once for one contact: one of them unsubscribes and reports, none fails.
        contact_id, token = await world.add_recipient("ana@example.org")
        answers = await asyncio.gather(*(world.post(token, data=ONE_CLICK) for _ in range(5)))
        assert {status for status, _, _ in answers} == {200}
        assert (await world.contact(contact_id)).unsubscribed
        assert len(await world.outbox()) == 2
        assert world.metric("relay_unsubscribes_total", site="shop") == 2


async def test_get_and_head_never_unsubscribe(world: World) -> None:
    contact_id, token = await world.add_recipient()
    for _ in range(2):
        status, page, headers = await world.get(token, headers=BROWSER)
        assert status == 200
        assert "Unsubscribe <strong>k***@example.org</strong> from <strong>Shop</strong>" in page
        assert EMAIL not in page  # a forwarded link does not give the address away
        head = await world.get(token, "HEAD")
        assert (head[0], head[1]) == (200, "")
    assert not (await world.contact(contact_id)).unsubscribed
    assert await world.outbox() == []

    # The page's form: a plain post of the one-click field, back to this very URL.
    form = re.search(r'<form method="post" action="([^"]*)">(.*?)</form>', page, re.DOTALL)
    assert form is not None
    assert form.group(1) == token  # relative: right behind a proxy's path prefix too
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in form.group(2)
    assert "<script" not in page.lower()
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"

    action = str(aiohttp.client.URL(world.url(token)).join(aiohttp.client.URL(form.group(1))))
    async with world.http.post(action, data=ONE_CLICK, headers=BROWSER) as reply:
        assert reply.status == 200 and "You are unsubscribed" in await reply.text()
    assert (await world.contact(contact_id)).unsubscribed

    status, page, _ = await world.get(token, headers=BROWSER)
    assert status == 200 and "Already unsubscribed" in page and "<form" not in page
    assert len(await world.outbox()) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"data": b""},
        {"data": b"List-Unsubscribe=One-Click", "headers": {"Content-Type": "text/plain"}},
        {"data": {"anything": "else"}},
        {"json": {"List-Unsubscribe": "One-Click"}},
    ],
)
async def test_any_small_body_is_taken(world: World, body: dict[str, Any]) -> None:
    """Liberal on purpose: the signed URL authorises, and some clients post nothing."""
    contact_id, token = await world.add_recipient()
    status, _, _ = await world.post(token, **body)
    assert status == 200
    assert (await world.contact(contact_id)).unsubscribed


async def test_a_link_that_is_not_ours_changes_nothing(world: World) -> None:
    contact_id, token = await world.add_recipient()
    gone_contact, gone_token = await world.add_recipient("gone@example.org")
    async with world.relay.app.engine.begin() as connection:
        await connection.execute(contacts.delete().where(contacts.c.id == gone_contact))
    _, deleted_campaign = await world.add_recipient("ana@example.org", campaign="old-news")
    async with world.relay.app.engine.begin() as connection:
        await connection.execute(campaigns.delete().where(campaigns.c.id == "old-news"))
    other_key = derive_key(b"another relay's secret", b"unsubscribe")
    i = len(token) // 2
    altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    links = {
        "forged": issue(other_key, "spring-sale", contact_id),
        "altered": altered,
        "garbage": "not-a-token",
        "deleted contact": gone_token,
        "deleted campaign": deleted_campaign,
    }
    for what, link in links.items():
        status, body, _ = await world.post(link, data=ONE_CLICK)
        assert status == 404, what
        error = json.loads(body)["error"]
        assert error["code"] == "not_found" and "not valid" in error["message"], what
        status, page, headers = await world.post(link, data=ONE_CLICK, headers=BROWSER)
        assert status == 404 and "This unsubscribe link is not valid" in page, what
        assert "Nothing was changed" in page and headers["Content-Type"].startswith("text/html")
        status, page, _ = await world.get(link, headers=BROWSER)
        assert status == 404 and "This unsubscribe link is not valid" in page, what
    assert not (await world.contact(contact_id)).unsubscribed
    assert await world.outbox() == []
    assert world.metric("relay_unsubscribe_refusals_total", reason="forged") == 9
    assert world.metric("relay_unsubscribe_refusals_total", reason="unknown") == 6


async def test_a_reused_contact_id_does_not_unsubscribe_its_new_owner(world: World) -> None:
    """The link is bound to the address its message went to, not only to a row id."""
    contact_id, token = await world.add_recipient()
    now = time.time()
    async with world.relay.app.engine.begin() as connection:
        await connection.execute(contacts.delete().where(contacts.c.id == contact_id))
        await connection.execute(
            contacts.insert().values(
                id=contact_id,
                site_id="shop",
                email="someone.else@example.org",
                attributes={},
                tags=[],
                created_at=now,
                updated_at=now,
            )
        )
    status, _, _ = await world.post(token, data=ONE_CLICK)
    assert status == 404
    assert not (await world.contact(contact_id)).unsubscribed


async def test_a_body_over_the_cap_is_413_and_changes_nothing(world: World) -> None:
    contact_id, token = await world.add_recipient()
    status, body, _ = await world.post(token, data=b"x" * 2048)
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
    status, page, _ = await world.post(token, data=b"x" * 2048, headers=BROWSER)
    assert status == 413 and "too large" in page

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(4):
            yield b"y" * 512

    status, _, _ = await world.post(token, data=chunks())
    assert status == 413
    status, _, _ = await world.post(token, data=b"z" * 1024)  # at the cap: taken
    assert status == 200
    assert (await world.contact(contact_id)).unsubscribed


async def test_pages_escape_the_site_name_and_the_address(start_relay: Any, tmp_path: Path) -> None:
    name = '<script>alert("x")</script> & Sons'
    async with opened(start_relay, tmp_path, name=name) as world:
        _, token = await world.add_recipient("<img src=x onerror=alert(1)>@ex<b>.org")
        status, page, _ = await world.get(token, headers=BROWSER)
        assert status == 200
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Sons" in page
        assert "&lt;***@ex&lt;b&gt;.org" in page
        assert "<script" not in page and "<img" not in page and "<b>" not in page
        status, page, _ = await world.post(token, data=ONE_CLICK)
        assert status == 200 and "&lt;script&gt;" in page and "<script" not in page
