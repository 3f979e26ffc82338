"""Chart geometry for server-side SVG: numbers in, rectangles and ticks out.

Pure: the templates draw what these return (``<rect>`` attributes, no
inline style, so the Content-Security-Policy holds), and no chart library
is loaded in the browser.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from relay.message_log_database import HourCount, UpstreamHour
from relay.reports_controller import QuotaUse

WIDTH, HEIGHT = 720, 180  # the hourly chart's viewBox
LEFT, BOTTOM, TOP = 36, 22, 8  # room for the axis labels


@dataclass(frozen=True)
class Segment:
    kind: str  # sent | failed | waiting: the CSS class that colours it
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Column:
    label: str  # "08:00" (UTC)
    x: float  # of the label, centred under the bar
    total: int
    segments: tuple[Segment, ...]
    title: str  # the tooltip: "08:00-09:00 UTC: 12 accepted, 10 sent, 1 failed, 1 waiting"


@dataclass(frozen=True)
class HourlyChart:
    columns: tuple[Column, ...]
    ticks: tuple[tuple[float, int], ...]  # (y, value) of the horizontal grid lines
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: int = HEIGHT - BOTTOM


def hourly_chart(hours: list[HourCount]) -> HourlyChart:
    """Stacked bars: sent at the bottom, then failed, then still waiting."""
    return _stacked(
        [
            (
                h.start,
                (("sent", h.sent), ("failed", h.failed), ("waiting", h.waiting)),
                f"{h.accepted} accepted, {h.sent} sent, {h.failed} failed, {h.waiting} waiting",
            )
            for h in hours
        ],
        WIDTH,
        HEIGHT,
        every=3,
    )


SMALL_WIDTH, SMALL_HEIGHT = 360, 110  # an upstream card's chart


def upstream_chart(hours: list[UpstreamHour]) -> HourlyChart:
    """One upstream's recipients per hour: sent at the bottom, then failed, then deferred."""
    return _stacked(
        [
            (
                h.start,
                (("sent", h.sent), ("failed", h.failed), ("deferred", h.deferred)),
                f"{h.sent} sent, {h.failed} failed, {h.deferred} deferred "
                f"in {h.attempts} attempt{'s' if h.attempts != 1 else ''}",
            )
            for h in hours
        ],
        SMALL_WIDTH,
        SMALL_HEIGHT,
        every=6,
    )


Hour = tuple[float, tuple[tuple[str, int], ...], str]  # start, (kind, count) bottom up, tooltip


def _stacked(hours: list[Hour], width: int, height: int, every: int) -> HourlyChart:
    """Stacked bars, one per hour, labelled every ``every`` hours, on a nice scale."""
    top = nice_ceiling(max((sum(n for _, n in parts) for _, parts, _ in hours), default=0))
    plot_height = height - BOTTOM - TOP
    slot = (width - LEFT) / max(len(hours), 1)
    bar = slot * 0.7
    columns = []
    for i, (start_at, parts, summary) in enumerate(hours):
        x = LEFT + i * slot + (slot - bar) / 2
        y = float(height - BOTTOM)
        segments = []
        for kind, count in parts:
            if count:
                # Edges rounded once each: stacked segments meet with no gap or overlap.
                bottom = round(y, 1)
                y -= plot_height * count / top
                top_edge = round(y, 1)
                height_ = round(bottom - top_edge, 1)
                segments.append(Segment(kind, round(x, 1), top_edge, round(bar, 1), height_))
        start = dt.datetime.fromtimestamp(start_at, dt.UTC)
        label = start.strftime("%H:%M")
        end = (start + dt.timedelta(hours=1)).strftime("%H:%M")
        columns.append(
            Column(
                label if i % every == 0 else "",
                round(x + bar / 2, 1),
                sum(n for _, n in parts),
                tuple(segments),
                f"{label}-{end} UTC: {summary}",
            )
        )
    ticks = tuple((round(height - BOTTOM - plot_height * k / 4, 1), top * k // 4) for k in range(5))
    return HourlyChart(tuple(columns), ticks, width, height, LEFT, height - BOTTOM)


def nice_ceiling(value: int) -> int:
    """The smallest of 4, 8, 20, 40, 80, 200... (divisible by 4) at least ``value``."""
    step = 4
    while step < value:
        for factor in (2, 5 / 2, 2):
            step = int(step * factor)
            if step >= value:
                break
    return step


@dataclass(frozen=True)
class Usage:
    """One quota bar: ``used`` of ``limit`` in a window."""

    window: str  # minute | day | month
    used: int
    limit: int

    @property
    def ratio(self) -> float:
        return min(self.used / self.limit, 1.0) if self.limit else 0.0

    @property
    def level(self) -> str:
        """The bar's colour: ok below 70 %, warn below 90 %, high beyond."""
        return "high" if self.ratio >= 0.9 else "warn" if self.ratio >= 0.7 else "ok"

    @property
    def width(self) -> float:
        return round(self.ratio * 100, 1)


def usage_bars(quota: list[QuotaUse]) -> list[Usage]:
    return [Usage(q.window.value, q.used, q.limit) for q in quota]
