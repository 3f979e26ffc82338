"""Which upstreams a message may use, in order, and why the others were left out.

The delivery-engine issue deepens this (health, limits, strategies); the
shape stays: a pure function from the site and the upstreams to a Route.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.directory import Directory
from relay.core.model import Site, Upstream


@dataclass(frozen=True)
class Route:
    upstreams: tuple[Upstream, ...]
    skipped: tuple[tuple[str, str], ...]  # (upstream name, reason)


def choose_route(site: Site | None, directory: Directory) -> Route:
    """The site's `upstreams` in order, else every active upstream by `priority`."""
    skipped: list[tuple[str, str]] = []
    if site is not None and site.upstreams:
        candidates = [directory.upstream(name) for name in site.upstreams]
        known = [u for u in candidates if u is not None]
        skipped += [
            (n, "unknown upstream")
            for n, u in zip(site.upstreams, candidates, strict=True)
            if u is None
        ]
    else:
        known = sorted(directory.upstreams, key=lambda u: (u.priority, u.name))
    chosen = []
    for upstream in known:
        if upstream.active:
            chosen.append(upstream)
        else:
            skipped.append((upstream.name, "inactive"))
    return Route(tuple(chosen), tuple(skipped))
