"""Upstreams: circuit state, quota use, success rate and latency; the connection test.

Upstreams declared in the config file are shown read-only with the reason
(the file is their source: change it there and reload); testing one changes
nothing, so every upstream can be tested.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.dashboard.charts import usage_bars
from admin_http.dashboard.pages import page
from admin_http.deps import Api, api_of
from admin_http.middlewares import ACTOR
from relay.catalog_controller import NotFound
from relay.core.health import Circuit
from relay.probe_controller import ProbeReport

DAY_SECONDS = 86_400.0


async def _rows(api: Api) -> list[dict[str, Any]]:
    now = api.clock()
    stats = await api.reports.stats(now - DAY_SECONDS)
    by_name = {s.upstream: (s, quota) for s, quota in stats.upstreams}
    rows = []
    for upstream in sorted(api.directory().upstreams, key=lambda u: (u.priority, u.name)):
        found = by_name.get(upstream.name)
        rows.append(
            {
                "upstream": upstream,
                "circuit": api.health.circuits.get(upstream.name) or Circuit(),
                "stats": found[0] if found else None,
                "usage": usage_bars(found[1]) if found else [],
            }
        )
    return rows


async def upstream_list(request: web.Request) -> web.Response:
    return await _render(request, None, None)


async def test_connection(request: web.Request) -> web.Response:
    """Connect, EHLO, STARTTLS, AUTH with the time of each step and the exact error."""
    api = api_of(request)
    name = request.match_info["name"]
    upstream = api.directory().upstream(name)
    if upstream is None:
        raise NotFound(f"No upstream {name!r}.")
    report = await api.probes.probe(upstream)
    await api.catalog.record(request[ACTOR], "test", "upstream", upstream.name)
    return await _render(request, upstream.name, report)


async def _render(
    request: web.Request, tested: str | None, report: ProbeReport | None
) -> web.Response:
    api = api_of(request)
    return await page(
        request,
        "upstreams.html",
        {
            "rows": await _rows(api),
            "tested": tested,
            "report": report,
            "config_path": str(api.config().path),
        },
        section="upstreams",
        title="Upstreams",
    )
