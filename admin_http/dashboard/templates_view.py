"""Templates: list, create, edit and delete the API's (the file's are read-only), and preview
any of them with variables, the rendered HTML in a sandboxed iframe; the live preview renders
the editor's parts as typed, through the same controller, sandbox and deadline.

Saving goes through TemplateController, so a template that does not compile
is refused with its problems (the API's 422), never stored.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from admin_http.dashboard.pages import page, page_of, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.core.compose import Rendered
from relay.template_controller import TemplateController

PARTS = ("subject", "text", "html")
MAX_VARIABLES_CHARS = 20_000


def _controller(request: web.Request) -> TemplateController:
    controller = api_of(request).templates
    assert controller is not None
    return controller


def _parts(form: Any) -> dict[str, str]:
    """The parts given in the form; an empty one is left out (the template has none)."""
    return {p: str(form.get(p, "")) for p in PARTS if str(form.get(p, "")).strip()}


async def template_list(request: web.Request) -> web.Response:
    infos, pages = page_of(request, await _controller(request).listing(), "/templates")
    return await page(
        request,
        "templates.html",
        {"infos": infos, "pager": pages, "config_path": str(api_of(request).config().path)},
        section="templates",
        title="Templates",
    )


async def new_template(request: web.Request) -> web.Response:
    return await page(
        request,
        "template_new.html",
        {"given": {"name": "", "subject": "", "text": "", "html": ""}, "problems": []},
        section="templates",
        title="New template",
    )


async def create_template(request: web.Request) -> web.Response:
    form = await request.post()
    name = str(form.get("name", "")).strip()
    try:
        await _controller(request).create(request[ACTOR], {"name": name, **_parts(form)})
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        given = {"name": name, **{p: str(form.get(p, "")) for p in PARTS}}
        return await page(
            request,
            "template_new.html",
            {"given": given, "problems": problems},
            section="templates",
            title="New template",
            status=422,
        )
    await flash(request, f"Template {name} saved.")
    return see_other(f"/templates/{quote(name, safe='')}")


async def template_page(request: web.Request) -> web.Response:
    return await _render(request, None, [], "{}")


async def save_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    form = await request.post()
    try:
        await _controller(request).update(request[ACTOR], name, _parts(form), merge=False)
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        edited = {p: str(form.get(p, "")) for p in PARTS}
        return await _render(request, None, problems, "{}", edited=edited, status=422)
    await flash(request, f"Template {name} saved.")
    return see_other(f"/templates/{quote(name, safe='')}")


async def delete_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        await _controller(request).delete(request[ACTOR], name)
    except Conflict as error:
        await flash(request, str(error), "error")
        return see_other(f"/templates/{quote(name, safe='')}")
    await flash(request, f"Template {name} deleted.")
    return see_other("/templates")


async def preview(request: web.Request) -> web.Response:
    """POST: render with the variables given, and show subject, text and the HTML's frame."""
    form = await request.post()
    text = str(form.get("variables", "")).strip() or "{}"
    variables, problem = _variables(text)
    if problem:
        return await _render(request, None, [problem], text, status=422)
    try:
        rendered = await _controller(request).preview(request.match_info["name"], variables)
    except Invalid as error:
        return await _render(request, None, error.problems, text, status=422)
    return await _render(request, rendered, [], text)


async def preview_html(request: web.Request) -> web.Response:
    """The rendered HTML alone, for the sandboxed iframe: the message preview's policy."""
    variables, problem = _variables(request.query.get("variables", "{}"))
    if problem:
        raise web.HTTPBadRequest(reason=problem)
    rendered = await _controller(request).preview(request.match_info["name"], variables)
    return _sandboxed(rendered.html or "")


async def live_preview(request: web.Request) -> web.Response:
    """POST /templates/_preview: the editor's parts as typed (not saved) rendered, as JSON
    ``{subject, text, html, problems}``, for the preview that follows typing (the static
    script). Problems (JSON, syntax, an undefined variable, the deadline) are listed in a 200
    (the request worked; a typo on the way is no HTTP error): the page shows them as text."""
    try:
        rendered = await _draft(request)
    except Invalid as error:
        return _json({"subject": None, "text": None, "html": None, "problems": error.problems})
    fields = {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
    return _json({**fields, "problems": []})


async def live_preview_html(request: web.Request) -> web.Response:
    """POST /templates/_preview.html: the same render's HTML alone, posted by the live
    preview's hidden form into the sandboxed iframe (a URL could not carry the parts)."""
    try:
        rendered = await _draft(request)
    except Invalid:  # typed on meanwhile: the JSON answer shows the problems
        return _sandboxed("")
    return _sandboxed(rendered.html or "")


async def _draft(request: web.Request) -> Rendered:
    form = await request.post()
    variables, problem = _variables(str(form.get("variables", "")).strip() or "{}")
    if problem:
        raise Invalid([problem])
    return await _controller(request).preview_draft(_parts(form), variables)


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _sandboxed(html: str) -> web.Response:
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; form-action 'none'; base-uri 'none'; frame-ancestors 'self'",
            "X-Frame-Options": "SAMEORIGIN",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def _variables(text: str) -> tuple[dict[str, Any], str | None]:
    if len(text) > MAX_VARIABLES_CHARS:
        return {}, f"variables: at most {MAX_VARIABLES_CHARS} characters"
    try:
        value = json.loads(text)
    except ValueError as error:
        return {}, f"variables: not JSON ({error})"
    if not isinstance(value, dict):
        return {}, 'variables: a JSON object, such as {"first_name": "Ada"}'
    return value, None


async def _render(
    request: web.Request,
    rendered: Any,
    problems: list[str],
    variables: str,
    *,
    edited: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    name = request.match_info["name"]
    try:
        info = await _controller(request).get(name)
    except NotFound:
        raise NotFound(f"No template {name!r}.") from None
    t = info.template
    parts = edited or {p: getattr(t, p) or "" for p in PARTS}
    frame = None
    if rendered is not None and rendered.html:
        frame = f"/templates/{quote(name, safe='')}/preview.html?" + urlencode(
            {"variables": variables}
        )
    return await page(
        request,
        "template.html",
        {
            "info": info,
            "parts": parts,
            "problems": problems,
            "variables": variables,
            "rendered": rendered,
            "frame": frame,
            "config_path": str(api_of(request).config().path),
        },
        section="templates",
        title=t.name,
        status=status,
    )
