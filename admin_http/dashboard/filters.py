"""Jinja2 filters of the dashboard: times, ages, durations, sizes, ratios as people read them.

Pure functions of their arguments; they return plain text, which the
template engine escapes like any other value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any


def when(timestamp: float | None) -> str:
    """``2027-01-15 08:00:12`` (UTC), or an em dash."""
    if timestamp is None:
        return "—"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(timestamp: float | None) -> str:
    """``Jan 15, 08:00`` (UTC): for tables; the full time goes in the title."""
    if timestamp is None:
        return "—"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%b %d, %H:%M")


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def age(seconds: float | None) -> str:
    """``42 s``, ``5 min``, ``3 h 10 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def duration(seconds: float | None) -> str:
    """``12 ms``, ``1.4 s``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def size(count: int | None) -> str:
    if count is None:
        return "—"
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count / 1024 / 1024:.1f} MB"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio * 100:.1f} %" if ratio < 1 else "100 %"


def number(count: int | float) -> str:
    """Thousands with a thin space: ``12 345``."""
    return f"{count:,.0f}".replace(",", "\u202f")


FILTERS: dict[str, Callable[..., Any]] = {
    "when": when,
    "short": short,
    "iso": iso,
    "age": age,
    "duration": duration,
    "size": size,
    "percent": percent,
    "number": number,
}
