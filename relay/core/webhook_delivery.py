"""A webhook endpoint, and what happens after each try of an event to it.

An endpoint comes from the file (``webhooks:``) or the admin API; either way
it is this value. After a try: a 2xx answer is delivered; anything else (an
error, a timeout, a redirect, which is never followed, any other status) is
tried again on the schedule below, with jitter so that many events failing
together do not come back together, until ``retry_hours`` after the event was
written (at least 24 h): the last try is at that moment, and if it fails too
the event is ``failed``. An endpoint that has had no success for
``disable_after_hours`` while failing is disabled. Pure: ``now`` and jitter
are passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.core.model import Secret
from relay.core.outbound_events import Subscription

HOUR = 3600.0
# Seconds from a failed try to the next: the n-th failure waits the n-th (the last repeats).
SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0)
JITTER = 0.2  # each wait is stretched or shrunk by up to this share


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    secret: Secret  # whsec_...
    events: frozenset[str] = frozenset()  # empty: all
    sites: frozenset[str] = frozenset()  # empty: all
    max_in_flight: int | None = None  # None: events.max_in_flight
    managed_by_file: bool = True

    def subscription(self, enabled: bool) -> Subscription:
        return Subscription(self.name, self.events, self.sites, enabled)


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"  # given up: no try left before the deadline


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    next_attempt_at: float | None = None  # with RETRY


def succeeded(status_code: int | None) -> bool:
    """Only 2xx: a 3xx is not followed (it could lead anywhere), so it is a failure."""
    return status_code is not None and 200 <= status_code < 300


def after_try(
    status_code: int | None,
    attempt_count: int,
    created_at: float,
    now: float,
    retry_seconds: float,
    jitter: float,
) -> Verdict:
    """What becomes of an event after its ``attempt_count``-th try (1 for the first).

    ``jitter`` is a number in [0, 1).
    """
    if succeeded(status_code):
        return Verdict(Outcome.DELIVERED)
    deadline = created_at + retry_seconds
    if now >= deadline:
        return Verdict(Outcome.FAILED)
    wait = SCHEDULE[min(max(attempt_count, 1), len(SCHEDULE)) - 1]
    wait *= 1 + JITTER * (2 * jitter - 1)
    return Verdict(Outcome.RETRY, min(now + wait, deadline))


def due_for_disabling(
    failing_since: float | None, now: float, disable_after_seconds: float
) -> bool:
    """Whether an endpoint failing since ``failing_since`` (no success since) is disabled now."""
    return failing_since is not None and now - failing_since >= disable_after_seconds
