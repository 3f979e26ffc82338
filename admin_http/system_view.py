"""Health, readiness, metrics, reload, the audit log and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from admin_http.deps import DEPS, api_of
from admin_http.errors import error_response
from admin_http.middlewares import ACTOR
from admin_http.openapi import document
from admin_http.schemas import iso, listing, page_of
from relay.metrics import CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[DEPS].readiness()
    if problems:
        return error_response(503, "not_ready", "; ".join(problems))
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DEPS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def reload(request: web.Request) -> web.Response:
    """Re-read the config file; a broken one is refused (422) and the running config stays."""
    api = api_of(request)
    result = api.reload()
    if result.problems:
        return error_response(
            422,
            "invalid_config",
            f"{api.config().path} has problems; the running configuration stays",
            result.problems,
        )
    await api.catalog.record(request[ACTOR], "reload", "config", str(api.config().path))
    return web.json_response(
        {
            "status": "reloaded",
            "restart_needed": result.restart_needed,
            "warnings": result.warnings,
        }
    )


async def audit(request: web.Request) -> web.Response:
    api = api_of(request)
    page, size = page_of(request)
    entries, total = await api.catalog.audit(page, size)
    items = [
        {
            "at": iso(e.at),
            "token": e.token,
            "action": e.action,
            "kind": e.kind,
            "target": e.target,
            "detail": e.detail,
        }
        for e in entries
    ]
    return web.json_response(listing(items, total, page, size))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
