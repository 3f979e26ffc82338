"""Usage windows and limits: calendar periods in a time zone, counts, warnings, persistence."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from relay.core.model import Site, Upstream, UpstreamKind
from relay.core.quota import (
    Claim,
    Granted,
    OverLimit,
    QuotaWarning,
    Scope,
    UsageBook,
    Window,
    admit,
    limits_of,
    period,
    period_end,
)

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE, DAY, MONTH = Window.MINUTE, Window.DAY, Window.MONTH
SITE, UPSTREAM = Scope.SITE, Scope.UPSTREAM
HOUR = 3600.0


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """A UTC wall-clock time as a timestamp: utc(2026, 11, 21, 10, 5)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def berlin(year: int, month: int, day: int) -> float:
    """Midnight in Berlin as a timestamp."""
    return datetime(year, month, day, tzinfo=BERLIN).timestamp()


NOW = utc(2026, 11, 21, 10, 5, 30)


# -- period names


@pytest.mark.parametrize(
    ("now", "zone", "minute", "day", "month"),
    [
        pytest.param(NOW, UTC_ZONE, "2026-11-21T10:05", "2026-11-21", "2026-11", id="utc"),
        pytest.param(NOW, BERLIN, "2026-11-21T10:05", "2026-11-21", "2026-11", id="berlin-cet"),
        pytest.param(
            utc(2026, 11, 21, 23, 30),
            UTC_ZONE,
            "2026-11-21T23:30",
            "2026-11-21",
            "2026-11",
            id="utc-late-evening",
        ),
        pytest.param(
            utc(2026, 11, 21, 23, 30),
            BERLIN,
            "2026-11-21T23:30",  # minutes are named in UTC
            "2026-11-22",
            "2026-11",
            id="berlin-already-next-day",
        ),
        pytest.param(
            utc(2026, 7, 10, 22, 30),
            BERLIN,
            "2026-07-10T22:30",
            "2026-07-11",
            "2026-07",
            id="berlin-cest-plus-two",
        ),
        pytest.param(
            utc(2026, 11, 30, 23, 30),
            BERLIN,
            "2026-11-30T23:30",
            "2026-12-01",
            "2026-12",
            id="berlin-already-next-month",
        ),
        pytest.param(
            utc(2026, 12, 31, 23, 0),
            BERLIN,
            "2026-12-31T23:00",
            "2027-01-01",
            "2027-01",
            id="berlin-already-next-year",
        ),
        pytest.param(
            utc(2026, 12, 31, 23, 59, 59),
            UTC_ZONE,
            "2026-12-31T23:59",
            "2026-12-31",
            "2026-12",
            id="utc-last-second-of-year",
        ),
    ],
)
def test_period_names(now: float, zone: ZoneInfo, minute: str, day: str, month: str) -> None:
    assert period(MINUTE, now, zone) == minute
    assert period(DAY, now, zone) == day
    assert period(MONTH, now, zone) == month


# -- period ends


@pytest.mark.parametrize(
    ("window", "now", "zone", "end"),
    [
        pytest.param(MINUTE, NOW, UTC_ZONE, utc(2026, 11, 21, 10, 6), id="minute"),
        pytest.param(MINUTE, utc(2026, 11, 21, 10, 5), UTC_ZONE, utc(2026, 11, 21, 10, 6),
                     id="minute-at-its-start"),
        pytest.param(MINUTE, NOW, BERLIN, utc(2026, 11, 21, 10, 6), id="minute-berlin"),
        pytest.param(MINUTE, NOW, ZoneInfo("Asia/Kolkata"), utc(2026, 11, 21, 10, 6),
                     id="minute-half-hour-offset"),
        pytest.param(DAY, NOW, UTC_ZONE, utc(2026, 11, 22), id="day-utc"),
        pytest.param(DAY, utc(2026, 11, 21), UTC_ZONE, utc(2026, 11, 22), id="day-at-midnight"),
        pytest.param(DAY, NOW, BERLIN, utc(2026, 11, 21, 23), id="day-berlin-local-midnight"),
        pytest.param(DAY, utc(2026, 11, 21, 23, 30), BERLIN, utc(2026, 11, 22, 23),
                     id="day-berlin-after-local-midnight"),
        pytest.param(DAY, utc(2026, 7, 10, 12), BERLIN, utc(2026, 7, 10, 22), id="day-berlin-cest"),
        pytest.param(MONTH, NOW, UTC_ZONE, utc(2026, 12, 1), id="month"),
        pytest.param(MONTH, utc(2026, 12, 15), UTC_ZONE, utc(2027, 1, 1), id="december-january"),
        pytest.param(MONTH, utc(2026, 1, 31, 12), UTC_ZONE, utc(2026, 2, 1), id="january-31"),
        pytest.param(MONTH, utc(2028, 2, 29, 12), UTC_ZONE, utc(2028, 3, 1), id="leap-february"),
        pytest.param(MONTH, utc(2026, 12, 31, 22, 59), BERLIN, utc(2026, 12, 31, 23),
                     id="december-berlin"),
        pytest.param(MONTH, utc(2026, 12, 31, 23, 30), BERLIN, utc(2027, 1, 31, 23),
                     id="january-berlin-starts-in-utc-december"),
        pytest.param(MONTH, utc(2026, 3, 15), BERLIN, utc(2026, 3, 31, 22),
                     id="march-berlin-ends-in-cest"),
        pytest.param(MONTH, utc(2026, 10, 15), BERLIN, utc(2026, 10, 31, 23),
                     id="october-berlin-ends-in-cet"),
    ],
)  # fmt: skip
def test_period_end(window: Window, now: float, zone: ZoneInfo, end: float) -> None:
    assert period_end(window, now, zone) == end


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        pytest.param((2026, 3, 28), 24, id="before-spring-forward"),
        pytest.param((2026, 3, 29), 23, id="spring-forward"),
        pytest.param((2026, 10, 25), 25, id="fall-back"),
        pytest.param((2026, 10, 26), 24, id="after-fall-back"),
    ],
)
def test_berlin_day_length_on_dst_changes(day: tuple[int, int, int], hours: int) -> None:
    start = berlin(*day)
    assert period_end(DAY, start, BERLIN) - start == hours * HOUR
    # From any moment of the day, including after the change, the same end.
    assert period_end(DAY, start + 20 * HOUR, BERLIN) == start + hours * HOUR


@pytest.mark.parametrize("window", list(Window))
@pytest.mark.parametrize(
    "now",
    [
        NOW,
        utc(2026, 3, 29, 0, 59, 59),  # a second before Berlin springs forward
        utc(2026, 3, 29, 1, 0, 1),
        utc(2026, 10, 24, 22, 0),  # Berlin midnight on the 25-hour day
        utc(2026, 10, 25, 1, 30),  # in the repeated hour
        utc(2026, 12, 31, 23, 0),
        utc(2028, 2, 29, 23, 30),
    ],
)
def test_period_end_is_the_start_of_the_next_period(window: Window, now: float) -> None:
    end = period_end(window, now, BERLIN)
    assert end > now
    assert period(window, end - 1, BERLIN) == period(window, now, BERLIN)
    assert period(window, end, BERLIN) != period(window, now, BERLIN)


# -- limits_of and OverLimit


@pytest.mark.parametrize(
    ("owner", "limits"),
    [
        pytest.param(Site(id="s", name="S", from_email="s@example.com"), {}, id="site-none"),
        pytest.param(
            Site(
                id="s",
                name="S",
                from_email="s@example.com",
                rate_per_minute=10,
                monthly_limit=1000,
            ),
            {MINUTE: 10, MONTH: 1000},
            id="site-some",
        ),
        pytest.param(Upstream(name="u", kind=UpstreamKind.SMTP), {}, id="upstream-none"),
        pytest.param(
            Upstream(
                name="u",
                kind=UpstreamKind.SMTP,
                rate_per_minute=60,
                daily_limit=50_000,
                monthly_limit=1_000_000,
            ),
            {MINUTE: 60, DAY: 50_000, MONTH: 1_000_000},
            id="upstream-all",
        ),
        pytest.param(
            Upstream(name="u", kind=UpstreamKind.SMTP, daily_limit=0), {DAY: 0}, id="zero-is-kept"
        ),
    ],
)
def test_limits_of(owner: Site | Upstream, limits: dict[Window, int]) -> None:
    assert limits_of(owner) == limits
    assert list(limits_of(owner)) == [w for w in Window if w in limits]  # minute, day, month


@pytest.mark.parametrize(
    ("window", "unit", "text"),
    [
        (MINUTE, "messages", "over minute limit (10/10 messages per minute)"),
        (DAY, "recipients", "over day limit (10/10 recipients per day)"),
        (MONTH, "messages", "over month limit (10/10 messages per month)"),
    ],
)
def test_over_limit_describe(window: Window, unit: str, text: str) -> None:
    assert OverLimit(window, 10, 10, 0.0).describe(unit) == text


# -- UsageBook

LIMITS = {MINUTE: 10, DAY: 100, MONTH: 1000}


def book_with(count: int, limits: dict[Window, int] = LIMITS, now: float = NOW) -> UsageBook:
    book = UsageBook(UTC_ZONE)
    book.add(SITE, "shop", count, limits, now)
    return book


def used(book: UsageBook, now: float = NOW) -> dict[Window, int]:
    return {w: book.used(SITE, "shop", w, now) for w in Window}


def test_empty_book() -> None:
    book = UsageBook(UTC_ZONE)
    assert used(book) == dict.fromkeys(Window, 0)
    assert book.over(SITE, "shop", LIMITS, NOW) is None
    assert list(book) == []


def test_add_counts_every_window_even_without_limits() -> None:
    book = book_with(3, limits={})
    assert used(book) == dict.fromkeys(Window, 3)
    book.add(SITE, "shop", 2, {}, NOW + 1)
    assert used(book) == dict.fromkeys(Window, 5)


def test_counts_are_per_scope_and_name() -> None:
    book = book_with(10)
    assert book.over(SITE, "shop", LIMITS, NOW) is not None
    assert book.over(SITE, "blog", LIMITS, NOW) is None
    assert book.over(UPSTREAM, "shop", LIMITS, NOW) is None
    assert book.used(UPSTREAM, "shop", MINUTE, NOW) == 0


@pytest.mark.parametrize(
    ("count", "limits", "needed", "expected"),
    [
        pytest.param(9, LIMITS, 1, None, id="room-for-one"),
        pytest.param(10, LIMITS, 1, OverLimit(MINUTE, 10, 10, utc(2026, 11, 21, 10, 6)),
                     id="minute-full"),
        pytest.param(8, LIMITS, 2, None, id="needed-fits-exactly"),
        pytest.param(8, LIMITS, 3, OverLimit(MINUTE, 10, 8, utc(2026, 11, 21, 10, 6)),
                     id="needed-does-not-fit"),
        pytest.param(5, {MINUTE: 100, DAY: 5}, 1, OverLimit(DAY, 5, 5, utc(2026, 11, 22)),
                     id="day-full"),
        pytest.param(5, {DAY: 50, MONTH: 5}, 1, OverLimit(MONTH, 5, 5, utc(2026, 12, 1)),
                     id="month-full"),
        pytest.param(5, {DAY: 5, MINUTE: 3}, 1, OverLimit(DAY, 5, 5, utc(2026, 11, 22)),
                     id="first-in-limits-order"),
        pytest.param(0, {MONTH: 0}, 1, OverLimit(MONTH, 0, 0, utc(2026, 12, 1)), id="zero-limit"),
        pytest.param(10, {}, 1_000, None, id="no-limits"),
    ],
)  # fmt: skip
def test_over(
    count: int, limits: dict[Window, int], needed: int, expected: OverLimit | None
) -> None:
    book = book_with(count, limits={})
    assert book.over(SITE, "shop", limits, NOW, needed) == expected


def test_over_reopens_at_the_end_of_the_local_period() -> None:
    book = UsageBook(BERLIN)
    book.add(SITE, "shop", 5, {}, NOW)
    over = book.over(SITE, "shop", {DAY: 5}, NOW)
    assert over == OverLimit(DAY, 5, 5, utc(2026, 11, 21, 23))


def warning(window: Window, level: float, used: int, limit: int) -> QuotaWarning:
    return QuotaWarning(SITE, "shop", window, level, used, limit)


def test_warnings_once_each_when_crossing_80_and_90_percent() -> None:
    book = UsageBook(UTC_ZONE)
    limits = {MINUTE: 10}
    steps = [(7, []), (1, [warning(MINUTE, 0.8, 8, 10)]), (1, [warning(MINUTE, 0.9, 9, 10)])]
    steps += [(1, []), (1, []), (5, [])]  # full and beyond: nothing new
    for count, expected in steps:
        assert book.add(SITE, "shop", count, limits, NOW) == expected


@pytest.mark.parametrize(
    ("before", "count", "limit", "levels"),
    [
        pytest.param(0, 9, 10, [0.8, 0.9], id="one-add-crosses-both"),
        pytest.param(0, 50, 10, [0.8, 0.9], id="one-add-jumps-past-limit"),
        pytest.param(7, 1, 10, [0.8], id="lands-on-80"),
        pytest.param(8, 1, 10, [0.9], id="lands-on-90"),
        pytest.param(8, 0, 10, [], id="zero-add-at-80"),
        pytest.param(2, 1, 3, [0.8, 0.9], id="small-limit-2.4-and-2.7"),
        pytest.param(0, 2, 3, [], id="small-limit-below-2.4"),
        pytest.param(0, 800, 1000, [0.8], id="exact-float-threshold"),
    ],
)
def test_warning_levels(before: int, count: int, limit: int, levels: list[float]) -> None:
    book = book_with(before, limits={})
    warnings = book.add(SITE, "shop", count, {DAY: limit}, NOW)
    assert [w.level for w in warnings] == levels
    assert all(w == warning(DAY, w.level, before + count, limit) for w in warnings)


def test_warnings_for_each_window_crossed() -> None:
    book = UsageBook(UTC_ZONE)
    warnings = book.add(SITE, "shop", 9, {MINUTE: 10, DAY: 10, MONTH: 1000}, NOW)
    assert warnings == [
        warning(MINUTE, 0.8, 9, 10),
        warning(MINUTE, 0.9, 9, 10),
        warning(DAY, 0.8, 9, 10),
        warning(DAY, 0.9, 9, 10),
    ]


def test_reserve_refund_reserve_warns_only_once() -> None:
    book = book_with(7)
    limits = {MINUTE: 10}
    assert [w.level for w in book.add(SITE, "shop", 2, limits, NOW)] == [0.8, 0.9]  # reserve
    assert book.add(SITE, "shop", -2, limits, NOW) == []  # the upstream refused: give back
    assert book.add(SITE, "shop", 2, limits, NOW) == []  # the next try reserves again


@pytest.mark.parametrize(
    ("start", "refund", "left"),
    [
        pytest.param(5, -2, 3, id="partial"),
        pytest.param(5, -5, 0, id="all"),
        pytest.param(5, -9, 0, id="more-than-counted"),
        pytest.param(0, -1, 0, id="nothing-counted"),
    ],
)
def test_refund_never_goes_below_zero(start: int, refund: int, left: int) -> None:
    book = book_with(start)
    assert book.add(SITE, "shop", refund, LIMITS, NOW) == []
    assert used(book) == dict.fromkeys(Window, left)


def test_refund_dated_in_the_new_period_is_taken_from_the_new_period() -> None:
    # Callers date a refund with the reservation's time (next test); one dated
    # later is subtracted from the new minute, clamped at 0.
    book = book_with(4)
    later = NOW + 60
    book.add(SITE, "shop", 3, LIMITS, later)  # another pass reserves in the new minute
    book.add(SITE, "shop", -4, LIMITS, later)  # the first pass gives its 4 back
    assert book.used(SITE, "shop", MINUTE, later) == 0
    assert book.used(SITE, "shop", DAY, later) == 3


def test_refund_dated_in_a_period_that_has_ended_changes_nothing() -> None:
    book = book_with(4)
    later = NOW + 60
    book.add(SITE, "shop", 3, LIMITS, later)  # the new minute starts
    book.add(SITE, "shop", -4, LIMITS, NOW)  # a refund for the old minute: gone already
    assert book.used(SITE, "shop", MINUTE, later) == 3
    assert book.used(SITE, "shop", DAY, later) == 3  # the day is the same: 4 + 3 - 4


@pytest.mark.parametrize(
    ("later", "minute", "day", "month"),
    [
        pytest.param(NOW + 20, 7, 7, 7, id="same-minute"),
        pytest.param(NOW + 60, 2, 7, 7, id="next-minute"),
        pytest.param(utc(2026, 11, 22, 0, 0, 1), 2, 2, 7, id="next-day"),
        pytest.param(utc(2026, 12, 1), 2, 2, 2, id="next-month"),
    ],
)
def test_counts_reset_when_the_period_changes(
    later: float, minute: int, day: int, month: int
) -> None:
    book = book_with(5)
    book.add(SITE, "shop", 2, LIMITS, later)
    assert used(book, later) == {MINUTE: minute, DAY: day, MONTH: month}


def test_a_new_day_reads_zero_and_the_old_period_is_forgotten_on_add() -> None:
    book = book_with(100)
    tomorrow = utc(2026, 11, 22, 8)
    assert book.over(SITE, "shop", LIMITS, NOW) is not None
    assert book.over(SITE, "shop", LIMITS, tomorrow) is None  # before any add
    book.add(SITE, "shop", 1, LIMITS, tomorrow)
    assert {key[3] for key, _ in book} == {"2026-11-22T08:00", "2026-11-22", "2026-11"}


def test_load_replaces_the_cached_counts_with_the_stored_ones() -> None:
    book = book_with(5)
    book.load(
        [
            ((SITE, "shop", MINUTE, "2026-11-21T10:05"), 3),  # a give-back elsewhere: lower
            ((SITE, "shop", DAY, "2026-11-21"), 40),  # other processes counted more
            ((UPSTREAM, "mx1", MONTH, "2026-11"), 7),  # only in the store
        ]
    )
    assert used(book) == {MINUTE: 3, DAY: 40, MONTH: 5}
    assert book.used(UPSTREAM, "mx1", MONTH, NOW) == 7
    book.add(SITE, "shop", 1, LIMITS, NOW)
    assert used(book) == {MINUTE: 4, DAY: 41, MONTH: 6}


def test_load_of_a_new_period_forgets_the_old_one() -> None:
    book = book_with(5)
    book.load([((SITE, "shop", MINUTE, "2026-11-21T10:06"), 2)])
    assert book.used(SITE, "shop", MINUTE, NOW + 60) == 2
    assert (SITE, "shop", MINUTE, "2026-11-21T10:05") not in dict(book)


def test_ratio() -> None:
    book = book_with(25)
    assert book.ratio(SITE, "shop", DAY, 100, NOW) == 0.25
    assert book.ratio(SITE, "shop", DAY, 100, utc(2026, 11, 22)) == 0.0


def test_minute_counts_do_not_return_in_the_repeated_dst_hour() -> None:
    book = UsageBook(BERLIN)
    first = utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    book.add(SITE, "shop", 10, {}, first)
    assert book.over(SITE, "shop", {MINUTE: 10}, first) is not None
    assert book.over(SITE, "shop", {MINUTE: 10}, first + HOUR) is None  # 02:30 CET


# -- Claims: what the store decides (relay.usage_database reads and writes, admit decides)


def claim(count: int = 1, limits: dict[Window, int] = LIMITS, name: str = "shop",
          at: float = NOW) -> Claim:  # fmt: skip
    return Claim(SITE, name, limits, count, at, UTC_ZONE)


def keys(name: str = "shop") -> list[tuple[Scope, str, Window, str]]:
    return [
        (SITE, name, MINUTE, "2026-11-21T10:05"),
        (SITE, name, DAY, "2026-11-21"),
        (SITE, name, MONTH, "2026-11"),
    ]


def test_claim_keys_are_every_window_of_its_time() -> None:
    assert claim().counter_keys == tuple(keys())
    assert claim(limits={}).counter_keys == tuple(keys())  # counted in unlimited windows too


def test_admit_grants_until_the_limit_then_refuses_in_order() -> None:
    stored = dict(zip(keys(), [8, 98, 998], strict=True))
    verdicts, deltas = admit([claim(), claim(), claim(), claim(name="blog")], stored)
    assert verdicts[0] == Granted(dict(zip(keys(), [9, 99, 999], strict=True)))
    assert verdicts[1] == Granted(dict(zip(keys(), [10, 100, 1000], strict=True)))
    assert verdicts[2] == OverLimit(MINUTE, 10, 10, utc(2026, 11, 21, 10, 6))
    assert verdicts[3] == Granted(dict.fromkeys(keys("blog"), 1))  # missing rows count 0
    assert deltas == {**dict.fromkeys(keys(), 2), **dict.fromkeys(keys("blog"), 1)}


@pytest.mark.parametrize(
    ("stored", "count", "limits", "expected"),
    [
        pytest.param([0, 0, 0], 1, {DAY: 0}, OverLimit(DAY, 0, 0, utc(2026, 11, 22)),
                     id="zero-limit"),
        pytest.param([0, 99, 0], 1, LIMITS, None, id="last-one-fits"),
        pytest.param([0, 99, 0], 2, LIMITS, OverLimit(DAY, 100, 99, utc(2026, 11, 22)),
                     id="two-do-not-fit"),
        pytest.param([9, 100, 0], 1, LIMITS, OverLimit(DAY, 100, 100, utc(2026, 11, 22)),
                     id="day-full-minute-free"),
        pytest.param([0, 0, 1000], 1, LIMITS, OverLimit(MONTH, 1000, 1000, utc(2026, 12, 1)),
                     id="month-full"),
        pytest.param([50, 5000, 10**6], 7, {}, None, id="no-limits-never-refuse"),
    ],
)  # fmt: skip
def test_admit_one_claim(
    stored: list[int], count: int, limits: dict[Window, int], expected: OverLimit | None
) -> None:
    counts = dict(zip(keys(), stored, strict=True))
    [verdict], deltas = admit([claim(count, limits)], counts)
    if expected is None:
        assert verdict == Granted({k: n + count for k, n in counts.items()})
        assert deltas == dict.fromkeys(keys(), count)
    else:
        assert verdict == expected
        assert deltas == {}  # a refused claim counts nothing


def test_admit_a_refused_claim_leaves_room_for_a_smaller_one() -> None:
    stored = dict(zip(keys(), [7, 7, 7], strict=True))
    verdicts, deltas = admit([claim(4), claim(3)], stored)  # recipients of two deliveries
    assert isinstance(verdicts[0], OverLimit) and isinstance(verdicts[1], Granted)
    assert deltas == dict.fromkeys(keys(), 3)


def test_admit_empty() -> None:
    assert admit([], {}) == ([], {})


def test_settle_caches_the_store_counts_and_warns_on_the_claim_that_crosses() -> None:
    book = UsageBook(UTC_ZONE)
    limits = {DAY: 10}
    [before] = admit([claim(limits=limits)], dict.fromkeys(keys(), 6))[0]
    assert isinstance(before, Granted)
    assert book.settle(claim(limits=limits), before) == []  # 7: below 80 %
    [crossing] = admit([claim(limits=limits)], dict.fromkeys(keys(), 7))[0]
    assert isinstance(crossing, Granted)
    assert book.settle(claim(limits=limits), crossing) == [warning(DAY, 0.8, 8, 10)]
    assert used(book) == dict.fromkeys(Window, 8)
    assert book.settle(claim(limits=limits), crossing) == []  # each level once per period
