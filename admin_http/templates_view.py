"""/api/v1/templates: named subject, text and html parts, and their preview."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.errors import bad_request
from admin_http.middlewares import ACTOR
from admin_http.schemas import iso, json_body, page_of, paged
from relay.template_controller import TemplateController, TemplateInfo


def _controller(request: web.Request) -> TemplateController:
    controller = api_of(request).templates
    assert controller is not None, "the relay builds the admin API with its TemplateController"
    return controller


def _summary(info: TemplateInfo) -> dict[str, Any]:
    return {
        "name": info.template.name,
        "managed_by": info.source,
        "updated_at": iso(info.updated_at),
    }


def _view(info: TemplateInfo) -> dict[str, Any]:
    t = info.template
    return {**_summary(info), "subject": t.subject, "text": t.text, "html": t.html}


async def list_templates(request: web.Request) -> web.Response:
    page, size = page_of(request)
    infos = await _controller(request).listing()
    return web.json_response(paged([_summary(i) for i in infos], page, size))


async def create_template(request: web.Request) -> web.Response:
    info = await _controller(request).create(request[ACTOR], await json_body(request))
    return web.json_response(_view(info), status=201)


async def get_template(request: web.Request) -> web.Response:
    return web.json_response(_view(await _controller(request).get(request.match_info["name"])))


async def put_template(request: web.Request) -> web.Response:
    return await _update(request, merge=False)


async def patch_template(request: web.Request) -> web.Response:
    return await _update(request, merge=True)


async def _update(request: web.Request, *, merge: bool) -> web.Response:
    info = await _controller(request).update(
        request[ACTOR], request.match_info["name"], await json_body(request), merge=merge
    )
    return web.json_response(_view(info))


async def delete_template(request: web.Request) -> web.Response:
    await _controller(request).delete(request[ACTOR], request.match_info["name"])
    return web.Response(status=204)


async def preview_template(request: web.Request) -> web.Response:
    body = await json_body(request, required=False)
    unknown = sorted(set(body) - {"variables"})
    if unknown:
        raise bad_request(f'unknown keys {unknown}: the body is {{"variables": {{...}}}}')
    variables = body.get("variables", {})
    if not isinstance(variables, dict):
        raise bad_request("variables: must be a JSON object")
    rendered = await _controller(request).preview(request.match_info["name"], variables)
    return web.json_response(
        {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
    )
