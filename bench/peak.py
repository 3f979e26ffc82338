"""A server's peak proportional memory (PSS), sampled in a thread while a run lasts."""

from __future__ import annotations

import threading
from typing import Protocol


class HasPss(Protocol):
    def pss_bytes(self) -> int: ...


class PeakPss:
    """Samples a server's PSS in a thread while a run lasts."""

    def __init__(self, server: HasPss) -> None:
        self.peak = 0
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, self._server.pss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()
