"""Usage windows and limits for sites and upstreams: per minute, per day, per month.

Windows are calendar periods in the configured time zone (a day ends at local
midnight, a month on the 1st), so a provider's "50,000 per day" and the
operator's idea of a day agree. ``UsageBook`` keeps the counts in memory;
``relay.usage_controller`` persists them so they hold across a restart.
Crossing 80 % and 90 % of a limit yields a warning once.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from relay.core.model import Site, Upstream

WARN_AT = (0.8, 0.9)


class Window(enum.StrEnum):
    MINUTE = "minute"
    DAY = "day"
    MONTH = "month"


class Scope(enum.StrEnum):
    SITE = "site"
    UPSTREAM = "upstream"


def limits_of(owner: Site | Upstream) -> dict[Window, int]:
    """The windows this site or upstream has a limit for."""
    limits = {
        Window.MINUTE: owner.rate_per_minute,
        Window.DAY: owner.daily_limit,
        Window.MONTH: owner.monthly_limit,
    }
    return {window: limit for window, limit in limits.items() if limit is not None}


def period(window: Window, now: float, zone: ZoneInfo) -> str:
    """The name of the period ``now`` falls in: 2026-11-21T10:05 (UTC), 2026-11-21, 2026-11."""
    return _period(window, math.floor(now), zone)


@functools.lru_cache(maxsize=64)  # every message asks, several times, within the same second
def _period(window: Window, now: int, zone: ZoneInfo) -> str:
    if window is Window.MINUTE:
        # Minutes by UTC: local wall-clock minutes repeat when DST ends.
        return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M")
    local = datetime.fromtimestamp(now, zone)
    if window is Window.DAY:
        return local.strftime("%Y-%m-%d")
    return local.strftime("%Y-%m")


def period_end(window: Window, now: float, zone: ZoneInfo) -> float:
    """When the period ``now`` falls in ends (the window opens again)."""
    if window is Window.MINUTE:
        return math.floor(now / 60) * 60 + 60.0
    local = datetime.fromtimestamp(now, zone)
    if window is Window.DAY:
        start = (local + timedelta(days=1)).date()
    else:
        start = (local.replace(day=28) + timedelta(days=4)).replace(day=1).date()
    # Midnight by the wall clock: zoneinfo resolves DST changes for us.
    return datetime(start.year, start.month, start.day, tzinfo=zone).timestamp()


@dataclass(frozen=True)
class OverLimit:
    window: Window
    limit: int
    used: int
    reopens_at: float

    def describe(self, unit: str) -> str:
        per = {Window.MINUTE: "per minute", Window.DAY: "per day", Window.MONTH: "per month"}
        return (
            f"over {self.window.value} limit ({self.used}/{self.limit} {unit} {per[self.window]})"
        )


@dataclass(frozen=True)
class QuotaWarning:
    scope: Scope
    name: str
    window: Window
    level: float  # 0.8 or 0.9
    used: int
    limit: int


Key = tuple[Scope, str, Window, str]  # (scope, name, window, period)


class UsageBook:
    """Counts per (scope, name, window, period); only the current periods are kept."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._counts: dict[Key, int] = {}
        self._dirty: set[Key] = set()
        self._retired: dict[Key, int] = {}  # final counts of past periods, not yet persisted
        self._warned: set[tuple[Key, float]] = set()  # each level warns once per period

    def load(self, rows: Iterable[tuple[Key, int]]) -> None:
        for key, count in rows:
            self._counts[key] = max(self._counts.get(key, 0), count)

    def used(self, scope: Scope, name: str, window: Window, now: float) -> int:
        return self._counts.get((scope, name, window, period(window, now, self.zone)), 0)

    def over(
        self, scope: Scope, name: str, limits: Mapping[Window, int], now: float, needed: int = 1
    ) -> OverLimit | None:
        """The first window that ``needed`` more would exceed, or None when all have room."""
        for window, limit in limits.items():
            used = self.used(scope, name, window, now)
            if used + needed > limit:
                return OverLimit(window, limit, used, period_end(window, now, self.zone))
        return None

    def add(
        self, scope: Scope, name: str, count: int, limits: Mapping[Window, int], now: float
    ) -> list[QuotaWarning]:
        """Count ``count`` at ``now``; warnings for thresholds crossed for the first time.

        A negative count gives back a reservation made at ``now`` (pass the
        reservation's time): it never goes below zero, and a period that has
        ended meanwhile is left as it was.
        """
        warnings = []
        for window in Window:
            key = (scope, name, window, period(window, now, self.zone))
            if key not in self._counts:
                if count < 0:
                    continue
                self._forget_older(key)
            before = self._counts.get(key, 0)
            after = max(before + count, 0)
            self._counts[key] = after
            self._dirty.add(key)
            limit = limits.get(window)
            if limit is None:
                continue
            for level in WARN_AT:
                crossed = before < level * limit <= after
                if crossed and (key, level) not in self._warned:
                    self._warned.add((key, level))
                    warnings.append(QuotaWarning(scope, name, window, level, after, limit))
        return warnings

    def ratio(self, scope: Scope, name: str, window: Window, limit: int, now: float) -> float:
        return self.used(scope, name, window, now) / limit

    def take_dirty(self) -> list[tuple[Key, int]]:
        """The counts changed since the last call (to be persisted), past periods' included."""
        dirty, self._dirty = self._dirty, set()
        retired, self._retired = self._retired, {}
        return [*retired.items(), *((key, self._counts[key]) for key in dirty)]

    def not_saved(self, counts: Iterable[tuple[Key, int]]) -> None:
        """Counts from ``take_dirty`` that could not be persisted: offer them again."""
        for key, count in counts:
            if key in self._counts:
                self._dirty.add(key)
            else:
                self._retired[key] = count

    def _forget_older(self, key: Key) -> None:
        for old in [k for k in self._counts if k[:3] == key[:3] and k[3] != key[3]]:
            if old in self._dirty:
                self._dirty.discard(old)
                self._retired[old] = self._counts[old]
            del self._counts[old]
            self._warned -= {(old, level) for level in WARN_AT}

    def __iter__(self) -> Iterator[tuple[Key, int]]:
        return iter(self._counts.items())
