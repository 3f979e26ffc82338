"""Routing: candidates (site list, class rule, all), strategies, and why upstreams are left out."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.core.directory import Directory
from relay.core.health import Circuit, CircuitState, HealthPolicy
from relay.core.model import MessageClass, Site, Strategy, Upstream, UpstreamKind
from relay.core.quota import Scope, UsageBook
from relay.core.routing import ClassRule, Conditions, Route, RoutingPolicy, Skip, choose_route

PRIORITY, COST, WEIGHTED = Strategy.PRIORITY, Strategy.COST, Strategy.WEIGHTED
BULK, TRANSACTIONAL = MessageClass.BULK, MessageClass.TRANSACTIONAL
NOW = datetime(2026, 11, 21, 10, 5, 30, tzinfo=UTC).timestamp()
HEALTH = HealthPolicy(failure_threshold=3, cooldown_seconds=60.0)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible test draws, not cryptography


def up(name: str, **changes: Any) -> Upstream:
    return replace(Upstream(name, UpstreamKind.SMTP, host=f"{name}.example", port=25), **changes)


def site(upstreams: tuple[str, ...] = (), strategy: Strategy | None = None) -> Site:
    return Site(
        id="shop",
        name="Shop",
        from_email="sales@example.com",
        upstreams=upstreams,
        strategy=strategy,
    )


# By priority (then name): delta, alpha, beta, gamma. By cost: delta and beta tie.
UPSTREAMS = (
    up("alpha", priority=10, cost_per_1000=0.90),
    up("beta", priority=20, cost_per_1000=0.50),
    up("gamma", priority=20),
    up("delta", priority=5, cost_per_1000=0.50),
)
DIRECTORY = Directory.of([], [], UPSTREAMS)


def route(
    site: Site | None = None,
    message_class: MessageClass = TRANSACTIONAL,
    policy: RoutingPolicy | None = None,
    *,
    directory: Directory = DIRECTORY,
    circuits: Mapping[str, Circuit] | None = None,
    usage: UsageBook | None = None,
    rng: random.Random | None = None,
    needed: int = 1,
) -> Route:
    conditions = Conditions(circuits or {}, HEALTH, usage or UsageBook(ZoneInfo("UTC")), now=NOW)
    return choose_route(
        site,
        message_class,
        directory,
        policy or RoutingPolicy(),
        conditions,
        rng or seeded(1),
        needed,
    )


def names(route: Route) -> list[str]:
    return [u.name for u in route.upstreams]


# -- candidates and the priority strategy


@pytest.mark.parametrize(
    ("site", "chosen"),
    [
        pytest.param(None, ["delta", "alpha", "beta", "gamma"], id="no-site"),
        pytest.param(site(), ["delta", "alpha", "beta", "gamma"], id="no-list-priority-then-name"),
        pytest.param(site(("gamma", "alpha")), ["gamma", "alpha"], id="site-list-order"),
        pytest.param(site(("beta", "delta", "alpha", "gamma")), ["beta", "delta", "alpha", "gamma"],
                     id="site-list-beats-priority"),
    ],
)  # fmt: skip
def test_priority_strategy(site: Site | None, chosen: list[str]) -> None:
    result = route(site)
    assert result.strategy is PRIORITY
    assert names(result) == chosen
    assert result.skipped == ()


BULK_RULE = RoutingPolicy(classes={BULK: ClassRule(upstreams=("gamma", "beta"))})


@pytest.mark.parametrize(
    ("site", "message_class", "chosen"),
    [
        pytest.param(site(), BULK, ["gamma", "beta"], id="rule-applies"),
        pytest.param(None, BULK, ["gamma", "beta"], id="rule-applies-without-site"),
        pytest.param(site(), TRANSACTIONAL, ["delta", "alpha", "beta", "gamma"],
                     id="other-class-all"),
        pytest.param(site(("alpha",)), BULK, ["alpha"], id="site-list-wins"),
    ],
)  # fmt: skip
def test_class_rules(site: Site | None, message_class: MessageClass, chosen: list[str]) -> None:
    assert names(route(site, message_class, BULK_RULE)) == chosen


@pytest.mark.parametrize(
    ("site_strategy", "rule_strategy", "default", "expected"),
    [
        pytest.param(None, None, PRIORITY, PRIORITY, id="default"),
        pytest.param(None, None, COST, COST, id="default-cost"),
        pytest.param(None, COST, PRIORITY, COST, id="rule-over-default"),
        pytest.param(PRIORITY, COST, COST, PRIORITY, id="site-over-rule"),
        pytest.param(COST, None, PRIORITY, COST, id="site-over-default"),
        pytest.param(WEIGHTED, PRIORITY, COST, WEIGHTED, id="site-weighted"),
    ],
)
def test_strategy_precedence(
    site_strategy: Strategy | None,
    rule_strategy: Strategy | None,
    default: Strategy,
    expected: Strategy,
) -> None:
    policy = RoutingPolicy(default, {BULK: ClassRule(strategy=rule_strategy)})
    assert route(site(strategy=site_strategy), BULK, policy).strategy is expected


def test_rule_strategy_orders_the_site_list() -> None:
    policy = RoutingPolicy(classes={BULK: ClassRule(strategy=COST)})
    result = route(site(("gamma", "alpha", "beta")), BULK, policy)
    assert result.strategy is COST
    assert names(result) == ["beta", "alpha", "gamma"]


def test_rule_of_another_class_does_not_apply() -> None:
    policy = RoutingPolicy(classes={BULK: ClassRule(("gamma",), COST)})
    result = route(site(), TRANSACTIONAL, policy)
    assert result.strategy is PRIORITY
    assert names(result) == ["delta", "alpha", "beta", "gamma"]


# -- cost


@pytest.mark.parametrize(
    ("site", "chosen"),
    [
        pytest.param(site(strategy=COST), ["delta", "beta", "alpha", "gamma"],
                     id="no-list-ties-in-priority-order"),
        pytest.param(site(("gamma", "alpha", "beta", "delta"), COST),
                     ["beta", "delta", "alpha", "gamma"], id="ties-in-site-list-order"),
        pytest.param(site(("gamma", "alpha"), COST), ["alpha", "gamma"], id="no-cost-last"),
    ],
)  # fmt: skip
def test_cost_strategy(site: Site, chosen: list[str]) -> None:
    assert names(route(site)) == chosen


def test_cost_zero_is_a_cost_not_unknown() -> None:
    directory = Directory.of(
        [], [], [up("unknown"), up("paid", cost_per_1000=0.1), up("free", cost_per_1000=0.0)]
    )
    result = route(site(("unknown", "paid", "free"), COST), directory=directory)
    assert names(result) == ["free", "paid", "unknown"]


# -- weighted


def first_shares(weights: dict[str, int], draws: int = 10_000, seed: int = 7) -> dict[str, float]:
    directory = Directory.of([], [], [up(n, weight=w) for n, w in weights.items()])
    rng = seeded(seed)
    firsts = Counter(
        names(route(site(strategy=WEIGHTED), directory=directory, rng=rng))[0] for _ in range(draws)
    )
    return {name: firsts[name] / draws for name in weights}


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"one": 1, "three": 3}, id="1-3"),
        pytest.param({"a": 1, "b": 1}, id="equal"),
        pytest.param({"a": 1, "b": 2, "c": 3, "d": 4}, id="1-2-3-4"),
        pytest.param({"a": 10, "b": 1, "zero": 0}, id="with-zero"),
    ],
)
def test_weighted_first_in_proportion_to_weight(weights: dict[str, int]) -> None:
    total = sum(weights.values())
    shares = first_shares(weights)
    for name, weight in weights.items():
        assert shares[name] == pytest.approx(weight / total, abs=0.02), name


def test_weighted_puts_weight_zero_last() -> None:
    directory = Directory.of([], [], [up("zero", weight=0), up("a"), up("b", weight=5)])
    rng = seeded(3)
    for _ in range(1000):
        chosen = names(route(site(strategy=WEIGHTED), directory=directory, rng=rng))
        assert sorted(chosen) == ["a", "b", "zero"]
        assert chosen[-1] == "zero"


def test_weighted_is_reproducible_with_a_seed() -> None:
    directory = Directory.of([], [], [up(n, weight=w) for n, w in [("a", 1), ("b", 2), ("c", 3)]])

    def orders(seed: int) -> list[list[str]]:
        rng = seeded(seed)
        return [
            names(route(site(strategy=WEIGHTED), directory=directory, rng=rng)) for _ in range(20)
        ]

    assert orders(11) == orders(11)
    assert len({tuple(o) for o in orders(11)}) > 1  # it does shuffle


# -- skips


def test_unknown_and_inactive_are_skipped_for_good() -> None:
    directory = Directory.of([], [], [*UPSTREAMS, up("off", active=False)])
    result = route(site(("ghost", "off", "alpha")), directory=directory)
    assert names(result) == ["alpha"]
    assert result.skipped == (Skip("ghost", "unknown upstream"), Skip("off", "inactive"))
    assert result.available_at is None


def test_inactive_is_skipped_without_a_list_too() -> None:
    directory = Directory.of([], [], [up("off", active=False, priority=1), up("on")])
    result = route(None, directory=directory)
    assert names(result) == ["on"]
    assert result.skipped == (Skip("off", "inactive", None),)


@pytest.mark.parametrize(
    ("circuit", "skip"),
    [
        pytest.param(
            Circuit(CircuitState.OPEN, 3, NOW - 10, "connect: refused"),
            Skip("alpha", "circuit open after 3 failures (last: connect: refused)", NOW + 50),
            id="open",
        ),
        pytest.param(
            Circuit(CircuitState.OPEN, 0, NOW - 59, None),
            Skip("alpha", "circuit open", NOW + 1),
            id="open-without-error",
        ),
        pytest.param(
            Circuit(CircuitState.HALF_OPEN, 4, NOW - 5, "tls: handshake"),
            Skip("alpha", "circuit half_open after 4 failures (last: tls: handshake)", NOW + 55),
            id="probe-in-progress",
        ),
        pytest.param(
            Circuit(CircuitState.HALF_OPEN, 4, NOW - 1, None),
            Skip("alpha", "circuit half_open", NOW + 4),
            id="probe-just-sent: look again when its verdict is due",
        ),
        pytest.param(Circuit(CircuitState.OPEN, 3, NOW - 60, "x"), None, id="cooldown-over"),
        pytest.param(Circuit(CircuitState.CLOSED, 2, 0.0, "x"), None, id="closed-with-failures"),
    ],
)
def test_circuit(circuit: Circuit, skip: Skip | None) -> None:
    result = route(site(("alpha", "beta")), circuits={"alpha": circuit})
    if skip is None:
        assert names(result) == ["alpha", "beta"]
        assert result.skipped == ()
    else:
        assert names(result) == ["beta"]
        assert result.skipped == (skip,)
        assert "circuit" in result.skipped[0].reason
        assert result.available_at == skip.until


def limited(**limits: int) -> Directory:
    return Directory.of([], [], [up("capped", **limits), up("spare")])


def usage_of(count: int, zone: str = "UTC", scope: Scope = Scope.UPSTREAM) -> UsageBook:
    book = UsageBook(ZoneInfo(zone))
    book.add(scope, "capped", count, {}, NOW)
    return book


@pytest.mark.parametrize(
    ("limits", "usage", "skip"),
    [
        pytest.param(
            {"rate_per_minute": 5},
            usage_of(5),
            Skip("capped", "over minute limit (5/5 recipients per minute)", NOW + 30),
            id="rate",
        ),
        pytest.param(
            {"daily_limit": 5},
            usage_of(5),
            Skip(
                "capped",
                "over day limit (5/5 recipients per day)",
                datetime(2026, 11, 22, tzinfo=UTC).timestamp(),
            ),
            id="daily",
        ),
        pytest.param(
            {"daily_limit": 5},
            usage_of(5, "Europe/Berlin"),
            Skip(
                "capped",
                "over day limit (5/5 recipients per day)",
                datetime(2026, 11, 21, 23, tzinfo=UTC).timestamp(),
            ),
            id="daily-berlin",
        ),
        pytest.param(
            {"monthly_limit": 5},
            usage_of(7),
            Skip(
                "capped",
                "over month limit (7/5 recipients per month)",
                datetime(2026, 12, 1, tzinfo=UTC).timestamp(),
            ),
            id="monthly",
        ),
        pytest.param({"rate_per_minute": 5}, usage_of(4), None, id="room-left"),
        pytest.param(
            {"rate_per_minute": 5}, usage_of(5, scope=Scope.SITE), None, id="site-usage-ignored"
        ),
    ],
)
def test_quota(limits: dict[str, int], usage: UsageBook, skip: Skip | None) -> None:
    result = route(site(("capped", "spare")), directory=limited(**limits), usage=usage)
    assert names(result) == (["spare"] if skip else ["capped", "spare"])
    assert result.skipped == ((skip,) if skip else ())


@pytest.mark.parametrize(("needed", "skipped"), [(1, False), (2, False), (3, True), (50, True)])
def test_quota_counts_needed_recipients(needed: int, skipped: bool) -> None:
    result = route(
        site(("capped",)), directory=limited(daily_limit=10), usage=usage_of(8), needed=needed
    )
    assert bool(result.skipped) is skipped
    assert names(result) == ([] if skipped else ["capped"])


def test_available_at_is_the_earliest_until() -> None:
    directory = Directory.of(
        [], [], [up("off", active=False), up("daily", daily_limit=1), up("tripped")]
    )
    usage = UsageBook(ZoneInfo("UTC"))
    usage.add(Scope.UPSTREAM, "daily", 1, {}, NOW)
    circuits = {"tripped": Circuit(CircuitState.OPEN, 3, NOW - 30, "reset")}
    result = route(
        site(("ghost", "off", "daily", "tripped")),
        directory=directory,
        usage=usage,
        circuits=circuits,
    )
    assert result.upstreams == ()
    assert [(s.upstream, s.until) for s in result.skipped] == [
        ("ghost", None),
        ("off", None),
        ("daily", datetime(2026, 11, 22, tzinfo=UTC).timestamp()),
        ("tripped", NOW + 30),
    ]
    assert result.available_at == NOW + 30


@pytest.mark.parametrize(
    ("skipped", "available_at"),
    [
        pytest.param((), None, id="nothing-skipped"),
        pytest.param((Skip("a", "inactive"), Skip("b", "unknown upstream")), None, id="no-until"),
        pytest.param((Skip("a", "x", 300.0), Skip("b", "y"), Skip("c", "z", 200.0)), 200.0,
                     id="min-ignoring-none"),
    ],
)  # fmt: skip
def test_route_available_at(skipped: tuple[Skip, ...], available_at: float | None) -> None:
    assert Route((), skipped).available_at == available_at


@pytest.mark.parametrize(
    ("route_", "text"),
    [
        pytest.param(Route((up("a"), up("b")), ()), "priority: try a, b", id="nothing-skipped"),
        pytest.param(
            Route((up("a"),), (Skip("ghost", "unknown upstream"), Skip("c", "inactive")), COST),
            "cost: try a; skipped ghost: unknown upstream; c: inactive",
            id="skipped",
        ),
        pytest.param(
            Route((), (Skip("c", "circuit open", 5.0),), WEIGHTED),
            "weighted: try none; skipped c: circuit open",
            id="none-chosen",
        ),
    ],
)
def test_explain(route_: Route, text: str) -> None:
    assert route_.explain() == text


def test_explain_of_a_chosen_route_names_chosen_and_skipped() -> None:
    directory = Directory.of([], [], [*UPSTREAMS, up("off", active=False)])
    text = route(site(("ghost", "off", "beta", "alpha")), directory=directory).explain()
    assert text == "priority: try beta, alpha; skipped ghost: unknown upstream; off: inactive"


def test_no_upstreams_at_all() -> None:
    result = route(site(), directory=Directory.of([], [], []))
    assert result == Route((), (), PRIORITY)
    assert result.available_at is None
    assert result.explain() == "priority: try none"
