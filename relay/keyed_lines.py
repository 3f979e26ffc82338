"""Waiting in line per key: one holder at a time, a bounded number behind it.

For work that one client (an address, a username) may ask for many times at
once and that must happen one at a time: a caller beyond the line's length
gets ``LineFull`` at once instead of a place, so waiting stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager


class LineFull(Exception):
    """More callers than the line holds are waiting for one of the keys."""


class KeyedLines:
    def __init__(self, max_waiting: int) -> None:
        self._max_waiting = max_waiting
        self._locks: dict[str, asyncio.Lock] = {}
        self._present: Counter[str] = Counter()  # holder and waiters per key

    @asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        """The turn of every key, taken in the order given (callers give one order: no
        deadlock), held for the ``async with`` block."""
        if any(self._present[key] > self._max_waiting for key in keys):
            raise LineFull
        for key in keys:
            self._present[key] += 1
        try:
            async with AsyncExitStack() as stack:
                for key in keys:
                    await stack.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
                yield
        finally:
            for key in keys:
                self._present[key] -= 1
                if not self._present[key]:
                    del self._present[key], self._locks[key]
