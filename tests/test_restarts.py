"""When a dead worker is started again, and when the supervisor gives up (relay.core.restarts)."""

from __future__ import annotations

import pytest

from relay.core.restarts import GiveUp, Restart, RestartPolicy, after_death

POLICY = RestartPolicy(quick_seconds=10, first_delay=1, max_delay=8, give_up_after=5)


def test_a_worker_that_ran_a_while_is_replaced_at_once() -> None:
    assert after_death(POLICY, started_at=100, died_at=500, quick_deaths=3) == Restart(0, 0)


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (0, Restart(1, 1)),
        (1, Restart(2, 2)),
        (2, Restart(4, 3)),
        (3, Restart(8, 4)),
        (4, GiveUp(5)),
    ],
)
def test_deaths_soon_after_start_back_off_then_give_up(
    before: int, expected: Restart | GiveUp
) -> None:
    assert after_death(POLICY, started_at=100, died_at=100.5, quick_deaths=before) == expected


def test_the_wait_stops_growing_at_the_ceiling() -> None:
    patient = RestartPolicy(give_up_after=100, max_delay=8)
    assert after_death(patient, 0, 1, quick_deaths=20) == Restart(8, 21)
