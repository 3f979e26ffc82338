"""Sites (landing pages, apps): their From and Reply-To policy, senders, upstream order,
limits and today's use; SMTP credentials and send-API keys, each secret shown once.

A new password or key is in the answer to the POST that made it and nowhere
else (not in a redirect, not in the session; the page is ``no-store``).
Sites declared in the file are read-only here; their SMTP credentials live
in the file too, while API keys may be added to any site (as the API does).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from admin_http.dashboard.charts import hourly_chart, usage_bars
from admin_http.dashboard.overview_view import CHART_HOURS, start_of_day
from admin_http.dashboard.pages import page, page_of, see_other
from admin_http.dashboard.session import flash
from admin_http.dashboard.snippet import form_snippet
from admin_http.deps import Api, api_of
from admin_http.middlewares import ACTOR
from relay.api_key_controller import ApiKeyController
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.config import is_loopback
from relay.core.model import Site


def _site(api: Api, site_id: str) -> Site:
    site = api.directory().site(site_id)
    if site is None:
        raise NotFound(f"No site {site_id!r}.")
    return site


def _keys(api: Api) -> ApiKeyController:
    assert api.api_keys is not None
    return api.api_keys


async def site_list(request: web.Request) -> web.Response:
    api = api_of(request)
    stats = await api.reports.stats(start_of_day(api.clock(), api.config().limits.timezone))
    by_id = {s.site_id: (s, quota) for s, quota in stats.sites}
    sites, pages = page_of(request, sorted(api.directory().sites, key=lambda s: s.id), "/sites")
    rows = []
    for site in sites:
        found = by_id.get(site.id)
        rows.append(
            {
                "site": site,
                "today": found[0] if found else None,
                "usage": usage_bars(found[1]) if found else [],
            }
        )
    return await page(
        request,
        "sites.html",
        {"rows": rows, "pager": pages, "config_path": str(api.config().path)},
        section="sites",
        title="Sites",
    )


async def site_page(request: web.Request) -> web.Response:
    return await _render(request, {})


async def create_credential(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    form = await request.post()
    username = str(form.get("username", "")).strip() or None
    try:
        made = await api.catalog.add_credential(request[ACTOR], site.id, username)
    except (Conflict, Invalid) as error:
        return await _refused(request, site, error)
    return await _render(request, {"new_credential": made})


async def delete_credential(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    username = request.match_info["username"]
    await api.catalog.delete_credential(request[ACTOR], site.id, username)
    await flash(request, f"Credential {username} deleted: it cannot log in any more.")
    return see_other(f"/sites/{quote(site.id, safe='')}")


async def create_key(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    form = await request.post()
    body: dict[str, Any] = {"name": str(form.get("name", "")).strip()}
    if expires := str(form.get("expires_at", "")).strip():
        body["expires_at"] = expires
    try:
        made = await _keys(api).create(request[ACTOR], site.id, body)
    except (Conflict, Invalid) as error:
        return await _refused(request, site, error)
    return await _render(request, {"new_key": made})


async def delete_key(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    name = request.match_info["name"]
    await _keys(api).delete(request[ACTOR], site.id, name)
    await flash(request, f"API key {name} deleted: requests with it are refused from now on.")
    return see_other(f"/sites/{quote(site.id, safe='')}")


async def _refused(request: web.Request, site: Site, error: Conflict | Invalid) -> web.Response:
    text = "; ".join(error.problems) if isinstance(error, Invalid) else str(error)
    await flash(request, f"Nothing made: {text}", "error")
    return see_other(f"/sites/{quote(site.id, safe='')}")


def _public_address(api: Api) -> tuple[str, bool]:
    """The relay's public HTTP address as a page would use it, and whether it is a guess."""
    http = api.config().http
    if http is None or not is_loopback(http.host) or http.port == 0:
        return "https://relay.example.com", True
    scheme = "https" if http.cert_file else "http"
    return f"{scheme}://{http.host}:{http.port}", False


async def _render(request: web.Request, made: dict[str, Any]) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    address, guessed = _public_address(api)
    snippet = form_snippet(address, site.id, site.form) if site.form else None
    directory = api.directory()
    stats = await api.reports.stats(start_of_day(api.clock(), api.config().limits.timezone))
    today = next(((s, q) for s, q in stats.sites if s.site_id == site.id), None)
    first_hour = (api.clock() // 3600 - CHART_HOURS + 1) * 3600
    hours = await api.reports.hourly(first_hour, CHART_HOURS, site.id)
    return await page(
        request,
        "site.html",
        {
            "s": site,
            "credentials": [c for c in directory.credentials if c.site_id == site.id],
            "keys": await _keys(api).list(site.id),
            "upstreams": [(name, directory.upstream(name)) for name in site.upstreams],
            "today": today[0] if today else None,
            "usage": usage_bars(today[1]) if today else [],
            "config_path": str(api.config().path),
            "snippet": snippet,
            "chart": hourly_chart(hours),
            "address_guessed": guessed,
            "has_http": api.config().http is not None,
            "new_credential": None,
            "new_key": None,
            **made,
        },
        section="sites",
        title=site.name,
    )


LIMITS = ("rate_per_minute", "daily_limit", "monthly_limit")


def _site_spec(form: Any, *, editing: bool) -> dict[str, Any]:
    """The API's site body from the form; lists are comma- or line-separated, in order.
    Editing, an empty field is null (JSON merge patch: back to the default)."""
    body: dict[str, Any] = {"name": str(form.get("name", "")).strip()}
    sender: dict[str, Any] = {"email": str(form.get("from_email", "")).strip()}
    if from_name := str(form.get("from_name", "")).strip():
        sender["name"] = from_name
    body["from"] = sender
    policy = str(form.get("reply_to", "original"))
    address = str(form.get("reply_to_address", "")).strip()
    body["reply_to"] = address if policy == "address" else policy
    for key in ("senders", "upstreams"):
        items = [i.strip() for i in str(form.get(key, "")).replace("\n", ",").split(",")]
        body[key] = [i for i in items if i]
    for key in LIMITS:
        text = str(form.get(key, "")).strip()
        if text:
            body[key] = int(text) if text.isascii() and text.isdigit() else text
        elif editing:
            body[key] = None
    return body


def _site_values(form: Any) -> dict[str, Any]:
    keys = ("id", "name", "from_email", "from_name", "reply_to", "reply_to_address")
    return {k: str(form.get(k, "")) for k in (*keys, "senders", "upstreams", *LIMITS)}


def _values_of(site: Site) -> dict[str, Any]:
    return {
        "id": site.id,
        "name": site.name,
        "from_email": site.from_email,
        "from_name": site.from_name or "",
        "reply_to": "address" if site.reply_to_address else site.reply_to.value,
        "reply_to_address": site.reply_to_address or "",
        "senders": ", ".join(site.senders),
        "upstreams": ", ".join(site.upstreams),
        **{k: "" if getattr(site, k) is None else str(getattr(site, k)) for k in LIMITS},
    }


async def new_site(request: web.Request) -> web.Response:
    empty = {k: "" for k in ("id", "name", "from_email", "from_name", "reply_to_address")}
    return await _site_form(request, None, {**empty, "reply_to": "original"}, [])


async def create_site(request: web.Request) -> web.Response:
    api = api_of(request)
    form = await request.post()
    site_id = str(form.get("id", "")).strip()
    try:
        await api.catalog.create_site(
            request[ACTOR], {"id": site_id, **_site_spec(form, editing=False)}
        )
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        return await _site_form(request, None, _site_values(form), problems, status=422)
    await flash(request, f"Site {site_id} added: give it a credential or an API key below.")
    return see_other(f"/sites/{quote(site_id, safe='')}")


async def edit_site(request: web.Request) -> web.Response:
    site = _site(api_of(request), request.match_info["id"])
    return await _site_form(request, site, _values_of(site), [])


async def save_site(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    form = await request.post()
    try:
        await api.catalog.update_site(request[ACTOR], site.id, _site_spec(form, editing=True))
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        values = {**_site_values(form), "id": site.id}
        return await _site_form(request, site, values, problems, status=422)
    await flash(request, f"Site {site.id} saved.")
    return see_other(f"/sites/{quote(site.id, safe='')}")


async def _site_form(
    request: web.Request,
    site: Site | None,
    values: dict[str, Any],
    problems: list[str],
    status: int = 200,
) -> web.Response:
    api = api_of(request)
    return await page(
        request,
        "site_form.html",
        {
            "site": site,
            "v": {"senders": "", "upstreams": "", **{k: "" for k in LIMITS}, **values},
            "problems": problems,
            "upstream_names": [u.name for u in api.directory().upstreams],
            "config_path": str(api.config().path),
        },
        section="sites",
        title=f"Edit {site.name}" if site else "New site",
        status=status,
    )


async def move_upstream(request: web.Request) -> web.Response:
    """POST /sites/{id}/upstreams/{name}/up|down: one step in the failover order."""
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    name, direction = request.match_info["name"], request.match_info["direction"]
    order = list(site.upstreams)
    if name not in order:
        raise NotFound(f"Site {site.id} does not list the upstream {name!r}.")
    at = order.index(name)
    to = at - 1 if direction == "up" else at + 1
    if 0 <= to < len(order):
        order[at], order[to] = order[to], order[at]
        await api.catalog.update_site(request[ACTOR], site.id, {"upstreams": order})
        await flash(request, f"Failover order: {', '.join(order)}.")
    return see_other(f"/sites/{quote(site.id, safe='')}")


async def delete_site(request: web.Request) -> web.Response:
    api = api_of(request)
    site = _site(api, request.match_info["id"])
    await api.catalog.delete_site(request[ACTOR], site.id)
    await flash(request, f"Site {site.id} deleted: its credentials and keys no longer work.")
    return see_other("/sites")
