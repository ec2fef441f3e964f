"""A token bucket: the sandbox gateway's rate limit (429 with ``Retry-After``).

The bucket holds at most ``burst`` tokens and gains ``rate_per_s`` per second; each
admitted request takes one. It starts full. The clock is injected (monotonic seconds), so
tests can drive it without waiting. Like the ledger, it is used only from the event loop's
thread and never awaits, so it needs no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """``burst`` requests at once, then ``rate_per_s`` on average."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self._rate = rate_per_s
        self._burst = burst
        self._monotonic = monotonic
        self._tokens = float(burst)
        self._updated = monotonic()

    def try_take(self) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be."""
        now = self._monotonic()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))
