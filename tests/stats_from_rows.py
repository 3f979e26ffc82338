"""Statistics counted from the message and attempt rows, to the second: the oracle the
tests hold the counters (``relay.rollup_database.rollup_stats``) to. Linear in rows, so
never on the API's path."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core.classify import Outcome
from relay.core.stats import percentile, success_rate
from relay.message_log_database import SiteStats, UpstreamStats, site_from_counts
from relay.tables import attempts, messages


async def site_stats_from_rows(
    connection: AsyncConnection, since: float, until: float | None = None
) -> list[SiteStats]:
    """Messages created in [since, until) per site and status; sites without any are left out.

    Counted from the message rows, to the second: a check of the counters
    (``rollup_database.rollup_stats`` is what the API reads), linear in messages.
    """
    window = [messages.c.created_at >= since]
    if until is not None:
        window.append(messages.c.created_at < until)
    rows = await connection.execute(
        sa.select(messages.c.site_id, messages.c.status, sa.func.count())
        .where(*window)
        .group_by(messages.c.site_id, messages.c.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for site_id, status, count in rows:
        counts.setdefault(site_id, {})[status] = int(count)
    return [site_from_counts(site_id, counts[site_id]) for site_id in sorted(counts)]


async def upstream_stats_from_rows(
    connection: AsyncConnection, since: float, until: float | None = None
) -> list[UpstreamStats]:
    """Attempts started in [since, until) per upstream; upstreams without any are left out.

    Counted from the attempt rows, with the exact p95: a check of the counters, linear.
    """
    window = [attempts.c.started_at >= since]
    if until is not None:
        window.append(attempts.c.started_at < until)
    rows = await connection.execute(
        sa.select(
            attempts.c.upstream, attempts.c.outcome, attempts.c.duration, attempts.c.recipients
        ).where(*window)
    )
    tallies: dict[str, _Tally] = {}
    for upstream, outcome, duration, addresses in rows:
        tallies.setdefault(upstream, _Tally()).add(outcome, duration, addresses)
    return [tallies[name].stats(name) for name in sorted(tallies)]


_DEFERRED = frozenset({Outcome.RETRY.value, Outcome.DEFER.value})


class _Tally:
    """One upstream's attempts, added up row by row."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.sent = self.failed = self.deferred = 0

    def add(self, outcome: str, duration: float, addresses: object) -> None:
        self.durations.append(float(duration))
        count = len(addresses) if isinstance(addresses, list) else 0  # JSON: trust nothing
        if outcome == Outcome.SENT.value:
            self.sent += count
        elif outcome == Outcome.FAILED.value:
            self.failed += count
        elif outcome in _DEFERRED:
            self.deferred += count

    def stats(self, upstream: str) -> UpstreamStats:
        p95 = percentile(self.durations, 0.95)
        return UpstreamStats(
            upstream=upstream,
            attempts=len(self.durations),
            sent=self.sent,
            failed=self.failed,
            deferred=self.deferred,
            success_rate=success_rate(self.sent, self.failed + self.deferred),
            average_seconds=round(sum(self.durations) / len(self.durations), 4),
            p95_seconds=round(p95, 4) if p95 is not None else None,
        )
