"""The overview: today's traffic, the queue, each upstream's health and quota, recent failures."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from admin_http.dashboard.charts import hourly_chart, usage_bars
from admin_http.dashboard.pages import page
from admin_http.deps import api_of
from relay.core.health import Circuit
from relay.core.model import MessageStatus
from relay.message_log_database import MessageQuery

CHART_HOURS = 24
RECENT_FAILURES = 8


def start_of_day(now: float, zone: dt.tzinfo) -> float:
    """Midnight of ``now``'s day in ``zone`` (the zone quota days are counted in)."""
    local = dt.datetime.fromtimestamp(now, zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


async def overview(request: web.Request) -> web.Response:
    api = api_of(request)
    now = api.clock()
    zone = api.config().limits.timezone
    today = start_of_day(now, zone)
    stats = await api.reports.stats(today)
    first_hour = (now // 3600 - CHART_HOURS + 1) * 3600
    hours = await api.reports.hourly(first_hour, CHART_HOURS)
    failed = await api.reports.search(
        MessageQuery(status=MessageStatus.FAILED, page_size=RECENT_FAILURES)
    )
    failures, failed_total = failed.items, failed.total
    # Endpoints an app is not hearing from: disabled, or failing since some time.
    troubled = [
        info
        for info in (await api.webhooks.listing() if api.webhooks else [])
        if not info.state.enabled or info.state.failing_since is not None
    ]
    totals = {
        "accepted": sum(s.accepted for s, _ in stats.sites),
        "sent": sum(s.sent for s, _ in stats.sites),
        "failed": sum(s.failed + s.partial for s, _ in stats.sites),
        "deferred": sum(s.deferred for s, _ in stats.sites),
    }
    directory = api.directory()
    found = [
        (upstream, upstream_stats, quota)
        for upstream_stats, quota in stats.upstreams
        # One gone from the configuration keeps its history in the log, not a row here.
        if (upstream := directory.upstream(upstream_stats.upstream)) is not None
    ]
    upstreams = [
        {
            "upstream": upstream,
            "circuit": api.health.circuits.get(upstream.name) or Circuit(),
            "stats": upstream_stats,
            "usage": usage_bars(quota),
        }
        for upstream, upstream_stats, quota in sorted(
            found, key=lambda item: (item[0].priority, item[0].name)
        )
    ]
    return await page(
        request,
        "overview.html",
        {
            "totals": totals,
            "day_start": today,
            "zone": str(zone),
            "queue": stats.queue,
            "oldest_age": stats.queue.oldest_age(now),
            "upstreams": upstreams,
            "failures": failures,
            "failed_total": failed_total,
            "troubled_webhooks": troubled,
            "chart": hourly_chart(hours),
            "now": now,
        },
        section="overview",
        title="Overview",
    )
