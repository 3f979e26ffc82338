"""Changes made on one node reach every node within ``cluster.sync_seconds``.

The store keeps a version per shared thing (relay/cluster_database.py):
``catalog`` is bumped in the very transaction of every change made through the
admin API, ``reload`` by every reload that applied (SIGHUP or POST
/api/v1/reload), ``flush`` in the transaction of every queue flush. Every node
reads the versions every ``sync_seconds`` (one small SELECT) and, for each
that moved, runs its applier: ``catalog`` reloads the store's objects,
``reload`` re-reads the node's *own* config file (one reload reloads every
node; each keeps its own file), ``flush`` closes the node's circuits (an
operator said the upstreams are back). A node marks its own changes seen as it
applies them, so it never applies them twice; changes and polls take turns, so
a poll never finds a version whose change this node is still applying. A
version read before the objects are loaded can only make a node load again,
never miss a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from relay import cluster_database
from relay.store import GroupWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
CATALOG = "catalog"  # sites, credentials, upstreams, domains made through the admin API
RELOAD = "reload"  # the config files: a reload on one node makes every node re-read its own
FLUSH = "flush"  # an operator's queue flush: every node closes its circuits and looks for mail
Applier = Callable[[], Awaitable[None]]


class ClusterSync:
    def __init__(
        self,
        writer: GroupWriter,
        appliers: Mapping[str, Applier],
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._appliers = appliers
        self._clock = clock
        self._seen: dict[str, int] = {}
        self._turn = asyncio.Lock()

    async def start(self) -> None:
        """Take the versions as seen: call it before loading what they stand for."""
        self._seen = await self._read()

    async def change(self, name: str, job: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``job`` with ``name``'s version bumped in its transaction, then applied here."""

        async def bumped(connection: AsyncConnection) -> tuple[int, T]:
            # The version's row first: concurrent changes queue on it before taking others.
            version = await cluster_database.bump(connection, name, self._clock())
            return version, await job(connection)

        async with self._turn:
            version, result = await self._writer.write(bumped)
            self._seen[name] = version
            await self._appliers[name]()
        return result

    async def announce(self, name: str) -> None:
        """A change already applied here (a reload): the other nodes apply theirs."""
        async with self._turn:
            self._seen[name] = await self._writer.write(
                lambda c: cluster_database.bump(c, name, self._clock())
            )

    async def poll(self) -> list[str]:
        """Apply what moved since this node last looked; the names that moved."""
        async with self._turn:
            versions = await self._read()
            moved = [
                n for n, v in versions.items() if n in self._appliers and v != self._seen.get(n)
            ]
            for name in moved:
                await self._appliers[name]()  # raises: not seen, tried again at the next poll
                self._seen[name] = versions[name]
        return moved

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                moved = await self.poll()
            except Exception as error:  # the next poll tries again
                log.warning("changes from other nodes not applied: %s", error)
            else:
                if moved:
                    log.info("applied changes made on other nodes: %s", ", ".join(moved))

    async def _read(self) -> dict[str, int]:
        async with self._writer.engine.connect() as connection:
            return await cluster_database.versions(connection)
