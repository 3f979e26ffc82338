"""Webhook endpoints: the list, a new endpoint (its secret shown once), an endpoint's page with
its settings, actions and delivery log.

Every change goes through WebhookController, as /api/v1/webhooks does (the
same checks, the same audit entries); its problems come back as a flash
error or beside the form. A secret is in the answer to the POST that made
it (create, rotate) and nowhere else: not in a redirect, not in the session;
pages are ``no-store``. The file's endpoints are read-only here except for
being enabled and disabled (state, not configuration), as through the API.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from admin_http.dashboard.pages import local_path, page, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.errors import ApiError
from admin_http.middlewares import ACTOR
from admin_http.schemas import decode_cursor, encode_cursor, parse_time
from relay.catalog_controller import Conflict, Invalid
from relay.core.outbound_events import SUBSCRIBABLE
from relay.webhook_controller import EndpointInfo, WebhookController

LOG_PAGE_SIZE = 50
REPLAY_DEFAULT_SECONDS = 3600  # the replay form proposes the last hour
EVENT_TYPES = sorted(SUBSCRIBABLE)


def _controller(request: web.Request) -> WebhookController:
    controller = api_of(request).webhooks
    if controller is None:
        raise web.HTTPNotFound()
    return controller


def _path(name: str) -> str:
    return f"/webhooks/{quote(name, safe='')}"


def _problems(error: Invalid | Conflict) -> list[str]:
    return error.problems if isinstance(error, Invalid) else [str(error)]


async def webhook_list(request: web.Request) -> web.Response:
    api = api_of(request)
    return await page(
        request,
        "webhooks.html",
        {"infos": await _controller(request).listing(), "config_path": str(api.config().path)},
        section="webhooks",
        title="Webhooks",
    )


async def webhook_page(request: web.Request) -> web.Response:
    return await _render(request, None)


async def _render(request: web.Request, new_secret: str | None) -> web.Response:
    api = api_of(request)
    controller = _controller(request)
    info = await controller.get(request.match_info["name"])
    name = info.endpoint.name
    cursor = request.query.get("cursor")
    found = await controller.deliveries(
        name, decode_cursor(cursor, int) if cursor else None, LOG_PAGE_SIZE + 1
    )
    shown = found[:LOG_PAGE_SIZE]
    older = None
    if len(found) > LOG_PAGE_SIZE:
        last = encode_cursor((shown[-1].at, shown[-1].id))
        older = f"{_path(name)}?" + urlencode({"cursor": last})
    since = dt.datetime.fromtimestamp(api.clock() - REPLAY_DEFAULT_SECONDS, dt.UTC)
    return await page(
        request,
        "webhook.html",
        {
            "info": info,
            "e": info.endpoint,
            "state": info.state,
            "default_in_flight": api.config().events.max_in_flight,
            "deliveries": shown,
            "paged": cursor is not None,
            "older": older,
            "replay_since": since.strftime("%Y-%m-%dT%H:%M"),
            "new_secret": new_secret,
            "config_path": str(api.config().path),
        },
        section="webhooks",
        title=f"Webhook {name}",
    )


# -- New and edit


def _spec(form: Any, *, editing: bool) -> dict[str, Any]:
    """The API's webhook body from the form. No event or site ticked: all (an empty list)."""
    body: dict[str, Any] = {
        "url": str(form.get("url", "")).strip(),
        "events": [str(v) for v in form.getall("events", [])],
        "sites": [str(v) for v in form.getall("sites", [])],
    }
    text = str(form.get("max_in_flight", "")).strip()
    if text:  # a number that is not one goes through as text, for the controller to name
        body["max_in_flight"] = int(text) if text.isascii() and text.isdigit() else text
    elif editing:
        body["max_in_flight"] = None  # JSON merge patch: back to events.max_in_flight
    return body


def _values(form: Any) -> dict[str, Any]:
    """What the admin gave, to show again beside the problems."""
    return {
        "name": str(form.get("name", "")),
        "url": str(form.get("url", "")),
        "events": [str(v) for v in form.getall("events", [])],
        "sites": [str(v) for v in form.getall("sites", [])],
        "max_in_flight": str(form.get("max_in_flight", "")),
    }


def _values_of(info: EndpointInfo) -> dict[str, Any]:
    e = info.endpoint
    return {
        "name": e.name,
        "url": e.url,
        "events": sorted(e.events),
        "sites": sorted(e.sites),
        "max_in_flight": "" if e.max_in_flight is None else str(e.max_in_flight),
    }


async def new_webhook(request: web.Request) -> web.Response:
    empty = {"name": "", "url": "", "events": [], "sites": [], "max_in_flight": ""}
    return await _form(request, None, empty, [])


async def create_webhook(request: web.Request) -> web.Response:
    form = await request.post()
    body = {"name": str(form.get("name", "")).strip(), **_spec(form, editing=False)}
    try:
        created = await _controller(request).create(request[ACTOR], body)
    except (Invalid, Conflict) as error:
        return await _form(request, None, _values(form), _problems(error), status=422)
    return await page(
        request,
        "webhook_created.html",
        {"e": created.info.endpoint, "secret": created.secret},
        section="webhooks",
        title=f"Webhook {created.info.endpoint.name}",
    )


async def edit_webhook(request: web.Request) -> web.Response:
    info = await _controller(request).get(request.match_info["name"])
    return await _form(request, info, _values_of(info), [])


async def save_webhook(request: web.Request) -> web.Response:
    controller = _controller(request)
    info = await controller.get(request.match_info["name"])
    name = info.endpoint.name
    form = await request.post()
    try:
        await controller.update(request[ACTOR], name, _spec(form, editing=True))
    except (Invalid, Conflict) as error:
        values = {**_values(form), "name": name}
        return await _form(request, info, values, _problems(error), status=422)
    await flash(request, f"Webhook {name} saved.")
    return see_other(_path(name))


async def _form(
    request: web.Request,
    info: EndpointInfo | None,
    values: dict[str, Any],
    problems: list[str],
    status: int = 200,
) -> web.Response:
    api = api_of(request)
    return await page(
        request,
        "webhook_form.html",
        {
            "info": info,
            "v": values,
            "problems": problems,
            "event_types": EVENT_TYPES,
            "site_ids": sorted({s.id for s in api.directory().sites} | set(values["sites"])),
            "default_in_flight": api.config().events.max_in_flight,
            "config_path": str(api.config().path),
        },
        section="webhooks",
        title=f"Edit webhook {info.endpoint.name}" if info else "New webhook",
        status=status,
    )


# -- Actions


async def set_enabled(request: web.Request) -> web.Response:
    """POST /webhooks/{name}/enable|disable (the file's endpoints too: that is state)."""
    name = request.match_info["name"]
    form = await request.post()
    back = local_path(str(form.get("back", "")), _path(name))
    enabled = request.match_info["action"] == "enable"
    await _controller(request).update(request[ACTOR], name, {"enabled": enabled})
    done = (
        "enabled: its waiting events are sent now"
        if enabled
        else "disabled: it gets no events; they wait until it is enabled"
    )
    await flash(request, f"Webhook {name} {done}.")
    return see_other(back)


async def send_test(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    form = await request.post()
    back = local_path(str(form.get("back", "")), _path(name))
    try:
        event_id = await _controller(request).test(request[ACTOR], name)
    except Conflict as error:
        await flash(request, f"No test sent: {error}", "error")
        return see_other(back)
    await flash(
        request,
        f"Test event {event_id} queued for {name}: its try appears in the delivery log.",
    )
    return see_other(back)


async def replay(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    form = await request.post()
    text = str(form.get("since", "")).strip()
    try:
        since = parse_time("since", text)  # a datetime-local input: UTC, as the form says
    except ApiError as error:
        await flash(request, f"Nothing replayed: {error.message}", "error")
        return see_other(_path(name))
    count = await _controller(request).replay(request[ACTOR], name, since)
    when = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    noun = "event" if count == 1 else "events"
    await flash(request, f"{count} {noun} given to {name} since {when} UTC queued again.")
    return see_other(_path(name))


async def rotate_secret(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        secret = await _controller(request).rotate_secret(request[ACTOR], name)
    except Conflict as error:
        await flash(request, f"Secret not changed: {error}", "error")
        return see_other(_path(name))
    return await _render(request, secret)


async def confirm_delete(request: web.Request) -> web.Response:
    info = await _controller(request).get(request.match_info["name"])
    return await page(
        request,
        "webhook_delete.html",
        {"e": info.endpoint, "config_path": str(api_of(request).config().path)},
        section="webhooks",
        title="Delete a webhook",
    )


async def delete_webhook(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        await _controller(request).delete(request[ACTOR], name)
    except Conflict as error:
        await flash(request, f"Not deleted: {error}", "error")
        return see_other(_path(name))
    await flash(request, f"Webhook {name} deleted: its waiting events are dropped.")
    return see_other("/webhooks")
