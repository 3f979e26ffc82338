"""The dashboard's read-only contacts page of a site over a real relay: what the admin API
imported, the filters and the pager, hostile text rendered inert, and the site page's link.

An aiohttp client with a cookie jar plays the browser (tests/test_dashboard_functional.py).
"""

from __future__ import annotations

from tests.test_dashboard_functional import TOKEN, Browser, browser, relay

__all__ = ["browser", "relay"]  # fixtures

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}


async def import_csv(browser: Browser, text: str) -> None:
    url = f"{browser.base}/api/v1/sites/shop/contacts"
    async with browser.session.post(url, data=text.encode(), headers=AUTH) as reply:
        assert reply.status == 200, await reply.text()


async def test_a_sites_contacts_page(browser: Browser) -> None:
    await browser.log_in()
    status, html, _ = await browser.get("/sites/shop/contacts")
    assert status == 200 and "No contacts yet" in html
    rows = "".join(f"c{n}@example.com,Name{n},{'vip' if n % 2 else 'news'}\n" for n in range(60))
    hostile = "evil@example.com,<script>alert(1)</script><b>Bold</b>,<i>vip\n"
    await import_csv(browser, "email,first_name,tags\n" + rows + hostile)

    status, html, headers = await browser.get("/sites/shop/contacts")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert "1\u201350 of 61" in html
    assert html.index("c0@example.com") < html.index("c1@example.com")  # in import order
    assert "c50@example.com" not in html
    _, html, _ = await browser.get("/sites/shop/contacts?page=2")
    assert "51\u201361 of 61" in html and "c50@example.com" in html
    assert "<script>alert" not in html and "<b>Bold</b>" not in html
    assert "&lt;b&gt;Bold&lt;/b&gt;" in html and "&lt;i&gt;vip" in html

    _, html, _ = await browser.get("/sites/shop/contacts?tag=vip&q=c1")
    assert "c1@example.com" in html and "c10@example.com" not in html  # c10 is news
    assert 'value="c1"' in html and 'value="vip"' in html
    _, html, _ = await browser.get("/sites/shop/contacts?unsubscribed=true")
    assert "No contact matches" in html

    status, _, _ = await browser.get("/sites/nosuch/contacts")
    assert status == 404
    _, html, _ = await browser.get("/sites/shop")
    assert 'href="/sites/shop/contacts"' in html
