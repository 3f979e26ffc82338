"""Messages: the log with the API's filters and pages, one message in full, retry."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from admin_http.dashboard.bodies import bodies
from admin_http.dashboard.pages import page, page_number, pager, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from admin_http.schemas import parse_time
from relay.catalog_controller import NotFound
from relay.core.model import MessageStatus
from relay.message_log_database import MessageQuery
from relay.queue_database import QueueConflict

PAGE_SIZES = (25, 50, 100, 200)  # offered; any size up to MAX_PAGE_SIZE is taken from a link
MAX_PAGE_SIZE = 200
FILTERS = ("status", "site", "upstream", "recipient", "q", "since", "until")


def _query(request: web.Request) -> tuple[MessageQuery, dict[str, str], list[str]]:
    """The query, the filters as given (for the form and the page links), and what was wrong."""
    given = {k: request.query.get(k, "").strip() for k in FILTERS}
    problems = []
    status = None
    if given["status"]:
        try:
            status = MessageStatus(given["status"])
        except ValueError:
            problems.append(f"unknown status {given['status']!r}")
            given["status"] = ""
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        times[name] = None
        if given[name]:
            try:
                times[name] = parse_time(name, given[name])
            except Exception as error:  # ApiError: shown above the table instead of a 400
                problems.append(str(error))
                given[name] = ""
    query = MessageQuery(
        status=status,
        site=given["site"] or None,
        upstream=given["upstream"] or None,
        recipient=given["recipient"] or None,
        q=given["q"] or None,
        since=times["since"],
        until=times["until"],
        page=page_number(request.query.get("page"), 1, range(1, 1_000_000)),
        page_size=page_number(request.query.get("page_size"), 50, range(1, MAX_PAGE_SIZE + 1)),
    )
    return query, given, problems


async def message_list(request: web.Request) -> web.Response:
    api = api_of(request)
    query, given, problems = _query(request)
    result = await api.reports.search(query)
    found, total = result.items, result.total
    kept = {k: v for k, v in given.items() if v}
    if query.page_size != 50:
        kept["page_size"] = str(query.page_size)
    directory = api.directory()
    return await page(
        request,
        "messages.html",
        {
            "messages": found,
            "total": total,
            "query": query,
            "given": given,
            "problems": problems,
            "pager": pager(
                "/messages",
                kept,
                query.page,
                query.page_size,
                len(found),
                total,
                result.total_exact,
            ),
            "statuses": [s.value for s in MessageStatus],
            "sites": [s.id for s in directory.sites],
            "upstream_names": [u.name for u in directory.upstreams],
            "page_sizes": sorted({*PAGE_SIZES, query.page_size}),
            "filtered": bool(kept.keys() - {"page_size"}),
        },
        section="messages",
        title="Messages",
    )


async def message_page(request: web.Request) -> web.Response:
    api = api_of(request)
    message_id = request.match_info["id"]
    full = await api.reports.message(message_id)
    stored = await api.reports.content(message_id)
    if full is None or stored is None:
        raise NotFound(f"No message {message_id!r}: it may have been removed by retention.")
    detail, headers = full.detail, full.headers
    shown = None if stored.deleted_at else await asyncio.to_thread(bodies, stored.content)
    waiting = detail.status in (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.HELD)
    context: dict[str, Any] = {
        "m": detail,
        "h": headers,
        "changes": full.changes,
        "can_retry": waiting,
        "original": headers.original.decode("utf-8", errors="replace"),
        "sent": headers.sent.decode("utf-8", errors="replace"),
        "bodies": shown,
        "deleted_at": stored.deleted_at,
    }
    return await page(request, "message.html", context, section="messages", title="Message")


async def preview(request: web.Request) -> web.Response:
    """The HTML part alone, for the sandboxed iframe of the message page: no script runs
    (CSP sandbox, and the iframe's sandbox attribute), nothing remote loads unless
    ``images=1`` (then remote images only), no referrer leaves."""
    content = await _content(request)
    shown = await asyncio.to_thread(bodies, content)
    images = "https: http:" if request.query.get("images") == "1" else ""
    policy = (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
        f"img-src data: cid: {images}; form-action 'none'; base-uri 'none'; "
        "frame-ancestors 'self'"
    )
    return web.Response(
        text=shown.html or "",
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": policy,
            "X-Frame-Options": "SAMEORIGIN",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


async def eml(request: web.Request) -> web.Response:
    """The message as it went out, to save and open in a mail program."""
    content = await _content(request)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.match_info["id"])
    return web.Response(
        body=content,
        content_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="{name}.eml"',
            "Cache-Control": "no-store",
        },
    )


async def _content(request: web.Request) -> bytes:
    message_id = request.match_info["id"]
    stored = await api_of(request).reports.content(message_id)
    if stored is None:
        raise NotFound(f"No message {message_id!r}.")
    if stored.deleted_at is not None:
        raise NotFound("Retention deleted this message's body; its header block is kept.")
    return stored.content


async def retry(request: web.Request) -> web.Response:
    api = api_of(request)
    message_id = request.match_info["id"]
    try:
        status = await api.queue.retry(message_id)
    except QueueConflict as error:
        await flash(request, str(error), "error")
        return see_other(f"/messages/{quote(message_id, safe='')}")
    if status is None:
        raise NotFound(f"No message {message_id!r}.")
    await api.catalog.record(request[ACTOR], "retry", "message", message_id)
    await flash(request, "Retry scheduled: the message is due now.")
    return see_other(f"/messages/{quote(message_id, safe='')}")
