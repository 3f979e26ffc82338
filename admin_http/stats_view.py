"""/api/v1/stats: per site and per upstream over a window, with quota use and the queue."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.schemas import iso, query_time
from relay.message_log_database import SiteStats, UpstreamStats
from relay.reports_controller import QuotaUse

DAY_SECONDS = 86_400.0


def window_start(request: web.Request, now: float) -> float:
    """``since``, else 24 hours ago."""
    since = query_time(request, "since")
    return now - DAY_SECONDS if since is None else since


def quota_view(quota: list[QuotaUse]) -> dict[str, Any]:
    return {
        q.window.value: {"used": q.used, "limit": q.limit, "ratio": round(q.used / q.limit, 4)}
        for q in quota
    }


def site_stats_view(s: SiteStats, quota: list[QuotaUse]) -> dict[str, Any]:
    return {
        "site": s.site_id,
        "accepted": s.accepted,
        "sent": s.sent,
        "failed": s.failed,
        "partial": s.partial,
        "deferred": s.deferred,
        "queued": s.queued,
        "held": s.held,
        "success_rate": s.success_rate,
        "quota": quota_view(quota),
    }


def upstream_stats_view(u: UpstreamStats, quota: list[QuotaUse]) -> dict[str, Any]:
    return {
        "upstream": u.upstream,
        "attempts": u.attempts,
        "sent": u.sent,
        "failed": u.failed,
        "deferred": u.deferred,
        "success_rate": u.success_rate,
        "average_seconds": u.average_seconds,
        "p95_seconds": u.p95_seconds,
        "quota": quota_view(quota),
    }


async def stats(request: web.Request) -> web.Response:
    api = api_of(request)
    since = window_start(request, api.clock())
    found = await api.reports.stats(since, query_time(request, "until"))
    now = api.clock()
    return web.json_response(
        {
            "since": iso(found.since),
            "until": iso(found.until),
            "sites": [site_stats_view(*item) for item in found.sites],
            "upstreams": [upstream_stats_view(*item) for item in found.upstreams],
            "queue": {
                "depth": found.queue.depth,
                "held": found.queue.held,
                "oldest_age_seconds": round(found.queue.oldest_age(now), 3),
            },
        }
    )
