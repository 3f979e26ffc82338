"""Queue operations for operators (the admin API calls these): retry, flush, hold, release,
delete, stats.

Each runs in its own store transaction and answers with the message's new
status, None when there is no such message, or raises ``QueueConflict``
when the operation does not apply to the message's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from relay.campaign_delivery_database import record_campaign_results
from relay.cluster_controller import FLUSH, ClusterSync
from relay.core.model import MessageStatus
from relay.health_controller import HealthController
from relay.queue_database import (
    QueueStats,
    delete_message,
    flush_waiting,
    hold,
    queue_stats,
    release,
    retry_now,
)
from relay.store import GroupWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flushed:
    messages: int  # waiting messages made due now
    upstreams: list[str]  # upstreams whose circuit was open and is closed now


class QueueController:
    def __init__(
        self,
        writer: GroupWriter,
        wake_delivery: Callable[[], None],
        health: HealthController,
        sync: ClusterSync,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._sync = sync
        self._wake_delivery = wake_delivery
        self._health = health
        self._clock = clock

    async def retry(self, message_id: str) -> MessageStatus | None:
        now = self._clock()
        status = await self._writer.write(lambda c: retry_now(c, message_id, now))
        if status is not None:
            log.info("message %s: retry now requested (%s)", message_id, status.value)
            self._wake_delivery()
        return status

    async def flush(self) -> Flushed:
        """Try everything now (an upstream is back): Postfix's ``postqueue -f``.

        Every node learns its circuits alone, so every node closes its own:
        this one at once, the others within ``cluster.sync_seconds``
        (``apply_flush``, run by the cluster sync).
        """
        now = self._clock()
        upstreams = self._health.close_all()
        count = await self._sync.change(FLUSH, lambda c: flush_waiting(c, now))
        closed = ", ".join(upstreams) or "none"
        log.info("queue flushed: %d messages due now; circuits closed: %s", count, closed)
        return Flushed(count, upstreams)

    async def apply_flush(self) -> None:
        """A flush (here or on another node): close this node's circuits, look for due mail."""
        closed = self._health.close_all()
        if closed:
            log.info("circuits closed by a queue flush on another node: %s", ", ".join(closed))
        self._wake_delivery()

    async def hold(self, message_id: str) -> MessageStatus | None:
        now = self._clock()
        status = await self._writer.write(lambda c: hold(c, message_id, now))
        if status is not None:
            log.info("message %s: held", message_id)
        return status

    async def release(self, message_id: str) -> MessageStatus | None:
        now = self._clock()
        status = await self._writer.write(lambda c: release(c, message_id, now))
        if status is not None:
            log.info("message %s: released (%s)", message_id, status.value)
            self._wake_delivery()
        return status

    async def delete(self, message_id: str) -> bool:
        now = self._clock()

        async def delete(c: AsyncConnection) -> bool:
            # A campaign's message still waiting fails for its campaign: it can still complete.
            outcome = {message_id: (False, "message deleted by an operator")}
            await c.run_sync(lambda s: record_campaign_results(s, outcome, now))
            return await delete_message(c, message_id)

        deleted = await self._writer.write(delete)
        if deleted:
            log.info("message %s: deleted by an operator", message_id)
        return deleted

    async def stats(self) -> QueueStats:
        async with self._writer.engine.connect() as connection:
            return await queue_stats(connection)
