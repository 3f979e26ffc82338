"""The server re-verifies its domains' DNS now and then and reports what changed.

A record that disappears (a DNS migration that forgot the DKIM key) is found
here before receivers start rejecting: a log line per changed check and the
``relay_domain_check_state`` / ``relay_domain_verified`` metrics, and a ``DnsChange`` event
(``domain.dns_changed`` for webhooks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from relay.core.directory import Directory
from relay.core.domain_checks import Check, Status, passed, plan, records_to_publish
from relay.domain_verifier import DnsLookup, Verification, verify
from relay.events import DnsChange, Events
from relay.metrics import Metrics

log = logging.getLogger(__name__)


class DomainMonitor:
    def __init__(
        self,
        directory: Callable[[], Directory],
        lookup: DnsLookup,
        secret: bytes,
        metrics: Metrics,
        events: Events | None = None,
    ) -> None:
        self._directory = directory
        self._events = events
        self._lookup = lookup
        self._secret = secret
        self._metrics = metrics
        self.latest: dict[str, Verification] = {}  # by domain: what the API shows

    async def run(self, interval: float) -> None:
        while True:
            await self.verify_all()
            await asyncio.sleep(interval)

    async def verify_all(self) -> None:
        directory = self._directory()
        for domain in directory.domains:
            try:
                result = await verify(
                    domain.name, directory, self._secret, self._lookup, dt.date.today()
                )
            except Exception:  # one domain's surprise must not stop the others' checks
                log.exception("domain %s: DNS verification failed", domain.name)
                continue
            self.record(result)

    async def verify(self, name: str) -> Verification:
        """One domain now (the API's verify); the result is recorded like a periodic one."""
        result = await verify(name, self._directory(), self._secret, self._lookup, dt.date.today())
        self.record(result)
        return result

    def records(self, name: str) -> list[Check]:
        """Every record the domain needs (what to publish), without asking DNS."""
        p = plan(name, self._directory(), self._secret)
        return records_to_publish(p, dt.date.today())

    def record(self, result: Verification) -> None:
        before = self.latest.get(result.domain)
        previous = {c.name: c.status for c in before.checks} if before else {}
        for check in result.checks:
            old = previous.get(check.name)
            if old is not check.status and (before is not None or check.status is not Status.PASS):
                self._log_change(result.domain, check, old)
                if before is not None:
                    self._metrics.domain_check_changes.labels(result.domain).inc()
                if old is not None and self._events is not None:
                    self._events.publish(
                        DnsChange(
                            result.domain, check.name, old.value, check.status.value, check.detail
                        )
                    )
            for status in Status:
                self._metrics.domain_check_state.labels(result.domain, check.name, status).set(
                    1 if status is check.status else 0
                )
        for name in previous.keys() - {c.name for c in result.checks}:
            for status in Status:  # a selector retired from the config: its series go
                self._metrics.domain_check_state.remove(result.domain, name, status)
        self._metrics.domain_verified.labels(result.domain).set(1 if passed(result.checks) else 0)
        self.latest[result.domain] = result

    @staticmethod
    def _log_change(domain: str, check: Check, old: Status | None) -> None:
        """Problems found at start, and every change after; a healthy start stays quiet."""
        log.log(
            logging.WARNING if check.status is Status.FAIL else logging.INFO,
            "domain %s: %s %s%s: %s",
            domain,
            check.name,
            check.status.value,
            f" (was {old.value})" if old else "",
            check.detail,
        )
