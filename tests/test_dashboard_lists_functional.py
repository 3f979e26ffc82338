"""The dashboard's small lists page like the big ones: sites, upstreams, domains and templates
made through the API beyond one page (50) are walked page by page, each seen once; a list
that fits one page shows no pager."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RunningRelay
from tests.test_dashboard_functional import TOKEN, Browser, relay

__all__ = ["relay"]  # the fixture
MADE = 51  # of each kind, through the API: with the file's, two pages
NAMES = {
    "/sites": re.compile(r'<a href="/sites/([^"]+)"><strong>'),
    "/upstreams": re.compile(r'<div class="row-head">\s*<h2>([^<]+)</h2>'),
    "/domains": re.compile(r'<a href="/domains/([^"]+)"><strong>'),
    "/templates": re.compile(r'<a href="/templates/([^"]+)"><strong>'),
}
NEXT = re.compile(r'<a class="button quiet" href="([^"]+)" rel="next">')


@pytest.fixture
async def browser(relay: RunningRelay) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        yield Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")


async def walk(browser: Browser, path: str) -> list[list[str]]:
    """The names on each page of a list, following "Next" (at most 5 pages)."""
    pages = []
    for _ in range(5):
        status, html, _ = await browser.get(path)
        assert status == 200, path
        pages.append(NAMES[path.split("?")[0]].findall(html))
        found = NEXT.search(html)
        if found is None:
            break
        path = found.group(1)
    return pages


async def test_every_small_list_pages_by_fifty(relay: RunningRelay, browser: Browser) -> None:
    await browser.log_in()
    for path in NAMES:
        _, html, _ = await browser.get(path)
        assert 'class="pager"' not in html, path  # one page: no pager
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bodies = {
        "upstreams": lambda n: {"name": f"u{n:02d}", "kind": "smtp", "host": "127.0.0.1"},
        "sites": lambda n: {"id": f"s{n:02d}", "name": f"S {n}", "from": {"email": "a@x.example"}},
        "domains": lambda n: {"name": f"d{n:02d}.example", "algorithm": "ed25519"},
        "templates": lambda n: {"name": f"t{n:02d}", "text": "Hello {{ name }}"},
    }
    for kind, body in bodies.items():
        for n in range(MADE):
            async with browser.session.post(
                f"{browser.base}/api/v1/{kind}", json=body(n), headers=auth
            ) as response:
                assert response.status == 201, await response.text()
    directory = relay.app.directory()
    every = {
        "/sites": sorted(s.id for s in directory.sites),
        "/upstreams": sorted(u.name for u in directory.upstreams),
        "/domains": sorted(d.name for d in directory.domains),
        "/templates": sorted(t.name for t in directory.templates),
    }
    for path, names in every.items():
        assert len(names) > 50, path
        pages = await walk(browser, path)
        assert [len(p) for p in pages] == [50, len(names) - 50], path
        assert sorted(pages[0] + pages[1]) == names, path  # each once, none missed
        _, html, _ = await browser.get(path)
        assert f"1\u201350 of {len(names)}" in html and "page 1 of 2" in html, path
        _, html, _ = await browser.get(path + "?page=9")  # past the end: the last page
        assert sorted(NAMES[path].findall(html)) == sorted(pages[1]), path
