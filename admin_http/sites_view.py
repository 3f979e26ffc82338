"""/api/v1/sites and their credentials."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import Api, api_of
from admin_http.errors import bad_request, not_found
from admin_http.middlewares import ACTOR
from admin_http.schemas import json_body, page_of, paged, site_view
from relay.core.model import Site


def _view(api: Api, site: Site) -> dict[str, Any]:
    credentials = [c for c in api.directory().credentials if c.site_id == site.id]
    return site_view(site, credentials)


def _site(api: Api, request: web.Request) -> Site:
    site_id = request.match_info["id"]
    site = api.directory().site(site_id)
    if site is None:
        raise not_found(f"no site {site_id!r}")
    return site


async def list_sites(request: web.Request) -> web.Response:
    api = api_of(request)
    page, size = page_of(request)
    return web.json_response(paged([_view(api, s) for s in api.directory().sites], page, size))


async def create_site(request: web.Request) -> web.Response:
    api = api_of(request)
    site = await api.catalog.create_site(request[ACTOR], await json_body(request))
    return web.json_response(_view(api, site), status=201)


async def get_site(request: web.Request) -> web.Response:
    api = api_of(request)
    return web.json_response(_view(api, _site(api, request)))


async def patch_site(request: web.Request) -> web.Response:
    api = api_of(request)
    _site(api, request)
    site = await api.catalog.update_site(
        request[ACTOR], request.match_info["id"], await json_body(request)
    )
    return web.json_response(_view(api, site))


async def delete_site(request: web.Request) -> web.Response:
    api = api_of(request)
    _site(api, request)
    await api.catalog.delete_site(request[ACTOR], request.match_info["id"])
    return web.Response(status=204)


async def create_credential(request: web.Request) -> web.Response:
    """The generated password is in this response only; the store keeps its hash."""
    api = api_of(request)
    site = _site(api, request)
    body = await json_body(request, required=False)
    username = body.get("username")
    if username is not None and not (
        isinstance(username, str)
        and 0 < len(username) <= 128
        and username.isprintable()
        and " " not in username
    ):
        raise bad_request("username: 1 to 128 printable characters without spaces")
    created = await api.catalog.add_credential(request[ACTOR], site.id, username)
    return web.json_response(
        {"site": created.site_id, "username": created.username, "password": created.password},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


async def delete_credential(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request)
    await api.catalog.delete_credential(request[ACTOR], site.id, request.match_info["username"])
    return web.Response(status=204)
