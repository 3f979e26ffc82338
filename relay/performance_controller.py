"""This process's copy of the upstreams' measured performance, re-read from the store.

Routing reads the copy, never the store. It is read at start, then every few seconds
(``App._persist``) once a route ordered by it, so a relay that
routes by priority or weight reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.performance import Performance
from relay.performance_database import load_performance


class PerformanceController:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.figures: Mapping[str, Performance] = {}
        self._wanted = False

    def wanted(self) -> None:
        """A route ordered by performance: keep the figures fresh from now on."""
        self._wanted = True

    async def refresh(self, always: bool = False) -> None:
        if not (self._wanted or always):
            return
        async with self._engine.connect() as connection:
            self.figures = await load_performance(connection)
