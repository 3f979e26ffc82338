"""Summary figures for the admin API's statistics: percentiles and success rates.

Pure arithmetic over values the databases fetched; None stands for "no data"
so an empty window is never reported as 0 % success or a 0-second latency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value with ``fraction`` of all at or below it.

    ``fraction`` is in [0, 1] (0.95 for p95); 0 gives the minimum, 1 the maximum.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    if not values:
        return None
    ordered = sorted(values)
    # Rounded first so float noise (0.07 * 100 == 7.000000000000001) cannot move up a rank.
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[max(rank, 1) - 1]


def success_rate(good: int, bad: int) -> float | None:
    """good / (good + bad), rounded to 4 decimals; None when there is nothing to judge."""
    total = good + bad
    return round(good / total, 4) if total else None
