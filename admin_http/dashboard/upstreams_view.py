"""Upstreams: circuit state, score, quota use, success rate and latency; the connection test.

Upstreams declared in the config file are shown read-only with the reason
(the file is their source: change it there and reload); testing one changes
nothing, so every upstream can be tested.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.dashboard.charts import upstream_chart, usage_bars
from admin_http.dashboard.pages import page, page_of, see_other
from admin_http.dashboard.session import flash
from admin_http.deps import api_of
from admin_http.middlewares import ACTOR
from admin_http.upstreams_view import probe_view
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.core.addresses import is_address
from relay.core.health import Circuit
from relay.core.model import Upstream
from relay.probe_controller import ProbeReport

DAY_SECONDS = 86_400.0
CHART_HOURS = 24
NUMBERS = ("port", "priority", "rate_per_minute", "daily_limit", "monthly_limit", "max_connections")
TEXTS = ("host", "username")
TLS_MODES = ("starttls", "implicit", "none")


async def _rows(request: web.Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """This page's upstreams (by priority, then name) with their numbers, and the pager."""
    api = api_of(request)
    now = api.clock()
    stats = await api.reports.stats(now - DAY_SECONDS)
    by_name = {s.upstream: (s, quota) for s, quota in stats.upstreams}
    first_hour = (now // 3600 - CHART_HOURS + 1) * 3600
    hourly = await api.reports.upstream_hourly(first_hour, CHART_HOURS)
    if api.performance is not None:  # fresh figures: routing may not be reading them
        await api.performance.refresh(always=True)
    measured = api.performance.figures if api.performance else {}
    ordered = sorted(api.directory().upstreams, key=lambda u: (u.priority, u.name))
    upstreams, pages = page_of(request, ordered, "/upstreams")
    rows = []
    for upstream in upstreams:
        found = by_name.get(upstream.name)
        rows.append(
            {
                "upstream": upstream,
                "circuit": api.health.circuits.get(upstream.name) or Circuit(),
                "performance": measured.get(upstream.name),
                "stats": found[0] if found else None,
                "usage": usage_bars(found[1]) if found else [],
                "chart": upstream_chart(hourly[upstream.name]) if upstream.name in hourly else None,
            }
        )
    return rows, pages


async def upstream_list(request: web.Request) -> web.Response:
    return await _render(request, None, None)


async def test_connection(request: web.Request) -> web.Response:
    """Connect, EHLO, STARTTLS, AUTH with the time of each step and the exact error; with
    ``to``, then a test message on a fresh connection, with the upstream's own reply."""
    api = api_of(request)
    upstream = _upstream(request)
    form = await request.post()
    to = str(form.get("to", "")).strip() or None
    if to is not None and not is_address(to):
        await flash(request, f"{to!r} is not an email address: no test was made.", "error")
        return see_other("/upstreams")
    report = await api.probes.probe(upstream, to)
    target = upstream.name + (f" -> {to}" if to else "")
    detail = {"to": to, "from": api.probes.default_sender} if to else {}
    await api.catalog.record(request[ACTOR], "test", "upstream", target, detail)
    return await _render(request, upstream.name, report)


async def set_active(request: web.Request) -> web.Response:
    """POST /upstreams/{name}/activate|deactivate (the API's; refused for the file's)."""
    api = api_of(request)
    upstream = _upstream(request)
    active = request.match_info["action"] == "activate"
    await api.catalog.set_upstream_active(request[ACTOR], upstream.name, active)
    state = "active: routing may choose it" if active else "inactive: routing skips it"
    await flash(request, f"Upstream {upstream.name} is {state}.")
    return see_other("/upstreams")


def _upstream(request: web.Request) -> Upstream:
    name = request.match_info["name"]
    upstream = api_of(request).directory().upstream(name)
    if upstream is None:
        raise NotFound(f"No upstream {name!r}.")
    return upstream


async def _render(
    request: web.Request, tested: str | None, report: ProbeReport | None
) -> web.Response:
    api = api_of(request)
    rows, pages = await _rows(request)
    return await page(
        request,
        "upstreams.html",
        {
            "rows": rows,
            "pager": pages,
            "tested": tested,
            "probe": probe_view(report) if report else None,
            "config_path": str(api.config().path),
        },
        section="upstreams",
        title="Upstreams",
    )


def _spec(form: Any, *, editing: bool) -> dict[str, Any]:
    """The API's upstream body from the form. Creating, an empty field is left out (its
    default); editing, it is null (JSON merge patch: back to the default). A number that is
    not one goes through as text, for the controller to name the problem."""
    body: dict[str, Any] = {"tls": str(form.get("tls", "starttls"))}
    body["verify_tls"] = form.get("verify_tls") == "on"
    for key in (*TEXTS, *NUMBERS):
        text = str(form.get(key, "")).strip()
        if text:
            body[key] = int(text) if key in NUMBERS and text.isascii() and text.isdigit() else text
        elif editing:
            body[key] = None
    password = str(form.get("password", ""))
    if password:  # editing: empty keeps the stored one
        body["password"] = password
    return body


def _form_values(form: Any) -> dict[str, Any]:
    """What the admin typed, to show again beside the problems (never the password)."""
    values = {key: str(form.get(key, "")) for key in ("name", *TEXTS, *NUMBERS)}
    values["tls"] = str(form.get("tls", "starttls"))
    values["verify_tls"] = form.get("verify_tls") == "on"
    return values


def _upstream_values(u: Upstream) -> dict[str, Any]:
    values: dict[str, Any] = {"name": u.name, "tls": u.tls.value, "verify_tls": u.verify_tls}
    for key in (*TEXTS, *NUMBERS):
        value = getattr(u, key)
        values[key] = "" if value is None else str(value)
    return values


async def new_upstream(request: web.Request) -> web.Response:
    defaults: dict[str, Any] = {key: "" for key in ("name", *TEXTS, *NUMBERS)}
    defaults.update(port="587", priority="10", tls="starttls", verify_tls=True)
    return await _form(request, None, defaults, [])


async def create_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    form = await request.post()
    name = str(form.get("name", "")).strip()
    body = {"name": name, "kind": "smtp", **_spec(form, editing=False)}
    try:
        await api.catalog.create_upstream(request[ACTOR], body)
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        return await _form(request, None, _form_values(form), problems, status=422)
    await flash(request, f"Upstream {name} added: test its connection below.")
    return see_other("/upstreams")


async def edit_upstream(request: web.Request) -> web.Response:
    upstream = _upstream(request)
    return await _form(request, upstream, _upstream_values(upstream), [])


async def save_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    upstream = _upstream(request)
    form = await request.post()
    try:
        await api.catalog.update_upstream(request[ACTOR], upstream.name, _spec(form, editing=True))
    except (Invalid, Conflict) as error:
        problems = error.problems if isinstance(error, Invalid) else [str(error)]
        values = {**_form_values(form), "name": upstream.name}
        return await _form(request, upstream, values, problems, status=422)
    await flash(request, f"Upstream {upstream.name} saved.")
    return see_other("/upstreams")


async def delete_upstream(request: web.Request) -> web.Response:
    api = api_of(request)
    upstream = _upstream(request)
    await api.catalog.delete_upstream(request[ACTOR], upstream.name)
    await flash(request, f"Upstream {upstream.name} deleted: routing no longer uses it.")
    return see_other("/upstreams")


async def _form(
    request: web.Request,
    upstream: Upstream | None,
    values: dict[str, Any],
    problems: list[str],
    status: int = 200,
) -> web.Response:
    return await page(
        request,
        "upstream_form.html",
        {
            "upstream": upstream,
            "v": values,
            "problems": problems,
            "tls_modes": TLS_MODES,
            "config_path": str(api_of(request).config().path),
        },
        section="upstreams",
        title=f"Edit {upstream.name}" if upstream else "New upstream",
        status=status,
    )
