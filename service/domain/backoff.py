"""How long to wait before the next PAS attempt, and whether a command is too old to try.

Only calls that provably applied nothing are retried (PAS unreachable, 429, an error marked
``Recoverable``); this module decides the pause, not whether to retry. The pause grows
exponentially from ``initial_s`` (attempt 1) by ``multiplier``, is capped at ``max_s`` and,
with jitter on, is drawn uniformly from ``[0, backoff]`` ("full jitter", so workers that
failed together do not come back together). A ``Retry-After`` from PAS is a floor: the pause
is never shorter, even when that is above ``max_s``.
"""

from __future__ import annotations

import math
import random
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import RetrySettings


class BackoffPolicy:
    """Exponential backoff with an optional full jitter; the RNG is injected for tests."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        multiplier: float = 2.0,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not (math.isfinite(initial_s) and initial_s >= 0):
            raise ValueError("initial_s must be a finite number >= 0")
        if not (math.isfinite(max_s) and max_s >= 0):
            raise ValueError("max_s must be a finite number >= 0")
        if not (math.isfinite(multiplier) and multiplier >= 1):
            raise ValueError("multiplier must be a finite number >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()

    @classmethod
    def from_settings(
        cls, settings: RetrySettings, *, rng: random.Random | None = None
    ) -> BackoffPolicy:
        """The policy of ``PA_RETRY__*`` (the multiplier is fixed at 2)."""
        return cls(
            initial_s=settings.initial_backoff_s,
            max_s=settings.max_backoff_s,
            jitter=settings.jitter,
            rng=rng,
        )

    def ceiling(self, attempt: int) -> float:
        """The backoff before jitter after failed attempt ``attempt`` (1-based), capped."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        try:
            grown = self.initial_s * self.multiplier ** (attempt - 1)
        except OverflowError:  # float ** int past ~1e308: far beyond any cap
            return self.max_s
        return min(self.max_s, grown)

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one.

        ``retry_after_s`` (PAS's ``Retry-After``, in seconds) is a lower bound that wins over
        the cap; a negative or non-finite one is ignored.
        """
        backoff = self.ceiling(attempt)
        if self.jitter and backoff > 0:
            backoff = self._rng.uniform(0.0, backoff)
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            return max(backoff, retry_after_s)
        return backoff


def deadline_passed(occurred_at: datetime, now: datetime, ttl_s: float) -> bool:
    """True when more than ``ttl_s`` seconds separate ``occurred_at`` from ``now``.

    Both must be timezone-aware (or both naive); mixing them raises ``TypeError``.
    """
    return (now - occurred_at).total_seconds() > ttl_s
