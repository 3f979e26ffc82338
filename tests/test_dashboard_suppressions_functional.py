"""The dashboard's suppression page over a real relay: the list (newest first, search, site
filter), adding and removing through the page with CSRF, the controller's problems shown
as a flash, and a hostile reason rendered inert.

An aiohttp client with a cookie jar plays the browser (tests/test_dashboard_functional.py);
entries are also added and read through the admin API, the same controller.
"""

from __future__ import annotations

import re
from typing import Any

from tests.test_dashboard_functional import TOKEN, Browser, browser, relay

__all__ = ["browser", "relay"]  # fixtures

API = "/api/v1/suppressions"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLASH = re.compile(r'<div class="flash flash-(\w+)" role="status">(.*?)</div>', re.S)


async def api_add(browser: Browser, **body: Any) -> None:
    async with browser.session.post(browser.base + API, json=body, headers=AUTH) as reply:
        assert reply.status == 201, await reply.text()


async def api_list(browser: Browser, query: str = "") -> list[str]:
    async with browser.session.get(f"{browser.base}{API}{query}", headers=AUTH) as reply:
        assert reply.status == 200
        return [e["address"] for e in (await reply.json())["items"]]


async def flash_after(browser: Browser, location: str) -> tuple[str, str]:
    _, html, _ = await browser.get(location)
    found = FLASH.search(html)
    assert found, html
    return found.group(1), found.group(2)


async def test_the_list_shows_the_apis_entries_newest_first_and_filters(
    browser: Browser,
) -> None:
    await browser.log_in()
    status, html, _ = await browser.get("/suppressions")
    assert status == 200 and "No suppressed addresses" in html
    await api_add(browser, site="shop", address="gone@example.org", reason="hard bounce")
    hostile = "<script>alert('x')</script> said so"
    await api_add(browser, site="shop", address="Ann@Example.org", reason=hostile)
    status, html, headers = await browser.get("/suppressions")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert html.index("ann@example.org") < html.index("gone@example.org")  # newest first
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; said so" in html
    assert "1\u20132 of 2" in html
    _, html, _ = await browser.get("/suppressions?q=GONE")
    assert "gone@example.org" in html and "ann@example.org" not in html
    assert "1\u20131 of 1" in html and 'value="GONE"' in html
    _, html, _ = await browser.get("/suppressions?site=shop")
    assert "gone@example.org" in html and "ann@example.org" in html
    _, html, _ = await browser.get("/suppressions?site=elsewhere")
    assert "No entry matches" in html and "gone@example.org" not in html
    # The sidebar has the page, after Queue.
    nav = html[html.index('aria-label="Sections"') :]
    assert nav.index('href="/queue"') < nav.index('href="/suppressions"')


async def test_adding_and_removing_through_the_page(browser: Browser) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/suppressions")
    form = {"site": "shop", "address": "Later@Example.org", "reason": "complained"}
    status, _, _ = await browser.post("/suppressions", form)
    assert status == 403  # no CSRF token: nothing happens
    assert await api_list(browser) == []
    form |= {"_csrf": csrf, "expires_at": "2099-06-30T12:00"}
    status, _, headers = await browser.post("/suppressions", form)
    assert status == 303 and headers["Location"] == "/suppressions"
    kind, text = await flash_after(browser, "/suppressions")
    assert kind == "ok" and "later@example.org (shop) added" in text
    async with browser.session.get(browser.base + API, headers=AUTH) as reply:
        (entry,) = (await reply.json())["items"]
    assert entry["address"] == "later@example.org" and entry["source"] == "manual"
    assert entry["expires_at"] == "2099-06-30T12:00:00.000Z"
    _, html, _ = await browser.get("/suppressions")
    assert "complained" in html and "Jun 30" in html

    # The controller's problems come back as a flash error, escaped.
    bad = {"_csrf": csrf, "site": "<b>nowhere</b>", "address": "not an address", "reason": ""}
    status, _, _ = await browser.post("/suppressions", bad)
    assert status == 303
    kind, text = await flash_after(browser, "/suppressions")
    assert kind == "error" and text.startswith("Not added:")
    assert "suppression.address: required, an email address" in text
    assert "suppression.reason: required" in text
    assert "&lt;b&gt;nowhere&lt;/b&gt;" in text and "<b>" not in text
    past = form | {"address": "x@example.org", "expires_at": "2001-01-01T00:00"}
    await browser.post("/suppressions", past)
    kind, text = await flash_after(browser, "/suppressions")
    assert kind == "error" and "must be in the future" in text
    assert await api_list(browser) == ["later@example.org"]

    # Remove: CSRF needed; then it is gone, and removing it again says so.
    remove = {"site": "shop", "address": "later@example.org", "back": "/suppressions?page=1"}
    assert (await browser.post("/suppressions/remove", remove))[0] == 403
    assert await api_list(browser) == ["later@example.org"]
    status, _, headers = await browser.post("/suppressions/remove", remove | {"_csrf": csrf})
    assert status == 303 and headers["Location"] == "/suppressions?page=1"
    kind, text = await flash_after(browser, "/suppressions")
    assert kind == "ok" and "later@example.org (shop) removed" in text
    assert await api_list(browser) == []
    await browser.post("/suppressions/remove", remove | {"_csrf": csrf})
    kind, text = await flash_after(browser, "/suppressions")
    assert kind == "error" and "has no suppression" in text
    # The audit log has both, under the session's token name.
    _, html, _ = await browser.get("/audit")
    assert "shop/later@example.org" in html


async def test_the_list_pages_by_fifty(browser: Browser) -> None:
    await browser.log_in()
    for number in range(55):
        await api_add(browser, site="shop", address=f"a{number:02}@example.org", reason="r")
    _, html, _ = await browser.get("/suppressions?q=example")
    assert "1\u201350 of 55" in html and "a54@example.org" in html and "a04@example.org" not in html
    assert 'href="/suppressions?q=example&amp;page=2"' in html
    _, html, _ = await browser.get("/suppressions?q=example&page=2")
    assert "51\u201355 of 55" in html and "a00@example.org" in html and "a54@" not in html
