"""Transactional first, the pure parts: bulk allowances, where they apply, the connection
queue that lets transactional sends go first, and the two config keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay.config import load_config
from relay.core.directory import Directory
from relay.core.health import HealthPolicy
from relay.core.model import MessageClass
from relay.core.quota import Claim, Granted, OverLimit, Scope, UsageBook, Window, admit, allowance
from relay.core.routing import (
    ClassRule,
    Conditions,
    RoutingPolicy,
    availability,
    transactional_upstreams,
)
from relay.upstream_client import Slots
from tests.test_config import base, problems_of, write
from tests.test_routing import NOW, site, up

UTC = ZoneInfo("UTC")
BULK, TRANSACTIONAL = MessageClass.BULK, MessageClass.TRANSACTIONAL


def test_allowance_keeps_the_top_share_and_never_all_of_a_small_limit() -> None:
    limits = {Window.MINUTE: 10, Window.DAY: 50_000, Window.MONTH: 1}
    assert allowance(limits, 0.2) == {Window.MINUTE: 8, Window.DAY: 40_000, Window.MONTH: 1}
    assert allowance({Window.MINUTE: 3}, 0.2) == {Window.MINUTE: 2}
    assert allowance({Window.MINUTE: 10}, 0.0) == {Window.MINUTE: 10}


def test_a_claim_with_a_ceiling_is_admitted_up_to_it_and_warns_by_the_limit() -> None:
    def claim(count: int, ceiling: dict[Window, int] | None) -> Claim:
        return Claim(Scope.UPSTREAM, "a", {Window.MINUTE: 10}, count, NOW, UTC, ceiling)

    key = claim(1, None).counter_keys[0]
    [verdict], _ = admit([claim(1, {Window.MINUTE: 8})], {key: 8})
    assert isinstance(verdict, OverLimit) and (verdict.used, verdict.limit) == (8, 8)
    [verdict], _ = admit([claim(1, None)], {key: 8})  # transactional: the whole limit
    assert isinstance(verdict, Granted)
    book = UsageBook(UTC)
    bulk = claim(8, {Window.MINUTE: 8})
    [granted], _ = admit([bulk], {})
    assert isinstance(granted, Granted)
    assert [w.level for w in book.settle(bulk, granted)] == [0.8]  # 8 of 10, not 8 of 8


def conditions(book: UsageBook, shared: frozenset[str] | None = None) -> Conditions:
    return Conditions({}, HealthPolicy(), book, NOW, reserve=0.2, shared=shared)


def test_bulk_mail_is_over_an_upstream_limit_at_its_allowance() -> None:
    book = UsageBook(UTC)
    limited = up("a", rate_per_minute=10)
    book.add(Scope.UPSTREAM, "a", 8, {Window.MINUTE: 10}, NOW)

    skip = availability(limited, conditions(book), 1, BULK)
    assert skip is not None and skip.until == NOW - NOW % 60 + 60
    assert skip.reason == (
        "over minute limit (8/8 recipients per minute) for bulk mail, "
        "the rest is kept for transactional mail"
    )
    assert availability(limited, conditions(book), 2, TRANSACTIONAL) is None
    # An upstream no transactional mail may use keeps nothing back.
    assert availability(limited, conditions(book, frozenset({"b"})), 1, BULK) is None
    book.add(Scope.UPSTREAM, "a", 2, {Window.MINUTE: 10}, NOW)  # full: for everyone
    skip = availability(limited, conditions(book), 1, BULK)
    assert skip is not None and skip.reason == "over minute limit (10/10 recipients per minute)"


def test_transactional_upstreams_are_the_sites_lists_else_the_class_rule_else_all() -> None:
    upstreams = [up("main"), up("bulk"), up("spare")]
    own = Directory.of([site(("main",))], [], upstreams)
    assert transactional_upstreams(own, RoutingPolicy()) == {"main"}
    anyone = Directory.of([site()], [], upstreams)
    assert transactional_upstreams(anyone, RoutingPolicy()) == {"main", "bulk", "spare"}
    rules = RoutingPolicy(
        classes={TRANSACTIONAL: ClassRule(("main", "spare")), BULK: ClassRule(("bulk",))}
    )
    assert transactional_upstreams(anyone, rules) == {"main", "spare"}


async def test_a_waiting_transactional_send_goes_before_waiting_bulk_sends() -> None:
    slots = Slots(1)
    order: list[str] = []

    async def send(name: str, bulk: bool) -> None:
        async with slots.held(bulk):
            order.append(name)
            await asyncio.sleep(0)

    await slots.acquire()  # the send under way
    waiting = [asyncio.create_task(send(f"bulk {i}", True)) for i in range(3)]
    await asyncio.sleep(0)
    waiting.append(asyncio.create_task(send("receipt", False)))
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*waiting)
    assert order == ["receipt", "bulk 0", "bulk 1", "bulk 2"]


@pytest.mark.parametrize("handed_first", [False, True])
async def test_a_cancelled_waiter_leaves_no_slot_taken(handed_first: bool) -> None:
    slots = Slots(1)
    await slots.acquire()
    gone = asyncio.create_task(slots.acquire(bulk=True))
    await asyncio.sleep(0)
    if handed_first:  # the slot was passed to the waiter, which is cancelled before it ran
        slots.release()
        gone.cancel()
    else:
        gone.cancel()
        slots.release()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.wait_for(slots.acquire(), 1)  # free again
    assert slots._free == 0 and not any(slots._waiting)


def test_config_keys_and_their_bounds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base())).delivery
    assert (config.bulk_share, config.transactional_reserve) == (0.75, 0.2)
    data = base()
    data["delivery"] = {"bulk_share": 1, "transactional_reserve": 0}
    config = load_config(write(tmp_path, data)).delivery
    assert (config.bulk_share, config.transactional_reserve) == (1.0, 0.0)
    data["delivery"] = {"bulk_share": 0, "transactional_reserve": 1.5}
    assert problems_of(write(tmp_path, data)) == [
        "delivery.bulk_share: must be a number from 0 to 1, more than 0",
        "delivery.transactional_reserve: must be a number from 0 to 1",
    ]
