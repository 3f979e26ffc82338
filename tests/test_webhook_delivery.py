"""After a try: delivered, tried again later, or given up (relay/core/webhook_delivery.py)."""

from __future__ import annotations

import pytest

from relay.core.webhook_delivery import (
    SCHEDULE,
    Outcome,
    after_try,
    due_for_disabling,
    succeeded,
)

DAY = 86400.0


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        (200, True),
        (204, True),
        (299, True),
        (301, False),
        (302, False),
        (404, False),
        (500, False),
        (503, False),
        (None, False),
    ],
)
def test_only_2xx_is_a_success(code: int | None, ok: bool) -> None:
    assert succeeded(code) is ok


def test_the_schedule_grows_then_repeats_its_last_step() -> None:
    waits = [after_try(503, n, 0.0, 100.0, DAY, 0.5).next_attempt_at for n in range(1, 14)]
    assert [w - 100.0 for w in waits if w is not None] == [
        *SCHEDULE,
        *[SCHEDULE[-1]] * 4,
    ]


def test_jitter_stretches_or_shrinks_a_wait_by_at_most_a_fifth() -> None:
    low = after_try(None, 3, 0.0, 0.0, DAY, 0.0).next_attempt_at
    high = after_try(None, 3, 0.0, 0.0, DAY, 0.999999).next_attempt_at
    assert low == pytest.approx(120 * 0.8)
    assert high == pytest.approx(120 * 1.2, rel=1e-5)


def test_tries_go_on_until_the_deadline_then_the_event_fails() -> None:
    created = 1000.0
    last = after_try(503, 20, created, created + DAY - 60, DAY, 0.5)
    assert last.outcome is Outcome.RETRY
    assert last.next_attempt_at == created + DAY  # the last try is at the deadline
    assert after_try(503, 21, created, created + DAY, DAY, 0.5).outcome is Outcome.FAILED
    assert after_try(200, 21, created, created + DAY, DAY, 0.5).outcome is Outcome.DELIVERED


def test_the_24_hours_are_covered_by_tries() -> None:
    """From the first failure on, tries never stop before the deadline."""
    now, count, created = 0.0, 1, 0.0
    while (verdict := after_try(503, count, created, now, DAY, 0.0)).outcome is Outcome.RETRY:
        assert verdict.next_attempt_at is not None and verdict.next_attempt_at > now
        now, count = verdict.next_attempt_at, count + 1
    assert now >= DAY
    assert count < 40  # a bounded number of tries in a day


def test_an_endpoint_is_disabled_after_failing_long_enough() -> None:
    assert not due_for_disabling(None, 1e9, 3600)
    assert not due_for_disabling(1000.0, 1000.0 + 3599, 3600)
    assert due_for_disabling(1000.0, 1000.0 + 3600, 3600)
