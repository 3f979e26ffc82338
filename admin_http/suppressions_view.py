"""/api/v1/suppressions: the sites' suppression lists (relay/suppression_controller.py).

POST answers 201 for a new entry and 200 when the address was listed already
(its reason, source and expiry replaced): adding is idempotent.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from admin_http.schemas import iso, json_body, listing, page_of
from relay.suppression_controller import SuppressionController
from relay.suppression_database import Entry, Search


def _controller(request: web.Request) -> SuppressionController:
    controller = api_of(request).suppressions
    assert controller is not None
    return controller


def entry_view(entry: Entry) -> dict[str, Any]:
    return {
        "site": entry.site_id,
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "message_id": entry.message_id,
        "created_at": iso(entry.created_at),
        "expires_at": iso(entry.expires_at),
    }


async def list_suppressions(request: web.Request) -> web.Response:
    page, size = page_of(request)
    search = Search(
        site_id=request.query.get("site") or None,
        q=request.query.get("q") or None,
        offset=(page - 1) * size,
        limit=size,
    )
    entries, total = await _controller(request).list(search)
    return web.json_response(listing([entry_view(e) for e in entries], total, page, size))


async def add_suppression(request: web.Request) -> web.Response:
    body = await json_body(request)
    added = await _controller(request).add(request[ACTOR], body)
    return web.json_response(entry_view(added.entry), status=201 if added.created else 200)


async def delete_suppression(request: web.Request) -> web.Response:
    site_id, address = request.match_info["site"], request.match_info["address"]
    await _controller(request).delete(request[ACTOR], site_id, address)
    return web.Response(status=204)
