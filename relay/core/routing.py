"""Which upstreams a message may use, in order, and why each other one was left out.

A pure function of the site, the message class, the upstreams, their health,
their usage and the time. Candidates are, most specific first: the site's
own `upstreams` list, else the list the routing rules give the message's
class, else every upstream by `priority`. The strategy (the site's, else
the class rule's, else the default) orders them:

- priority: the list in order (by `priority` when no list is given);
- cost: cheapest `cost_per_1000` first (no cost given sorts last), ties in list order;
- weighted: a random order in which each upstream comes first in proportion
  to its `weight` (weight 0: only after all the others);
- performance: best measured score first (``core.performance``), but a share
  of messages lead with another so a recovered upstream gets traffic again;
- cost breaks its ties by that score too.

Then each candidate that is inactive, whose circuit is open, or that is over
a rate or quota is left out with its reason, and with the time it may be
usable again, so a message that nobody may take now waits until then
instead of backing off blindly. Bulk mail is over a limit sooner: the top
``Conditions.reserve`` share of each rate and quota is kept for
transactional mail (``quota.allowance``) on the upstreams transactional mail
may be routed to (``transactional_upstreams``); one that only bulk mail
reaches is bulk mail's to the last message.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from relay.core.directory import Directory
from relay.core.health import Circuit, HealthPolicy
from relay.core.model import MessageClass, Site, Strategy, Upstream
from relay.core.performance import Performance, describe_ranking, rank, score_of
from relay.core.quota import OverLimit, Scope, UsageBook, allowance, limits_of


@dataclass(frozen=True)
class ClassRule:
    upstreams: tuple[str, ...] = ()
    strategy: Strategy | None = None


@dataclass(frozen=True)
class RoutingPolicy:
    strategy: Strategy = Strategy.PRIORITY
    classes: Mapping[MessageClass, ClassRule] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    upstream: str
    reason: str
    until: float | None = None  # when waiting makes it usable again; None: waiting will not


@dataclass(frozen=True)
class Route:
    upstreams: tuple[Upstream, ...]
    skipped: tuple[Skip, ...]
    strategy: Strategy = Strategy.PRIORITY
    ranking: str = ""  # the scores it was ordered by (performance)
    policy: str = ""  # what the operator's on_route hook did (core.policy_hooks)

    @property
    def available_at(self) -> float | None:
        return earliest_opening(self.skipped)

    def explain(self) -> str:
        chosen = ", ".join(u.name for u in self.upstreams) or "none"
        left = describe_skips(self.skipped)
        ranking = f"{self.ranking}; " if self.ranking else ""
        return (
            f"{self.strategy.value}: {ranking}try {chosen}"
            + (f"; skipped {left}" if left else "")
            + (f"; policy: {self.policy}" if self.policy else "")
        )


def earliest_opening(skips: Iterable[Skip]) -> float | None:
    """The earliest time a left-out upstream may take the message, if waiting helps."""
    return min((s.until for s in skips if s.until is not None), default=None)


def describe_skips(skips: Iterable[Skip]) -> str:
    return "; ".join(f"{s.upstream}: {s.reason}" for s in skips)


def bulk_over(over: OverLimit) -> str:
    """Why a bulk message may not use an upstream whose limit has room left: the rest is
    transactional mail's."""
    return f"{over.describe('recipients')} for bulk mail, the rest is kept for transactional mail"


@dataclass(frozen=True)
class Conditions:
    """What routing reads about the upstreams at one moment."""

    circuits: Mapping[str, Circuit]
    health: HealthPolicy
    usage: UsageBook
    now: float
    performance: Mapping[str, Performance] = field(default_factory=dict)
    reserve: float = 0.0  # the share of each upstream limit bulk mail leaves to transactional
    shared: frozenset[str] | None = None  # where it is left (transactional_upstreams); None: all


def choose_route(
    site: Site | None,
    message_class: MessageClass,
    directory: Directory,
    policy: RoutingPolicy,
    conditions: Conditions,
    rng: random.Random,
    needed: int = 1,
) -> Route:
    rule = policy.classes.get(message_class, ClassRule())
    names = (site.upstreams if site else ()) or rule.upstreams
    skipped: list[Skip] = []
    if names:
        candidates = []
        for name in names:
            upstream = directory.upstream(name)
            if upstream is None:
                skipped.append(Skip(name, "unknown upstream"))
            else:
                candidates.append(upstream)
    else:
        candidates = sorted(directory.upstreams, key=lambda u: (u.priority, u.name))
    strategy = (site.strategy if site else None) or rule.strategy or policy.strategy
    chosen = []
    ranking = ""
    if strategy is Strategy.PERFORMANCE:
        measured = conditions.performance
        ranked, explored = rank([u.name for u in candidates], measured, rng)
        by_name = {u.name: u for u in candidates}
        ordered = [by_name[n] for n in ranked]
        ranking = describe_ranking(ranked, measured, explored)
    else:
        ordered = order(candidates, strategy, rng, conditions.performance)
        if strategy is Strategy.COST and conditions.performance:
            ranking = _cost_ties(ordered, conditions.performance)
    for upstream in ordered:
        skip = availability(upstream, conditions, needed, message_class)
        if skip is None:
            chosen.append(upstream)
        else:
            skipped.append(skip)
    return Route(tuple(chosen), tuple(skipped), strategy, ranking)


def transactional_upstreams(directory: Directory, policy: RoutingPolicy) -> frozenset[str]:
    """The upstreams some transactional message may be routed to: every site's own list, else
    the transactional class rule's, else all (any site may send transactional mail)."""
    rule = policy.classes.get(MessageClass.TRANSACTIONAL, ClassRule())
    fallback = rule.upstreams or tuple(u.name for u in directory.upstreams)
    return frozenset(name for site in directory.sites for name in site.upstreams or fallback)


def _cost_ties(ordered: Sequence[Upstream], measured: Mapping[str, Performance]) -> str:
    """How the measured scores broke ties of equal cost, e.g. "tie by score: b 0.93 (...) > a"."""
    groups: dict[float | None, list[str]] = {}
    for upstream in ordered:
        groups.setdefault(upstream.cost_per_1000, []).append(upstream.name)
    ties = [
        describe_ranking(names, measured, None)
        for names in groups.values()
        if len(names) > 1 and any(n in measured for n in names)
    ]
    return f"tie by score: {'; '.join(ties)}" if ties else ""


def order(
    candidates: Sequence[Upstream],
    strategy: Strategy,
    rng: random.Random,
    performance: Mapping[str, Performance] | None = None,
) -> list[Upstream]:
    if strategy is Strategy.COST:
        measured = performance or {}
        return sorted(
            candidates,
            key=lambda u: (
                u.cost_per_1000 is None,
                u.cost_per_1000 or 0.0,
                -score_of(measured, u.name),  # equal costs: the better performer first
            ),
        )
    if strategy is Strategy.WEIGHTED:
        # Efraimidis-Spirakis: sorting by u ** (1 / weight) draws a weighted order
        # without replacement.
        def key(upstream: Upstream) -> float:
            draw = rng.random()
            return draw ** (1 / upstream.weight) if upstream.weight > 0 else -1.0 + draw

        return sorted(candidates, key=key, reverse=True)
    return list(candidates)


def availability(
    upstream: Upstream,
    conditions: Conditions,
    needed: int = 1,
    message_class: MessageClass = MessageClass.TRANSACTIONAL,
) -> Skip | None:
    """Why the upstream may not take a message now (and until when), or None when it may."""
    if not upstream.active:
        return Skip(upstream.name, "inactive")
    circuit = conditions.circuits.get(upstream.name, Circuit())
    if not circuit.admits(conditions.health, conditions.now):
        reason = f"circuit {circuit.state.value}"
        if circuit.last_error:
            reason += f" after {circuit.failures} failures (last: {circuit.last_error})"
        return Skip(upstream.name, reason, circuit.reopens_at(conditions.health, conditions.now))
    limits = limits_of(upstream)
    usage, now = conditions.usage, conditions.now
    over = usage.over(Scope.UPSTREAM, upstream.name, limits, now, needed)
    if over is None and _keeps_reserve(upstream, conditions, message_class):
        kept = allowance(limits, conditions.reserve)
        over = usage.over(Scope.UPSTREAM, upstream.name, kept, now, needed)
        if over is not None:
            return Skip(upstream.name, bulk_over(over), over.reopens_at)
    if over is not None:
        return Skip(upstream.name, over.describe("recipients"), over.reopens_at)
    return None


def _keeps_reserve(upstream: Upstream, conditions: Conditions, message_class: MessageClass) -> bool:
    """Whether a message of this class leaves the upstream's reserve to transactional mail."""
    shared = conditions.shared
    return (
        message_class is MessageClass.BULK
        and conditions.reserve > 0
        and (shared is None or upstream.name in shared)
    )
