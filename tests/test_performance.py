"""Measured performance: the weighted window, the score, the floor, and routing by them."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from relay.core.classify import Stage, TransactionResult
from relay.core.directory import Directory
from relay.core.health import HealthPolicy
from relay.core.model import MessageClass, SmtpReply, Strategy, Upstream, UpstreamKind
from relay.core.performance import (
    ALPHA,
    EXPLORE,
    Performance,
    Sample,
    batches,
    rank,
    worked,
)
from relay.core.quota import UsageBook
from relay.core.routing import Conditions, RoutingPolicy, choose_route


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible test draws, not cryptography


def up(name: str, **changes: Any) -> Upstream:
    return replace(Upstream(name, UpstreamKind.SMTP, host=f"{name}.example", port=25), **changes)


def conditions(performance: dict[str, Performance]) -> Conditions:
    return Conditions({}, HealthPolicy(), UsageBook("UTC"), 1000.0, performance)


def one_by_one(old: Performance | None, samples: list[Sample]) -> Performance | None:
    for sample in samples:
        (batch,) = batches([sample])
        old = batch.apply(old, 0.0)
    return old


def test_a_batch_is_the_same_as_its_samples_one_by_one() -> None:
    samples = [Sample("a", ok, seconds) for ok, seconds in [(True, 0.1), (False, 5.0), (True, 0.3)]]
    start = Performance(0.5, 1.0, 10)
    (batch,) = batches(samples)
    merged = batch.apply(start, 0.0)
    single = one_by_one(start, samples)
    assert single is not None
    assert merged.success_rate == pytest.approx(single.success_rate)
    assert merged.latency_seconds == pytest.approx(single.latency_seconds)
    assert merged.samples == single.samples == 13


def test_first_figures_are_the_weighted_mean_of_the_first_batch() -> None:
    (batch,) = batches([Sample("a", True, 0.2), Sample("a", True, 0.2)])
    first = batch.apply(None, 5.0)
    assert first == Performance(pytest.approx(1.0), pytest.approx(0.2), 2, 5.0)  # type: ignore[arg-type]


def test_the_window_forgets_old_failures() -> None:
    bad = Performance(0.0, 10.0, 100)
    after = one_by_one(bad, [Sample("a", True, 0.1)] * 30)
    assert after is not None
    assert after.success_rate == pytest.approx(1 - (1 - ALPHA) ** 30)
    assert after.success_rate > 0.95


def test_batches_are_per_upstream() -> None:
    found = {b.upstream: b.samples for b in batches([Sample("a", True, 0), Sample("b", False, 1),
                                                      Sample("a", True, 0)])}  # fmt: skip
    assert found == {"a": 2, "b": 1}


def test_score_falls_with_failures_and_time() -> None:
    fast = Performance(0.99, 0.12)
    slow = Performance(0.99, 2.0)
    failing = Performance(0.4, 0.12)
    assert fast.score > slow.score > 0
    assert fast.score > failing.score
    assert fast.describe() == "0.93 (99% ok, 120 ms)"
    assert slow.describe().endswith("(99% ok, 2.0 s)")


def test_unmeasured_upstreams_rank_first_so_they_get_tried() -> None:
    figures = {"a": Performance(0.9, 0.1)}
    for seed in range(20):
        ranked, explored = rank(["a", "new"], figures, seeded(seed))
        if explored is None:
            assert ranked == ["new", "a"]


def test_the_floor_gives_a_bad_upstream_a_share() -> None:
    figures = {"good": Performance(1.0, 0.05), "bad": Performance(0.0, 30.0)}
    rng = seeded(1)
    firsts = Counter(rank(["bad", "good"], figures, rng)[0][0] for _ in range(4000))
    assert firsts["bad"] / 4000 == pytest.approx(EXPLORE, abs=0.02)


def test_performance_strategy_orders_and_explains() -> None:
    directory = Directory.of([], [], (up("slow"), up("fast")))
    figures = {"fast": Performance(0.99, 0.12), "slow": Performance(0.45, 1.9)}
    routes = [
        choose_route(None, MessageClass.TRANSACTIONAL, directory,
                     RoutingPolicy(Strategy.PERFORMANCE), conditions(figures), seeded(seed))
        for seed in range(50)
    ]  # fmt: skip
    firsts = Counter(r.upstreams[0].name for r in routes)
    assert firsts["fast"] > firsts["slow"] > 0
    plain = next(r for r in routes if r.upstreams[0].name == "fast")
    assert plain.explain() == (
        "performance: fast 0.93 (99% ok, 120 ms) > slow 0.23 (45% ok, 1.9 s); try fast, slow"
    )
    explored = next(r for r in routes if r.upstreams[0].name == "slow")
    assert explored.explain() == (
        "performance: fast 0.93 (99% ok, 120 ms) > slow 0.23 (45% ok, 1.9 s); "
        "exploring slow; try slow, fast"
    )


def test_cost_ties_go_to_the_better_performer() -> None:
    directory = Directory.of([], [], (up("a", cost_per_1000=0.5), up("b", cost_per_1000=0.5),
                                      up("c", cost_per_1000=0.1)))  # fmt: skip
    figures = {"a": Performance(0.5, 1.0), "b": Performance(1.0, 0.1)}
    policy = RoutingPolicy(Strategy.COST)

    found = choose_route(None, MessageClass.TRANSACTIONAL, directory, policy,
                         conditions(figures), seeded(0))  # fmt: skip
    assert [u.name for u in found.upstreams] == ["c", "b", "a"]
    assert found.explain() == (
        "cost: tie by score: b 0.95 (100% ok, 100 ms) > a 0.33 (50% ok, 1.0 s); try c, b, a"
    )
    unmeasured = choose_route(None, MessageClass.TRANSACTIONAL, directory, policy,
                              conditions({}), seeded(0))  # fmt: skip
    assert [u.name for u in unmeasured.upstreams] == ["c", "a", "b"]  # list order, as before
    assert unmeasured.explain() == "cost: try c, a, b"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(TransactionResult(Stage.DATA, SmtpReply(250, "2.0.0 ok")), True, id="sent"),
        pytest.param(TransactionResult(Stage.MAIL, SmtpReply(550, "5.7.1 no")), True, id="5xx"),
        pytest.param(
            TransactionResult(Stage.RCPT, None, {"a@x.org": SmtpReply(450, "4.1.1 later")}),
            True,
            id="rcpt-4xx-is-about-the-recipient",
        ),
        pytest.param(
            TransactionResult(Stage.DATA, SmtpReply(452, "4.2.2 mailbox full")),
            True,
            id="mailbox-full",
        ),
        pytest.param(
            TransactionResult(Stage.MAIL, SmtpReply(451, "4.7.1 slow down")),
            False,
            id="mail-4xx-throttled",
        ),
        pytest.param(TransactionResult(Stage.DATA, SmtpReply(421, "4.3.2 bye")), False, id="421"),
        pytest.param(TransactionResult(Stage.CONNECT, None, {}, "refused"), False, id="connect"),
        pytest.param(TransactionResult(Stage.DATA, None, {}, "timed out"), False, id="timeout"),
        pytest.param(TransactionResult(Stage.AUTH, SmtpReply(535, "5.7.8 no")), False, id="auth"),
    ],
)
def test_which_attempts_count_as_the_upstream_working(
    result: TransactionResult, expected: bool
) -> None:
    assert worked(result) is expected
