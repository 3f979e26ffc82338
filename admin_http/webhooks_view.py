"""/api/v1/webhooks: endpoints (relay/webhook_controller.py), their delivery log, replay, test.

A secret is in the answer of the POST that made it (and of rotate-secret),
never in any other: GET shows ``secret_set: true`` only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.errors import bad_request
from admin_http.middlewares import ACTOR
from admin_http.schemas import decode_cursor, encode_cursor, iso, json_body, managed_by, parse_time
from relay.webhook_controller import EndpointInfo, WebhookController
from relay.webhook_database import Delivery

MAX_LOG_PAGE = 200


def _controller(request: web.Request) -> WebhookController:
    controller = api_of(request).webhooks
    assert controller is not None
    return controller


def webhook_view(info: EndpointInfo) -> dict[str, Any]:
    e, s = info.endpoint, info.state
    return {
        "name": e.name,
        "url": e.url,
        "events": sorted(e.events),
        "sites": sorted(e.sites),
        "max_in_flight": e.max_in_flight,
        "secret_set": True,
        "enabled": s.enabled,
        "disabled_at": iso(s.disabled_at),
        "disabled_reason": s.disabled_reason,
        "failing_since": iso(s.failing_since),
        "last_success_at": iso(s.last_success_at),
        "managed_by": managed_by(e.managed_by_file),
    }


def delivery_view(d: Delivery) -> dict[str, Any]:
    return {
        "event_id": d.event_id,
        "event_type": d.event_type,
        "at": iso(d.at),
        "duration_ms": round(d.duration * 1000, 1),
        "status_code": d.status_code,
        "error": d.error,
        "response": d.response_head,
    }


async def list_webhooks(request: web.Request) -> web.Response:
    infos = await _controller(request).listing()
    return web.json_response({"items": [webhook_view(i) for i in infos], "total": len(infos)})


async def create_webhook(request: web.Request) -> web.Response:
    created = await _controller(request).create(request[ACTOR], await json_body(request))
    return web.json_response({**webhook_view(created.info), "secret": created.secret}, status=201)


async def get_webhook(request: web.Request) -> web.Response:
    info = await _controller(request).get(request.match_info["name"])
    return web.json_response(webhook_view(info))


async def patch_webhook(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    info = await _controller(request).update(request[ACTOR], name, await json_body(request))
    return web.json_response(webhook_view(info))


async def delete_webhook(request: web.Request) -> web.Response:
    await _controller(request).delete(request[ACTOR], request.match_info["name"])
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    secret = await _controller(request).rotate_secret(request[ACTOR], name)
    return web.json_response({"name": name, "secret": secret})


async def deliveries(request: web.Request) -> web.Response:
    """The tries newest first; ``cursor`` (a ``next_cursor``) goes on where a page ended."""
    size = _limit(request)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, int) if cursor else None
    found = await _controller(request).deliveries(request.match_info["name"], after, size + 1)
    page = found[:size]
    more = len(found) > size
    return web.json_response(
        {
            "items": [delivery_view(d) for d in page],
            "next_cursor": encode_cursor((page[-1].at, page[-1].id)) if more else None,
        }
    )


async def replay(request: web.Request) -> web.Response:
    """``{"since": ISO 8601 or UNIX seconds}``: every event given since then, queued again."""
    body = await json_body(request)
    since = body.get("since")
    if isinstance(since, bool) or not isinstance(since, str | int | float):
        raise bad_request("since: required, an ISO 8601 time or UNIX seconds")
    seconds = parse_time("since", str(since))
    count = await _controller(request).replay(request[ACTOR], request.match_info["name"], seconds)
    return web.json_response({"name": request.match_info["name"], "queued": count})


async def test(request: web.Request) -> web.Response:
    event_id = await _controller(request).test(request[ACTOR], request.match_info["name"])
    return web.json_response({"event_id": event_id}, status=202)


def _limit(request: web.Request) -> int:
    text = request.query.get("page_size", "50")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LOG_PAGE:
        raise bad_request(f"page_size: a whole number from 1 to {MAX_LOG_PAGE}")
    return int(text)
