"""The one seam where the relay announces what happened, for logs, stats, tests and webhooks.

Events are values: a committed ``DeliveryRecord``, a ``QuotaWarning``, a
``CircuitChange``, a ``DnsChange``. Listeners are called synchronously in order; one that
raises is logged and the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from relay.core.health import CircuitState

log = logging.getLogger(__name__)
Listener = Callable[[object], None]


@dataclass(frozen=True)
class CircuitChange:
    upstream: str
    old: CircuitState
    new: CircuitState
    reason: str | None


@dataclass(frozen=True)
class DnsChange:
    """A check of a domain's DNS changed status since the last verification."""

    domain: str
    check: str  # "spf example.com", "dkim relay1", ...
    old: str  # core.domain_checks.Status values
    new: str
    detail: str


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def publish(self, event: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not break delivery
                log.exception("event listener %r failed on %s", listener, type(event).__name__)
