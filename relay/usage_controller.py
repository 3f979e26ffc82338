"""Usage of sites and upstreams against their limits: counted in memory, persisted in batches.

The ingress counts a site's messages as it stores them, and delivery the
DSNs it makes for a site (``take``: none is made over a limit); delivery reserves
an upstream's recipients before it sends and gives back what was not
accepted. Changed counters are written every few seconds and at stop, so
they hold across a restart (a crash may forget the last seconds' counts:
limits are a fence against runaway senders and provider quotas, not billing).
Crossing 80 % and 90 % of a limit logs a warning, counts a metric and
publishes the ``QuotaWarning``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.core.directory import Directory
from relay.core.model import Site, Upstream
from relay.core.quota import OverLimit, Scope, UsageBook, Window, limits_of, period
from relay.engine_database import load_usage, save_usage
from relay.events import Events
from relay.metrics import Metrics
from relay.store import GroupWriter

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

    async def load(self) -> None:
        now = self._clock()
        periods = [period(window, now, self.book.zone) for window in Window]
        async with self._writer.engine.connect() as connection:
            self.book.load(await load_usage(connection, periods))

    async def flush(self) -> None:
        counts = self.book.take_dirty()
        if counts:
            minute = period(Window.MINUTE, self._clock(), self.book.zone)
            try:
                await self._writer.write(lambda c: save_usage(c, counts, minute))
            except BaseException:
                self.book.not_saved(counts)
                raise

    def export(self, directory: Directory) -> None:
        """Refresh the use-ratio gauges (a new day lowers them without any traffic)."""
        now = self._clock()
        owners: list[Site | Upstream] = [*directory.sites, *directory.upstreams]
        for owner in owners:
            self._export(owner, now)

    def site_over(self, site: Site) -> OverLimit | None:
        return self.book.over(Scope.SITE, site.id, limits_of(site), self._clock())

    def take(self, site: Site, at: float) -> OverLimit | None:
        """Count one message the relay makes for the site (a DSN), unless that exceeds a limit.

        The ingress's fence for a message of the site's own: the limit that is
        reached and nothing counted, or None and the message counted.
        """
        over = self.book.over(Scope.SITE, site.id, limits_of(site), at)
        if over is None:
            self.count(site, 1, at)
        return over

    def count(self, owner: Site | Upstream, count: int, at: float | None = None) -> None:
        """Count (or, negative, give back) usage; ``at``: when the reservation was made."""
        if count == 0:
            return
        scope, name = _scope(owner)
        limits = limits_of(owner)
        now = self._clock()
        for warning in self.book.add(scope, name, count, limits, now if at is None else at):
            log.warning(
                "%s %s has used %d%% of its %s limit (%d of %d)",
                scope.value,
                name,
                round(warning.level * 100),
                warning.window.value,
                warning.used,
                warning.limit,
            )
            self._metrics.quota_warnings.labels(
                scope.value, name, warning.window.value, f"{warning.level:.1f}"
            ).inc()
            self._events.publish(warning)
        self._export(owner, now)

    def _export(self, owner: Site | Upstream, now: float) -> None:
        scope, name = _scope(owner)
        for window, limit in limits_of(owner).items():
            ratio = self.book.ratio(scope, name, window, limit, now)
            self._metrics.quota_use.labels(scope.value, name, window.value).set(ratio)


def _scope(owner: Site | Upstream) -> tuple[Scope, str]:
    if isinstance(owner, Site):
        return Scope.SITE, owner.id
    return Scope.UPSTREAM, owner.name
