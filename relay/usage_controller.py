"""Usage of sites and upstreams against their limits: counted in the store, cached in memory.

Exact across processes and nodes that share the store: a site's message is
counted in the transaction that stores it (``queue_database.store_messages``),
a DSN in the transaction that records its delivery pass, and an upstream's
recipients are reserved by a transaction of their own before the send
(``claim``); each is refused there when it would go over a limit. What an
upstream did not accept is given back by a decrement. Owners without limits
are not counted at all (a limit added later counts from then on).

``book`` is this process's cache of the store's counts: exact after the
process's own claims, and at most ``relay.app.PERSIST_SECONDS`` (2 s, plus one
store read) behind other processes' claims. It answers the early check at MAIL, routing's
first look at upstreams, the reports and the gauges; none of them can let a
message over a limit, only refuse one early on a stale count.
Crossing 80 % and 90 % of a limit logs a warning, counts a metric and
publishes the ``QuotaWarning`` (once per cluster: the claim that crosses it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from relay.core.directory import Directory
from relay.core.model import Site, Upstream
from relay.core.quota import (
    Claim,
    Granted,
    OverLimit,
    QuotaWarning,
    Scope,
    UsageBook,
    Window,
    allowance,
    limits_of,
    period,
)
from relay.events import Events
from relay.metrics import Metrics
from relay.store import GroupWriter
from relay.usage_database import claim_usage, forget_minutes_before, give_back, load_usage

log = logging.getLogger(__name__)


class UsageController:
    def __init__(
        self,
        book: UsageBook,
        writer: GroupWriter,
        metrics: Metrics,
        events: Events,
        clock: Callable[[], float],
    ) -> None:
        self.book = book
        self._writer = writer
        self._metrics = metrics
        self._events = events
        self._clock = clock
        self._swept = ""  # the minute whose older minute counters were last removed

    async def load(self) -> None:
        """Read the current periods' counts from the store into the cache."""
        now = self._clock()
        periods = [period(window, now, self.book.zone) for window in Window]
        async with self._writer.engine.connect() as connection:
            self.book.load(await load_usage(connection, periods))

    async def refresh(self) -> None:
        """Catch up with other processes' counts; once a minute, drop past minute counters."""
        await self.load()
        minute = period(Window.MINUTE, self._clock(), self.book.zone)
        if minute != self._swept:
            await self._writer.write(lambda c: forget_minutes_before(c, minute))
            self._swept = minute

    def export(self, directory: Directory) -> None:
        """Refresh the use-ratio gauges (a new day lowers them without any traffic)."""
        now = self._clock()
        owners: list[Site | Upstream] = [*directory.sites, *directory.upstreams]
        for owner in owners:
            self._export(owner, now)

    def site_over(self, site: Site) -> OverLimit | None:
        """The early check (cached counts): the store decides again when the message is stored."""
        return self.book.over(Scope.SITE, site.id, limits_of(site), self._clock())

    def claim_for(
        self, owner: Site | Upstream, count: int, at: float, reserve: float = 0.0
    ) -> Claim | None:
        """What counting ``count`` for the owner at ``at`` asks of the store; None: no limits.

        ``reserve``: the share of each limit to leave free (bulk mail leaves it to
        transactional mail).
        """
        limits = limits_of(owner)
        if not limits:
            return None
        scope, name = _scope(owner)
        ceiling = allowance(limits, reserve) if reserve > 0 else None
        return Claim(scope, name, limits, count, at, self.book.zone, ceiling)

    async def claim(self, claim: Claim) -> OverLimit | None:
        """Count in the store now (recipients before a send); the limit in the way, if any."""
        verdict = await self._writer.write_item(claim_usage, claim)
        return self.settle(claim, verdict)

    def settle(self, claim: Claim, verdict: Granted | OverLimit) -> OverLimit | None:
        """The store's verdict on a claim: cache its counts and warn; the limit if refused."""
        if isinstance(verdict, OverLimit):  # the store's count is news: the next MAIL sees it
            key = (claim.scope, claim.name, verdict.window, _period(claim, verdict))
            self.book.load([(key, verdict.used)])
            return verdict
        for warning in self.book.settle(claim, verdict):
            self._warn(warning)
        self._export_claim(claim)
        return None

    async def give_back(self, claim: Claim, count: int) -> None:
        """Take ``count`` of a granted claim back (recipients the upstream did not accept)."""
        if count <= 0:
            return
        await self._writer.write_item(give_back, (claim, count))
        self.book.add(claim.scope, claim.name, -count, claim.limits, claim.at)
        self._export_claim(claim)

    def _warn(self, warning: QuotaWarning) -> None:
        log.warning(
            "%s %s has used %d%% of its %s limit (%d of %d)",
            warning.scope.value,
            warning.name,
            round(warning.level * 100),
            warning.window.value,
            warning.used,
            warning.limit,
        )
        self._metrics.quota_warnings.labels(
            warning.scope.value, warning.name, warning.window.value, f"{warning.level:.1f}"
        ).inc()
        self._events.publish(warning)

    def _export_claim(self, claim: Claim) -> None:
        self._export_limits(claim.scope, claim.name, claim.limits, self._clock())

    def _export(self, owner: Site | Upstream, now: float) -> None:
        self._export_limits(*_scope(owner), limits_of(owner), now)

    def _export_limits(
        self, scope: Scope, name: str, limits: Mapping[Window, int], now: float
    ) -> None:
        for window, limit in limits.items():
            ratio = self.book.ratio(scope, name, window, limit, now)
            self._metrics.quota_use.labels(scope.value, name, window.value).set(ratio)


def _period(claim: Claim, over: OverLimit) -> str:
    return period(over.window, claim.at, claim.zone)


def _scope(owner: Site | Upstream) -> tuple[Scope, str]:
    if isinstance(owner, Site):
        return Scope.SITE, owner.id
    return Scope.UPSTREAM, owner.name
