"""A site's contacts, read-only: oldest first (as imported), a search, a tag and an
unsubscribed filter, 50 a page. Changes go through the admin API
(/api/v1/sites/{id}/contacts), whose CSV import this page points to.
"""

from __future__ import annotations

from aiohttp import web

from admin_http.dashboard.pages import page, page_number, pager
from admin_http.deps import api_of
from relay.contact_database import Search
from relay.core.addresses import control_character

PAGE_SIZE = 50
MAX_FILTER_CHARS = 254


def _filter(request: web.Request, name: str) -> str:
    text = request.query.get(name, "").strip()[:MAX_FILTER_CHARS]
    return "" if control_character(text) else text


async def contact_list(request: web.Request) -> web.Response:
    api = api_of(request)
    if api.contacts is None:
        raise web.HTTPNotFound()
    site = api.directory().site(request.match_info["id"])
    if site is None:
        raise web.HTTPNotFound()
    q, tag = _filter(request, "q"), _filter(request, "tag")
    state = request.query.get("unsubscribed", "")
    state = state if state in ("true", "false") else ""
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    search = Search(
        site_id=site.id,
        tag=tag or None,
        q=q or None,
        unsubscribed=None if not state else state == "true",
        offset=(page_no - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    found, total = await api.contacts.search(search)
    kept = {k: v for k, v in (("q", q), ("tag", tag), ("unsubscribed", state)) if v}
    path = f"/sites/{site.id}/contacts"
    return await page(
        request,
        "contacts.html",
        {
            "s": site,
            "contacts": found,
            "given": {"q": q, "tag": tag, "unsubscribed": state},
            "filtered": bool(kept),
            "pager": pager(path, kept, page_no, PAGE_SIZE, len(found), total),
        },
        section="sites",
        title=f"{site.name}: contacts",
    )
