"""Failure throttling: too many failures per key within a window blocks the key.

Keys are strings such as ``ip:192.0.2.1`` or ``user:shop``. Client addresses
are keyed by ``client_network``: one IPv6 host owns a whole /64, so counting
its addresses one by one would count nothing.

``FailureThrottle`` counts in memory (the admin API's token failures);
``blocked_until`` and ``KnownBlocked`` serve SMTP AUTH, whose failures every
node counts in the store.
"""

from __future__ import annotations

import ipaddress
from collections import deque


def client_network(address: str) -> str:
    """The unit a client is counted by: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket, say): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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


def blocked_until(recent: list[float], max_failures: int, window_seconds: float) -> float | None:
    """Until when a key is blocked, given its newest failure times (newest first); else None.

    ``recent`` needs no more than the ``max_failures`` newest failures inside
    the window: blocked while that many remain, so until the oldest of them
    leaves the window.
    """
    if len(recent) < max_failures:
        return None
    return recent[max_failures - 1] + window_seconds


class KnownBlocked:
    """Keys this process has seen blocked, and until when: answered without asking the store.

    Safe to trust: a blocked key only unblocks as its failures age (or when an
    attempt in flight is refunded: then the key stays refused a little longer
    here than in the store, never shorter). Bounded: beyond ``max_keys`` the
    expired, then the oldest entries go.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self._until: dict[str, float] = {}
        self._max_keys = max_keys

    def is_blocked(self, key: str, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def block(self, key: str, until: float, now: float) -> None:
        if key not in self._until and len(self._until) >= self._max_keys:
            for old in [k for k, t in self._until.items() if t <= now]:
                del self._until[old]
            while len(self._until) >= self._max_keys:
                del self._until[next(iter(self._until))]
        self._until[key] = max(until, self._until.get(key, until))
