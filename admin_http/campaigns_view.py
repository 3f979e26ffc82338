"""/api/v1/campaigns: create, list, show, start/pause/resume/cancel, recipients, delete.

POST makes a ``draft`` (or ``scheduled``, with ``schedule_at``: it starts by itself then);
``start`` starts one now. A change not allowed from the current status is 409, saying
which statuses allow it. Times are ISO 8601 in answers; ``schedule_at`` is taken as ISO
8601 or UNIX seconds, as the API's other times.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.errors import ApiError, bad_request
from admin_http.schemas import iso, listing, page_of, parse_json
from relay.campaign_controller import CampaignController
from relay.campaign_database import RecipientRow
from relay.core.campaigns import Action, Campaign, eta_seconds, measured_rate

MAX_CAMPAIGN_BODY_BYTES = 40 * 1024 * 1024  # the send API's (public_http/send_view.py)


def _controller(request: web.Request) -> CampaignController:
    controller = api_of(request).campaigns
    assert controller is not None
    return controller


def campaign_view(c: Campaign, now: float) -> dict[str, Any]:
    measured = measured_rate(c.sent_count, c.started_at, c.finished_at or now)
    remaining = max(c.total_contacts - c.reached, 0) + c.queued_count
    return {
        "id": c.id,
        "name": c.name,
        "status": c.status.value,
        "total_contacts": c.total_contacts,
        "queued_count": c.queued_count,
        "sent_count": c.sent_count,
        "failed_count": c.failed_count,
        "skipped_count": c.skipped_count,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
        "site": c.site_id,
        "audience": c.audience.to_json(),
        "template": c.template,
        "subject": c.subject,
        "rate_per_minute": c.rate_per_minute,
        "schedule_at": iso(c.schedule_at),
        "started_at": iso(c.started_at),
        "finished_at": iso(c.finished_at),
        "all_contacts_reached": c.generated,
        "note": c.last_error,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in c.attachments
        ],
        "rate_per_minute_measured": round(measured, 1) if measured is not None else None,
        "eta_seconds": eta_seconds(remaining, c.rate_per_minute, measured)
        if c.status.value == "in_progress"
        else None,
    }


def recipient_view(r: RecipientRow) -> dict[str, Any]:
    return {
        "email": r.email,
        "contact_id": r.contact_id,
        "status": r.status,
        "reason": r.reason,
        "message_id": r.message_id,
        "updated_at": iso(r.updated_at),
    }


async def _campaign_body(request: web.Request) -> dict[str, Any]:
    """The JSON object, up to the send API's body cap (attachments in base64): read from the
    stream here, past the admin app's 1 MB ``client_max_size`` that covers every other route
    (this one is reached only with an admin token)."""
    if request.content_length is not None and request.content_length > MAX_CAMPAIGN_BODY_BYTES:
        raise ApiError(413, "too_large", f"the body is over {MAX_CAMPAIGN_BODY_BYTES} bytes")
    chunks, size = [], 0
    while chunk := await request.content.read(65_536):
        size += len(chunk)
        if size > MAX_CAMPAIGN_BODY_BYTES:
            raise ApiError(413, "too_large", f"the body is over {MAX_CAMPAIGN_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("a JSON object is required as the body")
    value = (
        await asyncio.to_thread(parse_json, raw, "the body")
        if size > 65_536
        else (parse_json(raw, "the body"))
    )
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


async def create_campaign(request: web.Request) -> web.Response:
    body = await _campaign_body(request)
    created = await _controller(request).create(body)
    return web.json_response({"id": created.id, "status": created.status.value}, status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    page, size = page_of(request)
    found, total = await _controller(request).listing(
        request.query.get("site") or None,
        request.query.get("status") or None,
        (page - 1) * size,
        size,
    )
    now = api_of(request).clock()
    return web.json_response(listing([campaign_view(c, now) for c in found], total, page, size))


async def get_campaign(request: web.Request) -> web.Response:
    found = await _controller(request).get(request.match_info["id"])
    return web.json_response(campaign_view(found, api_of(request).clock()))


async def delete_campaign(request: web.Request) -> web.Response:
    await _controller(request).delete(request.match_info["id"])
    return web.Response(status=204)


async def recipients(request: web.Request) -> web.Response:
    page, size = page_of(request)
    rows, total = await _controller(request).recipients(
        request.match_info["id"], request.query.get("status") or None, (page - 1) * size, size
    )
    return web.json_response(listing([recipient_view(r) for r in rows], total, page, size))


def _action(action: Action) -> Any:
    async def handle(request: web.Request) -> web.Response:
        changed = await _controller(request).act(request.match_info["id"], action)
        return web.json_response(campaign_view(changed, api_of(request).clock()))

    handle.__name__ = f"{action.value}_campaign"
    return handle


start_campaign = _action(Action.START)
pause_campaign = _action(Action.PAUSE)
resume_campaign = _action(Action.RESUME)
cancel_campaign = _action(Action.CANCEL)
