"""The queue: messages waiting (deferred, queued) or held, and what an operator does to them.

Retry now, hold, release, delete (after a confirmation page) and flush
(everything due now, open circuits closed) go through QueueController, as
the admin API's retry and flush do, and are written to the audit log.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from admin_http.dashboard.pages import local_path, page, page_number, pager, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from relay.catalog_controller import NotFound
from relay.core.model import MessageStatus
from relay.message_log_database import MessageQuery
from relay.queue_database import QueueConflict

TABS = (MessageStatus.DEFERRED, MessageStatus.QUEUED, MessageStatus.HELD)
PAGE_SIZE = 50


async def queue(request: web.Request) -> web.Response:
    api = api_of(request)
    wanted = request.query.get("status", "")
    status = next((s for s in TABS if s.value == wanted), MessageStatus.DEFERRED)
    page_no = page_number(request.query.get("page"), 1, range(1, 1_000_000))
    result = await api.reports.search(
        MessageQuery(status=status, page=page_no, page_size=PAGE_SIZE)
    )
    found, total = result.items, result.total
    counts = {}
    for tab in TABS:
        counts[tab.value] = (
            total if tab is status else (await api.reports.search(MessageQuery(status=tab))).total
        )
    stats = await api.queue.stats()
    here = f"/queue?status={status.value}" + (f"&page={page_no}" if page_no > 1 else "")
    return await page(
        request,
        "queue.html",
        {
            "status": status.value,
            "tabs": [t.value for t in TABS],
            "counts": counts,
            "messages": found,
            "queue": stats,
            "oldest_age": stats.oldest_age(api.clock()),
            "here": here,
            "pager": pager(
                "/queue", {"status": status.value}, page_no, PAGE_SIZE, len(found), total
            ),
        },
        section="queue",
        title="Queue",
    )


async def act(request: web.Request) -> web.Response:
    """POST /queue/{id}/{action}: retry, hold or release one message."""
    api = api_of(request)
    message_id, action = request.match_info["id"], request.match_info["action"]
    form = await request.post()
    back = local_path(str(form.get("back", "")), "/queue")
    operations = {"retry": api.queue.retry, "hold": api.queue.hold, "release": api.queue.release}
    operation = operations.get(action)
    if operation is None:
        raise web.HTTPNotFound()
    try:
        status = await operation(message_id)
    except QueueConflict as error:
        await flash(request, str(error), "error")
        return see_other(back)
    if status is None:
        raise NotFound(f"No message {message_id!r}.")
    await api.catalog.record(request[ACTOR], action, "message", message_id)
    done = {"retry": "is due now", "hold": "is held", "release": "is released"}[action]
    await flash(request, f"Message {message_id} {done} ({status.value}).")
    return see_other(back)


async def confirm_delete(request: web.Request) -> web.Response:
    api = api_of(request)
    message_id = request.match_info["id"]
    full = await api.reports.message(message_id)
    if full is None:
        raise NotFound(f"No message {message_id!r}.")
    back = local_path(request.query.get("back"), "/queue")
    return await page(
        request,
        "confirm_delete.html",
        {"m": full.detail, "back": back},
        section="queue",
        title="Delete a message",
    )


async def delete(request: web.Request) -> web.Response:
    api = api_of(request)
    message_id = request.match_info["id"]
    form = await request.post()
    back = local_path(str(form.get("back", "")), "/queue")
    try:
        deleted = await api.queue.delete(message_id)
    except QueueConflict as error:
        await flash(request, str(error), "error")
        return see_other(f"/messages/{quote(message_id, safe='')}")
    if not deleted:
        raise NotFound(f"No message {message_id!r}.")
    await api.catalog.record(request[ACTOR], "delete", "message", message_id)
    await flash(request, f"Message {message_id} deleted.")
    return see_other(back)


async def flush(request: web.Request) -> web.Response:
    api = api_of(request)
    flushed = await api.queue.flush()
    await api.catalog.record(request[ACTOR], "flush", "queue", "queue")
    closed = f"; circuits closed: {', '.join(flushed.upstreams)}" if flushed.upstreams else ""
    await flash(request, f"{flushed.messages} waiting messages are due now{closed}.")
    return see_other("/queue")
