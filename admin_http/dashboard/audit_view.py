"""The audit log: every change made through the API or the dashboard, newest first."""

from __future__ import annotations

import json

from aiohttp import web

from admin_http.dashboard.pages import page, page_number, pager
from admin_http.deps import api_of

PAGE_SIZE = 50


async def audit(request: web.Request) -> web.Response:
    api = api_of(request)
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    entries, total = await api.catalog.audit(page_no, PAGE_SIZE)
    rows = [
        {
            "entry": e,
            "detail": json.dumps(e.detail, sort_keys=True, ensure_ascii=False) if e.detail else "",
        }
        for e in entries
    ]
    return await page(
        request,
        "audit.html",
        {"rows": rows, "pager": pager("/audit", {}, page_no, PAGE_SIZE, len(entries), total)},
        section="audit",
        title="Audit log",
    )
