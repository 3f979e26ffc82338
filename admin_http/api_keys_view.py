"""/api/v1/sites/{id}/api-keys: a site's keys for the send API (the key is shown once)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from admin_http.schemas import iso, json_body, page_of, paged
from relay.api_key_controller import ApiKeyController, KeyInfo


def _controller(request: web.Request) -> ApiKeyController:
    controller = api_of(request).api_keys
    assert controller is not None
    return controller


def _view(key: KeyInfo) -> dict[str, Any]:
    return {
        "name": key.name,
        "managed_by": key.managed_by,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "last_used_at": iso(key.last_used_at),
    }


async def list_keys(request: web.Request) -> web.Response:
    page, size = page_of(request)
    keys = await _controller(request).list(request.match_info["id"])
    return web.json_response(paged([_view(k) for k in keys], page, size))


async def create_key(request: web.Request) -> web.Response:
    """The key is in this response only; the store keeps its hash."""
    body = await json_body(request)
    made = await _controller(request).create(request[ACTOR], request.match_info["id"], body)
    return web.json_response(
        {
            "site": made.site_id,
            "name": made.name,
            "key": made.key,
            "created_at": iso(made.created_at),
            "expires_at": iso(made.expires_at),
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )


async def delete_key(request: web.Request) -> web.Response:
    site_id, name = request.match_info["id"], request.match_info["name"]
    await _controller(request).delete(request[ACTOR], site_id, name)
    return web.Response(status=204)
