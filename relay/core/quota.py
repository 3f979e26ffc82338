"""Usage windows and limits for sites and upstreams: per minute, per day, per month.

Windows are calendar periods in the configured time zone (a day ends at local
midnight, a month on the 1st), so a provider's "50,000 per day" and the
operator's idea of a day agree. The store holds the counts; ``admit`` decides
claims against counts the store read under its write lock (``relay.usage_database``),
so every process that shares the store sees one count. ``UsageBook`` is a
process's cache of those counts, for the early check at MAIL, routing's first
look and the gauges. Crossing 80 % and 90 % of a limit yields a warning once.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    FORM_IP = "form_ip"  # a form's posts per client address (name: a digest of site and network)


def limits_of(owner: Site | Upstream) -> dict[Window, int]:
    """The windows this site or upstream has a limit for."""
    limits = {
        Window.MINUTE: owner.rate_per_minute,
        Window.DAY: owner.daily_limit,
        Window.MONTH: owner.monthly_limit,
    }
    return {window: limit for window, limit in limits.items() if limit is not None}


def allowance(limits: Mapping[Window, int], reserve: float) -> dict[Window, int]:
    """What bulk mail may use of ``limits``: all but the top ``reserve`` share of each, which
    is kept for transactional mail (at least 1 of a limit of 1 or more, so bulk still moves)."""
    return {w: max(math.floor(limit * (1 - reserve)), min(limit, 1)) for w, limit in limits.items()}


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


@dataclass(frozen=True)
class Claim:
    """``count`` more for a site (messages) or an upstream (recipients) at ``at``.

    Counted in every window, limited or not, so a limit added later in a
    period starts from the period's true count.
    """

    scope: Scope
    name: str
    limits: Mapping[Window, int]
    count: int
    at: float
    zone: ZoneInfo
    # Admitted up to these instead of ``limits`` (bulk mail: ``allowance``); ``limits`` still
    # set the warnings and gauges.
    ceiling: Mapping[Window, int] | None = None

    @functools.cached_property
    def counter_keys(self) -> tuple[Key, ...]:
        """Its counters: one per window (asked several times per claim, made once).

        A form's per-address counts only in its limited windows: strangers' addresses
        are many, and only minute counters are swept as they pass.
        """
        windows = tuple(self.limits) if self.scope is Scope.FORM_IP else tuple(Window)
        return tuple(
            (self.scope, self.name, window, period(window, self.at, self.zone))
            for window in windows
        )


@dataclass(frozen=True)
class Granted:
    """A claim counted: each window's count once it was added."""

    counts: Mapping[Key, int]


def admit(
    claims: Sequence[Claim], counts: Mapping[Key, int]
) -> tuple[list[Granted | OverLimit], dict[Key, int]]:
    """Each claim in order: granted when no limited window would go over, else refused.

    ``counts`` are the stored counts (a key that is missing counts 0). Returns
    the verdicts in ``claims`` order and the increments to store. A refused
    claim counts nothing, and those after it are still decided.
    """
    now = dict(counts)
    verdicts: list[Granted | OverLimit] = []
    for claim in claims:
        keys = claim.counter_keys
        over = _first_over(claim, keys, now)
        if over is not None:
            verdicts.append(over)
            continue
        for key in keys:
            now[key] = now.get(key, 0) + claim.count
        verdicts.append(Granted({key: now[key] for key in keys}))
    deltas = {key: n - counts.get(key, 0) for key, n in now.items()}
    return verdicts, {key: delta for key, delta in deltas.items() if delta}


def _first_over(claim: Claim, keys: tuple[Key, ...], counts: Mapping[Key, int]) -> OverLimit | None:
    limits = claim.limits if claim.ceiling is None else claim.ceiling
    for key in keys:
        limit = limits.get(key[2])
        used = counts.get(key, 0)
        if limit is not None and used + claim.count > limit:
            return OverLimit(key[2], limit, used, period_end(key[2], claim.at, claim.zone))
    return None


class UsageBook:
    """A process's cache of the stored counts, per (scope, name, window, period).

    Only the current periods are kept. Fresh after each of the process's own
    claims (the store answers with the new counts); others' counts arrive
    with the next ``load`` (``relay.usage_controller`` says how often).
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._counts: dict[Key, int] = {}
        self._warned: set[tuple[Key, float]] = set()  # each level warns once per period

    def load(self, rows: Iterable[tuple[Key, int]]) -> None:
        """The store's counts replace the cached ones (the store is the truth)."""
        for key, count in rows:
            if key not in self._counts:
                self._forget_older(key)
            self._counts[key] = count

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
            warnings += self._crossed(key, before, after, limits.get(window))
        return warnings

    def settle(self, claim: Claim, granted: Granted) -> list[QuotaWarning]:
        """A claim the store granted: cache its counts; warnings for thresholds it crossed.

        Only the claim that crosses a threshold in the store sees it crossed,
        so among processes sharing a store one warns.
        """
        warnings = []
        for key, after in granted.counts.items():
            if key not in self._counts:
                self._forget_older(key)
            self._counts[key] = after
            warnings += self._crossed(key, after - claim.count, after, claim.limits.get(key[2]))
        return warnings

    def _crossed(self, key: Key, before: int, after: int, limit: int | None) -> list[QuotaWarning]:
        warnings: list[QuotaWarning] = []
        if limit is None:
            return warnings
        for level in WARN_AT:
            crossed = before < level * limit <= after
            if crossed and (key, level) not in self._warned:
                self._warned.add((key, level))
                warnings.append(QuotaWarning(key[0], key[1], key[2], level, after, limit))
        return warnings

    def ratio(self, scope: Scope, name: str, window: Window, limit: int, now: float) -> float:
        return self.used(scope, name, window, now) / limit

    def _forget_older(self, key: Key) -> None:
        for old in [k for k in self._counts if k[:3] == key[:3] and k[3] != key[3]]:
            del self._counts[old]
            self._warned -= {(old, level) for level in WARN_AT}

    def __iter__(self) -> Iterator[tuple[Key, int]]:
        return iter(self._counts.items())
