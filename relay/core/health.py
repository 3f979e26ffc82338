"""Upstream health: a circuit breaker per upstream.

Closed: traffic flows; consecutive failures are counted. After
``failure_threshold`` of them the circuit opens and routes skip the upstream.
Once ``cooldown_seconds`` have passed, one delivery (or an active check) may
go through as a probe (half-open): success closes the circuit, failure opens
it for another cooldown. A probe that never reports (a crash) does not keep
the circuit half-open for ever: after another cooldown a new probe may go.

What counts as a failure is decided by ``relay.core.classify.upstream_failed``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

PROBE_VERDICT_SECONDS = 5.0  # mail waiting behind a probe looks again this soon


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True)
class HealthPolicy:
    failure_threshold: int = 5
    cooldown_seconds: float = 60.0


@dataclass(frozen=True)
class Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0  # consecutive
    changed_at: float = 0.0  # when the state last changed (opened, or the probe went out)
    last_error: str | None = None

    def admits(self, policy: HealthPolicy, now: float) -> bool:
        """May traffic go to the upstream now (as a probe, if the circuit is not closed)?"""
        if self.state is CircuitState.CLOSED:
            return True
        return now >= self.changed_at + policy.cooldown_seconds

    def reopens_at(self, policy: HealthPolicy, now: float) -> float | None:
        """When to look again, for an open circuit; None when closed.

        While a probe is out, its verdict usually comes within seconds: mail
        that waits for it looks again then, not after a whole cooldown.
        """
        if self.state is CircuitState.CLOSED:
            return None
        verdict_due = self.changed_at + min(PROBE_VERDICT_SECONDS, policy.cooldown_seconds)
        if self.state is CircuitState.HALF_OPEN and now < verdict_due:
            return verdict_due
        return self.changed_at + policy.cooldown_seconds

    def reset(self, now: float) -> Circuit:
        """An operator's flush says the upstream is back: closed, failures forgotten."""
        return self if self.state is CircuitState.CLOSED else Circuit(changed_at=now)

    def probing(self, now: float) -> Circuit:
        """A probe goes out: the other deliveries keep skipping the upstream meanwhile."""
        if self.state is CircuitState.CLOSED:
            return self
        return replace(self, state=CircuitState.HALF_OPEN, changed_at=now)

    def failed(self, policy: HealthPolicy, now: float, error: str) -> Circuit:
        failures = self.failures + 1
        if self.state is not CircuitState.CLOSED or failures >= policy.failure_threshold:
            return Circuit(CircuitState.OPEN, failures, now, error)
        return replace(self, failures=failures, last_error=error)

    def succeeded(self, now: float) -> Circuit:
        if self.state is CircuitState.CLOSED and self.failures == 0:
            return self
        return Circuit(
            CircuitState.CLOSED,
            0,
            now if self.state is not CircuitState.CLOSED else self.changed_at,
            None,
        )
