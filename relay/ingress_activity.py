"""Messages being accepted in this process now, so that bulk work can step aside for them.

A campaign's generation is CPU work (render, compose, sign) in the process that also
answers SMTP's DATA and the send API. Run at full speed beside them it took the accepts'
p99 from 28 to 149 ms (``python -m bench --campaign``). Bulk work asks `wait_quiet` before
each small piece: it goes on at once while no accept is under way, and otherwise waits
(bounded) for the ones under way to finish. The accepts' latency is what people feel.
"""

from __future__ import annotations

import asyncio
import contextlib


class IngressActivity:
    def __init__(self) -> None:
        self._running = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def busy(self) -> bool:
        return self._running > 0

    def __enter__(self) -> None:
        self._running += 1
        self._quiet.clear()

    def __exit__(self, *_: object) -> None:
        self._running -= 1
        if self._running == 0:
            self._quiet.set()

    async def wait_quiet(self, at_most: float) -> None:
        """Return when no accept is under way, or after ``at_most`` seconds (bulk work must
        not starve under a steady stream of accepts either)."""
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), at_most)
