"""The suppression lists: entries newest first with the site filter and a search, an add form
and a remove button per entry.

Adding and removing go through SuppressionController, as the admin API's
/api/v1/suppressions does (the same checks, written with their audit entry);
its problems come back as a flash error.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from admin_http.dashboard.pages import local_path, page, page_number, pager, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from relay.catalog_controller import Invalid, NotFound
from relay.suppression_controller import SuppressionController
from relay.suppression_database import Search

PAGE_SIZE = 50
MAX_Q_CHARS = 254  # an address is never longer


def _controller(request: web.Request) -> SuppressionController:
    controller = api_of(request).suppressions
    if controller is None:
        raise web.HTTPNotFound()
    return controller


async def suppression_list(request: web.Request) -> web.Response:
    api = api_of(request)
    sites = sorted(s.id for s in api.directory().sites)
    site = request.query.get("site", "")
    q = request.query.get("q", "").strip()[:MAX_Q_CHARS]
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    search = Search(
        site_id=site or None, q=q or None, offset=(page_no - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    entries, total = await _controller(request).list(search)
    kept = {k: v for k, v in (("site", site), ("q", q)) if v}
    here = "/suppressions?" + urlencode({**kept, "page": page_no})  # where a removal returns
    return await page(
        request,
        "suppressions.html",
        {
            "entries": entries,
            "sites": sites,
            "given": {"site": site, "q": q},
            "filtered": bool(kept),
            "now": api.clock(),
            "here": here,
            "pager": pager("/suppressions", kept, page_no, PAGE_SIZE, len(entries), total),
        },
        section="suppressions",
        title="Suppressions",
    )


async def add_suppression(request: web.Request) -> web.Response:
    form = await request.post()
    body: dict[str, object] = {
        "site": str(form.get("site", "")),
        "address": str(form.get("address", "")).strip(),
        "reason": str(form.get("reason", "")),
    }
    expires = str(form.get("expires_at", "")).strip()
    if expires:
        body["expires_at"] = expires  # a datetime-local input: UTC, as the form says
    try:
        added = await _controller(request).add(request[ACTOR], body)
    except Invalid as error:
        await flash(request, f"Not added: {'; '.join(error.problems)}", "error")
        return see_other("/suppressions")
    entry = added.entry
    done = "added" if added.created else "was listed already: its reason and expiry replaced"
    await flash(request, f"{entry.address} ({entry.site_id}) {done}.")
    return see_other("/suppressions")


async def remove_suppression(request: web.Request) -> web.Response:
    form = await request.post()
    back = local_path(str(form.get("back", "")), "/suppressions")
    site, address = str(form.get("site", "")), str(form.get("address", ""))
    try:
        await _controller(request).delete(request[ACTOR], site, address)
    except NotFound as error:
        await flash(request, f"Not removed: {error}", "error")
        return see_other(back)
    await flash(request, f"{address} ({site}) removed: mail to it is sent again.")
    return see_other(back)
