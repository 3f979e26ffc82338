"""Failure throttling for AUTH: too many failures per key within a window blocks the key.

Keys are strings such as ``ip:192.0.2.1`` or ``user:shop``; the caller checks
both before verifying a password, so a brute force from many addresses
against one username is stopped as well as one address trying many names.
"""

from __future__ import annotations

from collections import deque


class FailureThrottle:
    def __init__(self, max_failures: int, window_seconds: float, max_keys: int = 100_000) -> None:
        self._max_failures = max_failures
        self._window = window_seconds
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def is_blocked(self, key: str, now: float) -> bool:
        failures = self._failures.get(key)
        if failures is None:
            return False
        self._expire(failures, now)
        if not failures:
            del self._failures[key]
            return False
        return len(failures) >= self._max_failures

    def record_failure(self, key: str, now: float) -> None:
        if key not in self._failures and len(self._failures) >= self._max_keys:
            self._prune(now)
        failures = self._failures.setdefault(key, deque(maxlen=self._max_failures))
        failures.append(now)

    def record_success(self, key: str) -> None:
        self._failures.pop(key, None)

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self._window:
            failures.popleft()

    def _prune(self, now: float) -> None:
        """Keep memory bounded under a flood of distinct keys: drop expired, then oldest."""
        for key in list(self._failures):
            self._expire(self._failures[key], now)
            if not self._failures[key]:
                del self._failures[key]
        while len(self._failures) >= self._max_keys:
            del self._failures[next(iter(self._failures))]
