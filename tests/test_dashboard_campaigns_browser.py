"""The campaign pages in a real browser (Debian's chromium through Playwright) over a real
relay, its store (SQLite) and a sink upstream that refuses one address.

An admin logs in, opens the list, then a draft campaign's page; the campaign is started
through the admin API and the page's script notices (it reloads: a Pause button); the bar
and the counts move without a reload while the relay sends at 300 a minute; Pause makes it
paused, Cancel asks first; the recipients list filters by status and links to messages.
No console error (a CSP violation is one), no failed request. Screenshots go to
/tmp/dashboard-campaign*.png for a person to look at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser import Tab, browser, tab
from tests.campaign_world import TOKEN, Admin, add_contacts, campaign_body, campaign_config
from tests.conftest import RunningRelay, Sink
from tests.test_dashboard_browser_functional import Watch

__all__ = ["browser", "tab"]  # fixtures
pytestmark = pytest.mark.slow
REFUSED = "person5@example.org"
LONG_NAME = "December news: the winter catalogue for our best customers in every city we ship to"


async def value_now(page: Any) -> int:
    return int(
        await page.locator("[data-campaign-progress] [role=progressbar]").get_attribute(
            "aria-valuenow"
        )
    )


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


async def test_a_campaign_page_shows_live_progress_and_pauses_and_cancels(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    make_sink: Callable[..., Awaitable[Sink]],
    tab: Tab,
) -> None:
    sink = await make_sink(replies={"rcpt": {REFUSED: "550 5.1.1 no such user"}})
    relay = await start_relay(campaign_config(tmp_path, sink))
    await add_contacts(
        relay.app.engine, "shop", 150, lambda i: ["news"] if i < 12 else [], lambda i: i % 10 == 7
    )
    base = f"http://127.0.0.1:{relay.app.admin_port}"
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, relay.app.admin_port)
        small = await admin.ok("POST", "/api/v1/campaigns", campaign_body(name="Welcome"), 201)
        await admin.ok("POST", f"/api/v1/campaigns/{small['id']}/start")
        await admin.ok(
            "POST", "/api/v1/campaigns", campaign_body(name="Spring (draft)", audience="all"), 201
        )
        big = await admin.ok(
            "POST",
            "/api/v1/campaigns",
            campaign_body(name=LONG_NAME, audience="all", rate_per_minute=300),
            201,
        )
        path = f"/campaigns/{big['id']}"

        watch, page = Watch(tab), tab.page
        await page.goto(base + "/login?next=/campaigns")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(base + "/campaigns")
        assert await page.locator("table.campaigns tbody tr").count() == 3
        assert await page.locator(".sidebar a.active").inner_text() == "Campaigns"

        await page.click(f"a:text-is('{LONG_NAME}')")
        await page.wait_for_url(base + path)
        assert await value_now(page) == 0
        assert await page.locator("button:text-is('Start now')").count() == 1
        # Started elsewhere (the API): the page's script sees the new status and reloads.
        await admin.ok("POST", f"/api/v1/campaigns/{big['id']}/start")
        await page.wait_for_selector("button:text-is('Pause')", timeout=10_000)
        live = page.locator("[data-live-state]")
        await until(lambda: _has(live, "Live: updated"), "the page polls")

        # The bar and the numbers move with no reload (the same document throughout).
        marker = await page.evaluate("() => (window.relayMarker = Math.random())")
        seen = [await value_now(page)]
        async with asyncio.timeout(20):
            while len(set(seen)) < 3:
                await asyncio.sleep(0.5)
                seen.append(await value_now(page))
        assert seen == sorted(seen), seen
        assert await page.evaluate("() => window.relayMarker") == marker
        sent = int((await page.locator("[data-field=sent]").inner_text()).replace("\u202f", ""))
        assert sent > 0
        width = float(await page.locator("rect[data-segment=sent]").get_attribute("width") or "0")
        assert 0 < width < 100
        await until(lambda: _has(page.locator("[data-field=rate_now]"), "/ min"), "a rate now")
        eta = await page.locator("[data-field=eta_text]").inner_text()
        assert eta.endswith((" s", " min")), eta  # the server's, from core.campaigns
        await watch.shot("campaign")  # mid-run

        await page.click("button:text-is('Pause')")
        await page.wait_for_selector(".flash-ok")
        assert "paused" in await page.locator(".panel-head .badge").first.inner_text()
        assert (await admin.campaign(big["id"]))["status"] == "paused"
        assert await page.locator("button:text-is('Resume')").count() == 1
        watch.check("campaign-paused")

        await page.goto(base + path + "?status=skipped#recipients")
        rows = page.locator("table.recipients tbody tr")
        assert await rows.count() >= 1
        skipped = await page.locator("table.recipients").inner_text()
        # The small campaign's refusal suppressed REFUSED for the site: skipped here too.
        assert "unsubscribed" in skipped and "suppressed: 550" in skipped
        await page.goto(base + path + "?status=sent#recipients")
        await page.locator("table.recipients tbody tr a:text-is('open')").first.click()
        await page.wait_for_url(base + "/messages/*")
        await page.go_back()
        await page.goto(base + f"/campaigns/{small['id']}?status=failed#recipients")
        await until(lambda: _small_final(admin, small["id"]), "the small campaign ends", 20)
        await page.reload()
        failed = page.locator("table.recipients tbody tr")
        assert REFUSED in await failed.first.inner_text()
        assert "550" in await failed.first.inner_text()
        await watch.shot("campaign-recipients")

        await page.goto(base + path)
        await page.click("a:text-is('Cancel…')")
        await page.wait_for_selector(".confirm")
        await watch.shot("campaign-cancel")
        await page.click("button:text-is('Cancel the campaign')")
        await page.wait_for_selector(".flash-ok")
        assert (await admin.campaign(big["id"]))["status"] == "cancelled"
        assert await live.inner_text() == "Finished."
        await page.goto(base + "/campaigns")
        await watch.shot("campaigns")
        await page.click("a:text-is('New campaign')")
        await page.wait_for_url(base + "/campaigns/new")
        await watch.shot("campaign-new")


async def _has(locator: Any, text: str) -> bool:
    return text in await locator.inner_text()


async def _small_final(admin: Admin, campaign_id: str) -> bool:
    return (await admin.campaign(campaign_id))["status"] == "completed"
