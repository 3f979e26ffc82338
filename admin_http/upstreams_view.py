"""/api/v1/upstreams: CRUD (delete is soft), test, activate, deactivate, stats."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import Api, api_of
from admin_http.errors import bad_request, not_found
from admin_http.middlewares import ACTOR
from admin_http.schemas import (
    iso,
    json_body,
    page_of,
    paged,
    query_time,
    upstream_view,
)
from admin_http.stats_view import upstream_stats_view, window_start
from relay.core.addresses import is_address
from relay.core.model import Upstream
from relay.probe_controller import ProbeReport


def _view(api: Api, upstream: Upstream) -> dict[str, Any]:
    measured = api.performance.figures if api.performance else {}
    return upstream_view(
        upstream, api.health.circuits.get(upstream.name), measured.get(upstream.name)
    )


async def _measured(api: Api) -> None:
    """Fresh figures from the store (the cache is kept fresh only while routing reads it)."""
    if api.performance is not None:
        await api.performance.refresh(always=True)


def _upstream(api: Api, request: web.Request) -> Upstream:
    name = request.match_info["name"]
    upstream = api.directory().upstream(name)
    if upstream is None:
        raise not_found(f"no upstream {name!r}")
    return upstream


async def list_upstreams(request: web.Request) -> web.Response:
    api = api_of(request)
    page, size = page_of(request)
    await _measured(api)
    items = [_view(api, u) for u in api.directory().upstreams]
    return web.json_response(paged(items, page, size))


async def create_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    upstream = await api.catalog.create_upstream(request[ACTOR], await json_body(request))
    return web.json_response(_view(api, upstream), status=201)


async def get_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    upstream = _upstream(api, request)
    await _measured(api)
    return web.json_response(_view(api, upstream))


async def patch_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    name = request.match_info["name"]
    _upstream(api, request)
    upstream = await api.catalog.update_upstream(request[ACTOR], name, await json_body(request))
    return web.json_response(_view(api, upstream))


async def delete_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    _upstream(api, request)
    await api.catalog.delete_upstream(request[ACTOR], request.match_info["name"])
    return web.Response(status=204)


async def activate(request: web.Request) -> web.Response:
    return await _set_active(request, True)


async def deactivate(request: web.Request) -> web.Response:
    return await _set_active(request, False)


async def _set_active(request: web.Request, active: bool) -> web.Response:
    api = api_of(request)
    _upstream(api, request)
    upstream = await api.catalog.set_upstream_active(
        request[ACTOR], request.match_info["name"], active
    )
    return web.json_response(_view(api, upstream))


async def probe_upstream(request: web.Request) -> web.Response:
    """Connect, TLS, AUTH with timings; with ``{"to": address}`` also send a test message."""
    api = api_of(request)
    upstream = _upstream(api, request)
    body = await json_body(request, required=False)
    to, sender = body.get("to"), body.get("from")
    for key, value in (("to", to), ("from", sender)):
        if value is not None and not (isinstance(value, str) and is_address(value)):
            raise bad_request(f"{key}: not an email address")
    report = await api.probes.probe(upstream, to, sender)
    target = upstream.name + (f" -> {to}" if to else "")
    detail = {"to": to, "from": sender or api.probes.default_sender} if to else {}
    await api.catalog.record(request[ACTOR], "test", "upstream", target, detail)
    return web.json_response(probe_view(report))


def probe_view(report: ProbeReport) -> dict[str, Any]:
    check = report.check
    view: dict[str, Any] = {
        "ok": check.ok and (report.sent is None or _sent_ok(report)),
        "stage": check.stage.value,
        "detail": check.detail,
        "steps": [{"step": step, "ms": round(seconds * 1000, 1)} for step, seconds in check.steps],
        "message": None,
    }
    if report.sent is not None:
        sent = report.sent
        view["message"] = {
            "id": report.message_id,
            "accepted": _sent_ok(report),
            "stage": sent.stage.value,
            "reply": sent.reply.render() if sent.reply else None,
            "detail": sent.summary,
            "ms": round((report.send_seconds or 0) * 1000, 1),
        }
    return view


def _sent_ok(report: ProbeReport) -> bool:
    sent = report.sent
    return bool(sent and sent.transport_error is None and sent.reply and sent.reply.is_success)


async def upstream_stats(request: web.Request) -> web.Response:
    api = api_of(request)
    upstream = _upstream(api, request)
    since = window_start(request, api.clock())
    stats = await api.reports.stats(since, query_time(request, "until"), upstream.name)
    found = next(item for item in stats.upstreams if item[0].upstream == upstream.name)
    return web.json_response(
        {"since": iso(stats.since), "until": iso(stats.until), **upstream_stats_view(*found)}
    )
