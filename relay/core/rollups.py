"""Statistics counters: what each event adds, in which time bucket, and what a window reads.

A counter is a key (scope, name, start, metric) and an integer. Scopes come
in three grains: ``site`` / ``upstream`` count per UTC minute (``start`` is
the minute's first second), ``site:hour`` / ``upstream:hour`` per UTC hour
and ``site:day`` / ``upstream:day`` per UTC day. Every event adds to all
three, so a window of a day reads about a hundred rows per counter, not
1,440 (``segments``).

Site counters (at the message's creation minute): ``status:<status>``, one
per message at its current status; a status change moves it (-1 old, +1
new). Upstream counters (at the attempt's start): ``attempts``,
``recipients:sent|failed|deferred``, ``duration_us`` (the sum, in whole
microseconds) and a histogram of attempt durations, ``le:<ms>``: the
attempts that took at most that many milliseconds and more than the bound
before (``DURATION_BOUNDS_MS``; longer ones count in the last bucket).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping

from relay.core.classify import Outcome
from relay.core.model import MessageStatus

SITE = "site"
UPSTREAM = "upstream"
MINUTE, HOUR, DAY = 60, 3_600, 86_400
GRAINS = ((MINUTE, ""), (HOUR, ":hour"), (DAY, ":day"))  # seconds, scope suffix
MINUTE_SCOPES = (SITE, UPSTREAM)  # the minute grain has no suffix

ATTEMPTS = "attempts"
DURATION_US = "duration_us"
SENT, FAILED, DEFERRED = "recipients:sent", "recipients:failed", "recipients:deferred"
# Upper bounds of the duration histogram, in milliseconds, about 1.5x apart (1-1.5-2-3-5-7).
DURATION_BOUNDS_MS: tuple[float, ...] = (
    *(1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700),
    *(1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000),
    *(70_000, 100_000, 150_000, 200_000, 600_000),  # 1 ms .. 200 s, then 10 minutes
)
_BOUNDS_US = tuple(round(bound * 1000) for bound in DURATION_BOUNDS_MS)
_DEFERRED = frozenset({Outcome.RETRY.value, Outcome.DEFER.value})
_OUTCOME_METRIC = {Outcome.SENT.value: SENT, Outcome.FAILED.value: FAILED} | dict.fromkeys(
    _DEFERRED, DEFERRED
)

Key = tuple[str, str, int, str]  # scope, name, bucket start (UNIX seconds, UTC), metric


def status_metric(status: str) -> str:
    return _STATUS_METRICS.get(status) or f"status:{status}"


_STATUS_METRICS = {s.value: f"status:{s.value}" for s in MessageStatus}


def bucket_metric(bound_ms: float) -> str:
    """``le:1``, ``le:1.5``, ``le:600000``."""
    return f"le:{bound_ms:g}"


BUCKET_METRICS = tuple(bucket_metric(bound) for bound in DURATION_BOUNDS_MS)


def minute_of(at: float) -> int:
    """The start of ``at``'s UTC minute (the same arithmetic as the SQL rebuild: divide, floor)."""
    return math.floor(at / MINUTE) * MINUTE


def microseconds(duration: float) -> int:
    """A duration in whole microseconds, half up (the SQL rebuild rounds the same way)."""
    return math.floor(max(duration, 0.0) * 1_000_000 + 0.5)


def duration_bucket(duration: float) -> str:
    """The histogram metric an attempt of ``duration`` seconds counts in."""
    index = bisect.bisect_left(_BOUNDS_US, microseconds(duration))
    return BUCKET_METRICS[min(index, len(BUCKET_METRICS) - 1)]


class Deltas:
    """What one transaction adds to the counters, per minute (grains are added when written)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[Key] = Counter()

    def message(self, site: str, created_at: float, old: str | None, new: str | None) -> None:
        """A message appeared (``old`` None), changed status, or disappeared (``new`` None)."""
        if old == new:
            return
        minute = math.floor(created_at / MINUTE) * MINUTE  # minute_of, inlined: the hot path
        if old is not None:
            self.counts[(SITE, site, minute, status_metric(old))] -= 1
        if new is not None:
            self.counts[(SITE, site, minute, status_metric(new))] += 1

    def attempt(
        self, upstream: str, started_at: float, outcome: str, recipients: int, duration: float
    ) -> None:
        minute = minute_of(started_at)
        counts = self.counts
        counts[(UPSTREAM, upstream, minute, ATTEMPTS)] += 1
        counts[(UPSTREAM, upstream, minute, DURATION_US)] += microseconds(duration)
        counts[(UPSTREAM, upstream, minute, duration_bucket(duration))] += 1
        metric = _OUTCOME_METRIC.get(outcome)
        if metric is not None and recipients:
            counts[(UPSTREAM, upstream, minute, metric)] += recipients

    def merge(self, other: Deltas) -> None:
        self.counts.update(other.counts)

    def rows(self) -> list[tuple[str, str, int, str, int]]:
        """Every grain's (scope, name, start, metric, delta), sorted by key, zeros left out.

        Sorted, so that transactions that add to the same counters lock them in one order.
        """
        rows: Counter[Key] = Counter()
        for (scope, name, minute, metric), value in self.counts.items():
            if value:
                for seconds, suffix in GRAINS:
                    rows[(scope + suffix, name, minute - minute % seconds, metric)] += value
        return [(*key, value) for key, value in sorted(rows.items()) if value]

    def __bool__(self) -> bool:
        return any(self.counts.values())


def window_edges(since: float, until: float, minutes_from: float = 0) -> tuple[int, int]:
    """The whole minutes a window reads: from ``since``'s minute to the one holding ``until``
    (a minute is in when it starts before ``until``); nothing when ``until`` is not after.

    Before ``minutes_from`` retention has deleted the minute counters, so an edge whose
    hour starts there widens to that whole hour (the hour counters are kept longer).
    """
    start = minute_of(since)
    if until <= since:
        return start, start
    end = math.ceil(until / MINUTE) * MINUTE
    if start < minutes_from:
        start -= start % HOUR
    if end - end % HOUR < minutes_from:
        end = math.ceil(end / HOUR) * HOUR
    return start, end


def segments(start: int, end: int) -> list[tuple[str, int, int]]:
    """[start, end) cut into the coarsest buckets that fit: (scope suffix, from, to) each.

    Minutes up to the first whole hour, hours up to the first whole day, days,
    then hours and minutes again to the end.
    """
    return _segments(start, end, 0)


def _segments(low: int, high: int, level: int) -> list[tuple[str, int, int]]:
    seconds, suffix = GRAINS[level]
    if level == len(GRAINS) - 1:
        whole_low = -(-low // seconds) * seconds
        whole_high = high // seconds * seconds
        return [(suffix, whole_low, whole_high)] if whole_low < whole_high else []
    coarse = GRAINS[level + 1][0]
    inner_low = min(-(-low // coarse) * coarse, high)
    inner_high = max(high // coarse * coarse, inner_low)
    parts = [(suffix, low, inner_low)] if low < inner_low else []
    parts += _segments(inner_low, inner_high, level + 1)
    if inner_high < high:
        parts.append((suffix, inner_high, high))
    return parts


def percentile_bound(histogram: Mapping[str, int], fraction: float) -> float | None:
    """The upper bound, in seconds, of the bucket that holds the nearest-rank percentile.

    "95 % of the attempts took at most this long", up to the bucket's width
    (about 1.5x); None without attempts.
    """
    total = sum(histogram.get(metric, 0) for metric in BUCKET_METRICS)
    if total <= 0:
        return None
    rank = max(math.ceil(round(fraction * total, 9)), 1)
    seen = 0
    for metric, bound in zip(BUCKET_METRICS, DURATION_BOUNDS_MS, strict=True):
        seen += histogram.get(metric, 0)
        if seen >= rank:
            return float(bound) / 1000
    return float(DURATION_BOUNDS_MS[-1]) / 1000


def totals(rows: Iterable[tuple[str, str, str, int]]) -> dict[str, dict[str, dict[str, int]]]:
    """(scope, name, metric, value) rows of any grain summed: {family: {name: {metric: n}}}."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for scope, name, metric, value in rows:
        family = scope.split(":", 1)[0]
        metrics = found.setdefault(family, {}).setdefault(name, {})
        metrics[metric] = metrics.get(metric, 0) + int(value)
    return found
