"""/api/v1/messages: search, one message in full (recipients, attempts, header diff), retry;
/api/v1/queue/flush."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.errors import bad_request, not_found
from admin_http.middlewares import ACTOR
from admin_http.schemas import (
    attempt_view,
    decode_cursor,
    encode_cursor,
    iso,
    listing,
    page_of,
    query_time,
)
from relay.core.model import MessageStatus
from relay.message_log_database import MessageQuery, MessageSummary
from relay.reports_controller import FullMessage


def summary_view(m: MessageSummary) -> dict[str, Any]:
    return {
        "id": m.id,
        "site": m.site_id,
        "status": m.status.value,
        "message_class": m.message_class.value,
        "original_sender": m.original_sender,
        "envelope_sender": m.envelope_sender,
        "subject": m.subject,
        "size": m.size,
        "recipients": list(m.recipients),
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
        "next_attempt_at": iso(m.next_attempt_at),
        "attempt_count": m.attempt_count,
        "last_error": m.last_error,
    }


def full_view(full: FullMessage) -> dict[str, Any]:
    d, h = full.detail, full.headers
    return {
        "id": d.id,
        "site": d.site_id,
        "status": d.status.value,
        "message_class": h.message_class.value,
        "original_sender": h.original_sender,
        "envelope_sender": d.envelope_sender,
        "subject": d.subject,
        "size": h.size,
        "content_deleted": h.content_deleted_at is not None,
        "content_deleted_at": iso(h.content_deleted_at),
        "created_at": iso(h.created_at),
        "next_attempt_at": iso(h.next_attempt_at),
        "attempt_count": d.attempt_count,
        "last_error": d.last_error,
        "recipients": [
            {
                "address": r.address,
                "status": r.status.value,
                "upstream": r.upstream,
                "reply_code": r.reply_code,
                "reply_text": r.reply_text,
            }
            for r in d.recipients
        ],
        "attempts": [attempt_view(a) for a in d.attempts],
        "provider_events": [
            {
                "received_at": iso(e.received_at),
                "occurred_at": iso(e.occurred_at),
                "upstream": e.upstream,
                "recipient": e.recipient,
                "kind": e.kind,
                "raw_type": e.raw_type,
                "smtp_code": e.reply.code if e.reply else None,
                "smtp_text": e.reply.text if e.reply else None,
                "detail": e.detail,
            }
            for e in d.reported
        ],
        "webhook_events": [
            {
                "id": n.event_id,
                "type": n.type,
                "webhook": n.webhook,
                "status": n.status,
                "created_at": iso(n.created_at),
                "attempt_count": n.attempt_count,
                "last_error": n.last_error,
            }
            for n in d.notified
        ],
        "header_changes": [
            {"name": c.name, "change": c.change, "before": list(c.before), "after": list(c.after)}
            for c in full.changes
        ],
        "headers": {
            "original": h.original.decode("utf-8", errors="replace"),
            "sent": h.sent.decode("utf-8", errors="replace"),
        },
    }


async def search(request: web.Request) -> web.Response:
    """The log newest first; ``cursor`` (a ``next_cursor``) goes on where a page ended."""
    api = api_of(request)
    page, size = page_of(request)
    cursor_text = request.query.get("cursor")
    cursor = decode_cursor(cursor_text, str) if cursor_text else None
    if cursor is not None and page != 1:
        raise bad_request("cursor and page: give one of them")
    status_text = request.query.get("status")
    if status_text and status_text not in {s.value for s in MessageStatus}:
        raise bad_request(f"status: one of {', '.join(s.value for s in MessageStatus)}")
    query = MessageQuery(
        status=MessageStatus(status_text) if status_text else None,
        site=request.query.get("site") or None,
        upstream=request.query.get("upstream") or None,
        recipient=request.query.get("recipient") or None,
        q=request.query.get("q") or None,
        since=query_time(request, "since"),
        until=query_time(request, "until"),
        page=page,
        page_size=size,
        cursor=cursor,
    )
    found = await api.reports.search(query)
    return web.json_response(
        {
            **listing([summary_view(m) for m in found.items], found.total, page, size),
            "total_exact": found.total_exact,
            "next_cursor": encode_cursor(found.next_cursor) if found.next_cursor else None,
            "complete": found.complete,
        }
    )


async def get_message(request: web.Request) -> web.Response:
    api = api_of(request)
    message_id = request.match_info["id"]
    full = await api.reports.message(message_id)
    if full is None:
        raise not_found(f"no message {message_id!r}")
    return web.json_response(full_view(full))


async def retry(request: web.Request) -> web.Response:
    """Due now: a waiting or held message is tried at once (409 when it is final)."""
    api = api_of(request)
    message_id = request.match_info["id"]
    status = await api.queue.retry(message_id)
    if status is None:
        raise not_found(f"no message {message_id!r}")
    await api.catalog.record(request[ACTOR], "retry", "message", message_id)
    return web.json_response({"id": message_id, "status": status.value})


async def flush(request: web.Request) -> web.Response:
    """Every waiting message due now, every open circuit closed (an upstream is back)."""
    api = api_of(request)
    flushed = await api.queue.flush()
    await api.catalog.record(request[ACTOR], "flush", "queue", "queue")
    return web.json_response({"messages": flushed.messages, "upstreams": flushed.upstreams})
