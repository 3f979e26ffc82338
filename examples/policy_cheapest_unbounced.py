"""Cheapest upstream first, never one that bounced the recipient's domain today.

A policy module for relay (README "Policy hooks"). For each delivery, the
relay's own route (its candidates, after inactive, open-circuit and over-quota
upstreams are left out) is re-ordered by ``cost_per_1000`` (unknown cost last),
and an upstream that hard-bounced (5.x.x) one of the message's recipient
domains since midnight in BOUNCE_TZ is dropped. Should that drop every
candidate, all are kept in cost order: a bounce is better than no delivery.
The reason goes into the attempt's route text
("policy: cheapest first; dropped cheap (bounced example.org today)").

The bounces come with the facts: ``UpstreamFacts.bounced`` maps each recipient
domain an upstream hard-bounced lately to the time of its last such bounce, as
this relay process saw it (a restart forgets; each worker and node learns its
own) -- no store query per message, no state of the module's own.

    policy:
      module: examples/policy_cheapest_unbounced.py

    BOUNCE_TZ   IANA time zone whose midnight starts "today"   (default: UTC)
"""

from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo

from relay.policy import RouteChoice, RouteFacts, UpstreamFacts

ZONE = ZoneInfo(os.environ.get("BOUNCE_TZ", "UTC"))


def on_route(facts: RouteFacts) -> RouteChoice:
    midnight = datetime.fromtimestamp(facts.now, ZONE).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    since = midnight.timestamp()
    ranked = sorted(facts.upstreams, key=_cost)
    bounced = {u.name: sorted(d for d, at in u.bounced.items() if at >= since) for u in ranked}
    kept = [u.name for u in ranked if not bounced[u.name]]
    dropped = "; ".join(f"{n} (bounced {', '.join(ds)} today)" for n, ds in bounced.items() if ds)
    if not kept:
        return RouteChoice([u.name for u in ranked], f"cheapest first; all bounced: {dropped}")
    return RouteChoice(kept, "cheapest first" + (f"; dropped {dropped}" if dropped else ""))


def _cost(upstream: UpstreamFacts) -> tuple[bool, float]:
    return upstream.cost_per_1000 is None, upstream.cost_per_1000 or 0.0
