"""IngressActivity: bulk work waits for the accepts under way, and never longer than it says."""

from __future__ import annotations

import asyncio
import time

from relay.ingress_activity import IngressActivity


async def test_idle_answers_at_once() -> None:
    activity = IngressActivity()
    began = time.monotonic()
    await activity.wait_quiet(at_most=5)
    assert time.monotonic() - began < 0.5 and not activity.busy


async def test_waits_for_the_last_accept_under_way() -> None:
    activity = IngressActivity()
    activity.__enter__()
    activity.__enter__()
    waiter = asyncio.create_task(activity.wait_quiet(at_most=5))
    await asyncio.sleep(0.05)
    activity.__exit__(None, None, None)
    await asyncio.sleep(0.05)
    assert not waiter.done() and activity.busy  # one is still under way
    activity.__exit__(None, None, None)
    await asyncio.wait_for(waiter, 1)
    assert not activity.busy


async def test_a_steady_stream_of_accepts_does_not_starve_it() -> None:
    activity = IngressActivity()
    with activity:
        began = time.monotonic()
        await activity.wait_quiet(at_most=0.1)
        assert 0.05 <= time.monotonic() - began < 1
