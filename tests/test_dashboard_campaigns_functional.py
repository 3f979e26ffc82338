"""The dashboard's campaign pages over a real relay, a real store (SQLite) and a sink upstream:
the list, the campaign page and its progress.json (a session required, JSON 401 without
one), start/pause/resume/cancel as CSRF-checked POSTs through the campaign controller (a
change not allowed is a flash error), the cancel confirmation, the recipients by status with
links to their messages, and a campaign made with the New campaign form.

An aiohttp client with a cookie jar plays the browser (tests/test_dashboard_functional.py);
what the pages did is checked through the admin API, over the same controller.
"""

from __future__ import annotations

import html as markup
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.campaign_world import (
    FINAL,
    TOKEN,
    Admin,
    add_contacts,
    campaign_body,
    campaign_config,
    wait_until,
)
from tests.conftest import RunningRelay, Sink
from tests.test_dashboard_functional import OUR_SCRIPT, Browser

FLASH = re.compile(r'<div class="flash flash-(\w+)" role="status">(.*?)</div>', re.S)
PROGRESSBAR = re.compile(r'role="progressbar"[^>]*aria-valuenow="(\d+)"')


@pytest.fixture
async def relay(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    make_sink: Callable[..., Awaitable[Sink]],
) -> RunningRelay:
    sink = await make_sink()
    relay = await start_relay(campaign_config(tmp_path, sink))
    await add_contacts(relay.app.engine, "shop", 30, lambda i: ["news"] if i < 20 else [])
    return relay


@pytest.fixture
async def http(relay: RunningRelay) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def browser(relay: RunningRelay, http: aiohttp.ClientSession) -> Browser:
    return Browser(http, f"http://127.0.0.1:{relay.app.admin_port}")


@pytest.fixture
async def admin(relay: RunningRelay, http: aiohttp.ClientSession) -> Admin:
    return Admin(http, relay.app.admin_port)


async def flash_after(browser: Browser, location: str) -> tuple[str, str, str]:
    status, page, _ = await browser.get(location)
    assert status == 200, page
    found = FLASH.search(page)
    assert found, page
    return found.group(1), markup.unescape(found.group(2)), page


async def progress(browser: Browser, campaign_id: str) -> Any:
    async with browser.session.get(
        f"{browser.base}/campaigns/{campaign_id}/progress.json", allow_redirects=False
    ) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/json"
        assert reply.headers["Cache-Control"] == "no-store"
        return await reply.json()


async def test_the_pages_and_progress_json_need_a_session(browser: Browser, admin: Admin) -> None:
    created = await admin.ok("POST", "/api/v1/campaigns", campaign_body(), 201)
    path = f"/campaigns/{created['id']}"
    async with browser.session.get(
        browser.base + path + "/progress.json", allow_redirects=False
    ) as reply:
        assert (reply.status, await reply.json()) == (401, {"error": "not logged in"})
    for page in ("/campaigns", path, path + "/cancel"):
        status, _, headers = await browser.get(page)
        assert status == 303 and headers["Location"].startswith("/login?next="), page
    # A POST needs the session's CSRF token before anything else, logged in or not.
    status, _, _ = await browser.post(path + "/start", {})
    assert status == 403
    await browser.log_in(TOKEN)
    status, page, _ = await browser.post(path + "/start", {"_csrf": "not-this-sessions"})
    assert status == 403 and "expired" in page
    assert (await admin.campaign(created["id"]))["status"] == "draft"


async def test_a_campaign_runs_from_its_page_and_its_progress_follows(
    browser: Browser, admin: Admin
) -> None:
    await browser.log_in(TOKEN)
    created = await admin.ok("POST", "/api/v1/campaigns", campaign_body(), 201)
    campaign_id = created["id"]
    path = f"/campaigns/{campaign_id}"

    status, page, _ = await browser.get("/campaigns")
    assert status == 200
    assert f'href="{path}"' in page and "December news" in page
    assert '<a href="/campaigns" class="active" aria-current="page">Campaigns</a>' in page
    assert "<script" not in page.replace(OUR_SCRIPT, "", 1)
    status, page, _ = await browser.get("/campaigns?status=completed")
    assert "No campaign matches these filters." in page

    status, page, _ = await browser.get(path)
    assert status == 200 and "<script" not in page.replace(OUR_SCRIPT, "", 1)
    assert PROGRESSBAR.search(page) and PROGRESSBAR.search(page).group(1) == "0"  # type: ignore[union-attr]
    assert f'data-campaign-progress="{path}/progress.json"' in page
    assert "Start now" in page and "None yet: the campaign has not started." in page
    before = await progress(browser, campaign_id)
    assert (before["status"], before["total"], before["done"], before["actions"]) == (
        "draft",
        20,
        0,
        ["start", "cancel"],
    )

    csrf = await browser.csrf(path)
    status, _, headers = await browser.post(path + "/start", {"_csrf": csrf})
    assert (status, headers["Location"]) == (303, path)
    kind, text, _ = await flash_after(browser, path)
    assert (kind, text) == ("ok", "Campaign December news started.")

    done = await wait_until(
        lambda: progress(browser, campaign_id), lambda p: p["final"], "the campaign completes", 60
    )
    assert (done["status"], done["sent"], done["done"], done["percent"]) == (
        "completed",
        20,
        20,
        100.0,
    )
    assert done["segments"][0] == {"kind": "sent", "x": 0.0, "width": 100.0}
    assert done["eta_text"] == "finished" and done["finished_at"] != "—"
    api_view = await admin.campaign(campaign_id)
    assert (api_view["sent_count"], api_view["total_contacts"]) == (done["sent"], done["total"])

    # A change the status does not allow: the controller's sentence, as a flash error.
    status, _, _ = await browser.post(path + "/pause", {"_csrf": csrf})
    assert status == 303
    kind, text, page = await flash_after(browser, path)
    assert kind == "error"
    assert text == (
        "Not paused: cannot pause a campaign that is completed "
        "(only one that is in_progress or scheduled)."
    )
    assert "Pause</button>" not in page and "Cancel…" not in page

    # Recipients: every one sent, each linked to its message, which opens.
    status, page, _ = await browser.get(path + "?status=sent")
    links = re.findall(r'href="(/messages/[^"]+)"', page)
    assert len(links) == 20
    status, message_page, _ = await browser.get(links[0])
    assert status == 200 and "person0@example.org" in message_page
    status, page, _ = await browser.get(path + "?status=failed")
    assert "No recipient is failed." in page


async def test_pause_resume_and_cancel_after_a_confirmation(browser: Browser, admin: Admin) -> None:
    await browser.log_in(TOKEN)
    body = campaign_body(rate_per_minute=60, audience="all")  # one a second: it stays running
    created = await admin.ok("POST", "/api/v1/campaigns", body, 201)
    campaign_id = created["id"]
    path = f"/campaigns/{campaign_id}"
    csrf = await browser.csrf(path)
    await browser.post(path + "/start", {"_csrf": csrf})
    running = await progress(browser, campaign_id)
    assert running["status"] == "in_progress" and running["eta_text"] != "finished"
    assert running["actions"] == ["pause", "cancel"]

    status, _, _ = await browser.post(path + "/pause", {"_csrf": csrf})
    kind, text, page = await flash_after(browser, path)
    assert (kind, text) == (
        "ok",
        "Campaign December news paused: its messages still waiting are held until it is resumed.",
    )
    assert "Resume</button>" in page
    assert (await admin.campaign(campaign_id))["status"] == "paused"
    await browser.post(path + "/resume", {"_csrf": csrf})
    assert (await admin.campaign(campaign_id))["status"] == "in_progress"

    status, page, _ = await browser.get(path + "/cancel")
    assert status == 200 and "Cancel the campaign December news?" in page
    assert (await admin.campaign(campaign_id))["status"] == "in_progress"  # a GET changes nothing
    await browser.post(path + "/cancel", {"_csrf": csrf})
    kind, text, page = await flash_after(browser, path)
    assert kind == "ok" and text.startswith("Campaign December news cancelled")
    cancelled = await admin.campaign(campaign_id)
    assert cancelled["status"] == "cancelled" and cancelled["status"] in FINAL
    assert (await progress(browser, campaign_id))["actions"] == []
    status, page, _ = await browser.get(path + "/cancel")
    assert "there is nothing to cancel" in page


async def test_the_new_campaign_form_makes_a_draft_and_names_its_problems(
    browser: Browser, admin: Admin
) -> None:
    await browser.log_in(TOKEN)
    status, page, _ = await browser.get("/campaigns/new")
    assert status == 200 and "<option selected>shop</option>" not in page
    csrf = await browser.csrf("/campaigns/new")
    form = {
        "_csrf": csrf,
        "name": "Spring",
        "site": "shop",
        "content": "parts",
        "subject": "Hi {{ first_name }}",
        "text": "Hello {{ first_name }}",
        "html": "",
        "audience": "tags",
        "tags": "news, vip",
        "rate_per_minute": "many",
        "schedule_at": "",
    }
    status, page, _ = await browser.post("/campaigns", form)
    assert status == 422
    assert "rate_per_minute: a whole number from 1 to 1000000" in markup.unescape(page)
    assert 'value="news, vip"' in page  # what was given is shown again

    status, _, headers = await browser.post("/campaigns", {**form, "rate_per_minute": "120"})
    assert status == 303
    campaign_id = headers["Location"].rsplit("/", 1)[1]
    kind, text, _ = await flash_after(browser, headers["Location"])
    assert (kind, text) == ("ok", "Campaign Spring created as a draft: press Start to send it.")
    made = await admin.campaign(campaign_id)
    assert (made["status"], made["audience"], made["rate_per_minute"]) == (
        "draft",
        {"tags": ["news", "vip"]},
        120,
    )
    assert made["subject"] == "Hi {{ first_name }}" and made["total_contacts"] == 20

    scheduled = {**form, "name": "Later", "rate_per_minute": "", "schedule_at": "2099-01-01T08:00"}
    status, _, headers = await browser.post("/campaigns", scheduled)
    made = await admin.campaign(headers["Location"].rsplit("/", 1)[1])
    assert (made["status"], made["schedule_at"]) == ("scheduled", "2099-01-01T08:00:00.000Z")
    status, page, _ = await browser.get("/campaigns?status=scheduled")
    assert "Later" in page and "Spring" not in page


async def test_the_list_pages_by_fifty_newest_first_and_filters_by_site(
    browser: Browser, admin: Admin
) -> None:
    for n in range(52):
        await admin.ok("POST", "/api/v1/campaigns", campaign_body(name=f"Issue {n:02d}"), 201)
    await browser.log_in(TOKEN)
    _, first, _ = await browser.get("/campaigns")
    names = re.findall(r'<a href="/campaigns/cmp_[^"]+">(Issue \d+)</a>', first)
    assert names == [f"Issue {n:02d}" for n in range(51, 1, -1)]
    assert "1\u201350 of 52" in first and 'href="/campaigns?page=2"' in first
    _, second, _ = await browser.get("/campaigns?page=2")
    assert re.findall(r">(Issue \d+)</a>", second) == ["Issue 01", "Issue 00"]
    _, none, _ = await browser.get("/campaigns?site=blog")
    assert "No campaign matches these filters." in none
    _, shop, _ = await browser.get("/campaigns?site=shop&status=draft&page=2")
    assert 'href="/campaigns?site=shop&amp;status=draft&amp;page=1"' in shop
