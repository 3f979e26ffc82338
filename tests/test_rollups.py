"""The statistics counters' pure part: buckets of time and duration, and what a window reads."""

from __future__ import annotations

import random

import pytest

from relay.core.rollups import (
    BUCKET_METRICS,
    DAY,
    HOUR,
    MINUTE,
    Deltas,
    duration_bucket,
    percentile_bound,
    segments,
    window_edges,
)

T = 1_800_000_000  # 2027-01-15 08:00 UTC: a whole minute and hour, not a day
GRAIN = {"": MINUTE, ":hour": HOUR, ":day": DAY}


def test_segments_cover_the_window_once_with_the_coarsest_buckets() -> None:
    rng = random.Random(3)  # noqa: S311 -- repeatable windows
    for _ in range(500):
        start = T + rng.randrange(-3 * DAY, 3 * DAY) // MINUTE * MINUTE
        end = start + rng.randrange(0, 5 * DAY) // MINUTE * MINUTE
        parts = segments(start, end)
        edge = start
        for suffix, low, high in parts:
            assert low == edge and low < high  # contiguous, nothing empty
            assert low % GRAIN[suffix] == 0 and high % GRAIN[suffix] == 0
            edge = high
        assert edge == end
        assert sum(1 for suffix, _, _ in parts if suffix == ":day") <= 1
        assert len(parts) <= 5


def test_a_day_reads_about_a_hundred_buckets_not_1440() -> None:
    start = T + 17 * MINUTE
    parts = segments(start, start + DAY)
    buckets = sum((high - low) // GRAIN[suffix] for suffix, low, high in parts)
    assert buckets < 24 + 2 * 60


@pytest.mark.parametrize(
    ("since", "until", "edges"),
    [
        (T, T + 60, (T, T + 60)),
        (T + 1, T + 4, (T, T + 60)),  # the minute holding since, to the end of until's
        (T + 59.999, T + 60.001, (T, T + 120)),
        (T, T, (T, T)),
        (T + 30, T + 10, (T, T)),  # backwards: nothing
        (T + 5, T + 5, (T, T)),
    ],
)
def test_window_edges(since: float, until: float, edges: tuple[int, int]) -> None:
    assert window_edges(since, until) == edges


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, "le:1"),
        (0.001, "le:1"),
        (0.0010004, "le:1"),  # whole microseconds: 1000 us
        (0.0010006, "le:1.5"),
        (0.75, "le:1000"),
        (1.9, "le:2000"),
        (2.0, "le:2000"),
        (200.0, "le:200000"),
        (200.1, "le:600000"),
        (86_400.0, "le:600000"),  # longer than the last bound: the last bucket
    ],
)
def test_duration_bucket(seconds: float, bucket: str) -> None:
    assert duration_bucket(seconds) == bucket


def test_percentile_bound() -> None:
    assert percentile_bound({}, 0.95) is None
    histogram = {"le:100": 19, "le:2000": 1}
    assert percentile_bound(histogram, 0.95) == 0.1  # the 19th of 20
    assert percentile_bound(histogram, 1.0) == 2.0
    assert percentile_bound({"le:600000": 3}, 0.95) == 600.0
    assert len(BUCKET_METRICS) == len(set(BUCKET_METRICS))


def test_deltas_move_a_message_and_leave_out_zeros() -> None:
    deltas = Deltas()
    deltas.message("shop", T + 30, None, "queued")
    deltas.message("shop", T + 30, "queued", "sent")
    deltas.message("shop", T + 30, "sent", "sent")  # no change
    rows = deltas.rows()
    assert rows == [
        ("site", "shop", T, "status:sent", 1),
        ("site:day", "shop", T - 8 * HOUR, "status:sent", 1),
        ("site:hour", "shop", T, "status:sent", 1),
    ]
    assert rows == sorted(rows)


def test_window_edges_widen_to_hours_where_the_minute_counters_are_gone() -> None:
    hour = 1_700_000_000 // 3600 * 3600
    since, until = hour + 600.5, hour + 7200 + 1500.0
    assert window_edges(since, until, minutes_from=hour) == (hour + 600, hour + 7200 + 1500)
    assert window_edges(since, until, minutes_from=hour + 3600) == (hour, hour + 7200 + 1500)
    assert window_edges(since, until, minutes_from=hour + 7200 + 60) == (hour, hour + 3 * 3600)
    assert window_edges(since, until, minutes_from=until + 60) == (hour, hour + 3 * 3600)
