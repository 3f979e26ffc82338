"""Upstream health: the circuit of every upstream, fed by deliveries and active checks.

Routing reads ``circuits``; a delivery calls ``begin`` right before it sends
(which turns an open circuit past its cooldown into a half-open probe, so
only one delivery probes) and ``record`` with the verdict. Active checks
(connect, EHLO, STARTTLS, AUTH, QUIT) run every ``check_interval_seconds``
on every active SMTP upstream whose circuit admits traffic, and on demand
(``check``): a dead upstream is found before a message finds it, and an open
circuit closes without waiting for a message to probe it.
Changes are persisted in batches, exported as the circuit-state metric,
logged and published as ``CircuitChange`` events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from relay.core.directory import Directory
from relay.core.health import Circuit, CircuitState, HealthPolicy
from relay.core.model import Upstream, UpstreamKind
from relay.engine_database import load_circuits, save_circuits
from relay.events import CircuitChange, Events
from relay.metrics import Metrics
from relay.store import GroupWriter
from relay.upstream_client import CheckResult, UpstreamClients

log = logging.getLogger(__name__)


class HealthController:
    def __init__(
        self,
        policy: HealthPolicy,
        writer: GroupWriter,
        clients: UpstreamClients,
        directory: Callable[[], Directory],
        metrics: Metrics,
        events: Events,
        clock: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.circuits: dict[str, Circuit] = {}
        self._writer = writer
        self._clients = clients
        self._directory = directory
        self._metrics = metrics
        self._events = events
        self._clock = clock
        self._dirty: set[str] = set()

    async def load(self) -> None:
        async with self._writer.engine.connect() as connection:
            self.circuits = await load_circuits(connection)
        for name, circuit in self.circuits.items():
            if circuit.state is not CircuitState.CLOSED:
                log.warning("upstream %s: circuit %s since the last run", name, circuit.state)

    def begin(self, upstream: str) -> bool:
        """About to send: False when the circuit refuses; a due probe makes it half-open."""
        now = self._clock()
        circuit = self.circuits.get(upstream, Circuit())
        if not circuit.admits(self.policy, now):
            return False
        self._set(upstream, circuit.probing(now), None)
        return True

    def record(self, upstream: str, failed: bool, detail: str) -> None:
        now = self._clock()
        circuit = self.circuits.get(upstream, Circuit())
        if failed:
            self._set(upstream, circuit.failed(self.policy, now, detail), detail)
        else:
            self._set(upstream, circuit.succeeded(now), None)

    def close_all(self) -> list[str]:
        """An operator says the upstreams are back: every circuit closes; returns the ones opened.

        One that is still down opens again after ``failure_threshold`` failures.
        """
        now = self._clock()
        opened = [n for n, c in self.circuits.items() if c.state is not CircuitState.CLOSED]
        for name in opened:
            self._set(name, self.circuits[name].reset(now), "flushed by an operator")
        return opened

    async def check(self, upstream: Upstream) -> CheckResult:
        """Connect, EHLO, STARTTLS, AUTH, QUIT now; the verdict feeds the circuit."""
        result = await self._clients.get(upstream).check()
        self.record(upstream.name, not result.ok, result.detail)
        log.info("upstream %s: health check %s", upstream.name, result.summary)
        self._metrics.health_checks.labels(upstream.name, "ok" if result.ok else "failed").inc()
        return result

    async def run_checks(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for upstream in self._directory().upstreams:
                if upstream.kind is not UpstreamKind.SMTP or not upstream.active:
                    continue
                if not self.begin(upstream.name):
                    continue
                try:
                    await self.check(upstream)
                except Exception:  # a check's bug must not stop the schedule
                    log.exception("upstream %s: health check failed unexpectedly", upstream.name)

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        changed = {name: self.circuits[name] for name in dirty if name in self.circuits}
        if changed:
            now = self._clock()
            try:
                await self._writer.write(lambda c: save_circuits(c, changed, now))
            except BaseException:
                self._dirty |= dirty  # written at the next flush
                raise

    def _set(self, upstream: str, circuit: Circuit, detail: str | None) -> None:
        old = self.circuits.get(upstream, Circuit())
        if circuit == old:
            return
        self.circuits[upstream] = circuit
        self._dirty.add(upstream)
        if circuit.state is old.state:
            return
        self._export(upstream, circuit.state)
        level = logging.INFO if circuit.state is CircuitState.CLOSED else logging.WARNING
        log.log(
            level,
            "upstream %s: circuit %s -> %s%s",
            upstream,
            old.state.value,
            circuit.state.value,
            f" after {circuit.failures} failures ({detail})" if detail else "",
        )
        self._events.publish(CircuitChange(upstream, old.state, circuit.state, detail))

    def export(self) -> None:
        """Every configured upstream gets its circuit-state series, even before any change."""
        for upstream in self._directory().upstreams:
            self._export(upstream.name, self.circuits.get(upstream.name, Circuit()).state)

    def _export(self, upstream: str, state: CircuitState) -> None:
        for s in CircuitState:
            self._metrics.circuit_state.labels(upstream, s.value).set(1 if s is state else 0)
