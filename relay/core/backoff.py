"""When to try a deferred message again: exponential backoff with jitter, up to a maximum age."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    first_delay: float = 60.0
    max_delay: float = 3600.0
    max_age: float = 3 * 86400.0

    def delay(self, attempt_count: int, rng: random.Random) -> float:
        """Delay before try number ``attempt_count + 1``; "equal jitter" keeps at least half."""
        exponent = min(max(attempt_count - 1, 0), 30)
        ceiling = min(self.max_delay, self.first_delay * (2**exponent))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))

    def is_expired(self, created_at: float, now: float) -> bool:
        return now - created_at >= self.max_age
