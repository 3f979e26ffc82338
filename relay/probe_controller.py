"""An operator's test of one upstream: connect, TLS, AUTH with timings, and optionally a message.

The check goes through the health controller, so its verdict also feeds the
upstream's circuit. The message is sent on a fresh connection, not queued:
the answer is that upstream's own reply, now.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.core import dkim
from relay.core.addresses import domain_of
from relay.core.classify import TransactionResult
from relay.core.directory import Directory
from relay.core.ids import new_message_id
from relay.core.model import Upstream
from relay.core.probe_message import probe_message
from relay.health_controller import HealthController
from relay.upstream_client import CheckResult, make_client


@dataclass(frozen=True)
class ProbeReport:
    check: CheckResult
    message_id: str | None = None  # when a message was sent
    sent: TransactionResult | None = None
    send_seconds: float | None = None


class ProbeController:
    def __init__(
        self,
        health: HealthController,
        directory: Callable[[], Directory],
        hostname: str,
        clock: Callable[[], float] = time.time,
        allow_private: bool = False,
    ) -> None:
        self._health = health
        self._directory = directory
        self._hostname = hostname
        self._clock = clock
        self._allow_private = allow_private  # admin.allow_private_upstreams

    @property
    def default_sender(self) -> str:
        """MAIL FROM of a test message sent without ``from``."""
        return f"postmaster@{self._hostname}"

    async def probe(
        self, upstream: Upstream, to: str | None = None, sender: str | None = None
    ) -> ProbeReport:
        check = await self._health.check(upstream)
        if to is None or not check.ok:
            return ProbeReport(check)
        sender = sender or self.default_sender
        now = self._clock()
        message_id = new_message_id(now, os.urandom(10))
        content = probe_message(sender, to, upstream.name, self._hostname, message_id, now)
        key = self._directory().signing_key(domain_of(sender))
        if key is not None:
            content = dkim.sign(content, key, now)
        client = make_client(upstream, self._hostname, self._allow_private)
        started = time.monotonic()
        try:
            result = await client.send(sender, [to], content, message_id)
        finally:
            await client.close()
        return ProbeReport(check, message_id, result, time.monotonic() - started)
