"""How hard to press PAS: fewer calls in flight, and paced calls, while it pushes back.

An AIMD limit (additive increase, multiplicative decrease, as TCP congestion control):

- a call PAS refused for load or could not answer (429, a 5xx, a timeout, unreachable: the
  same endings that count against the circuit breaker) halves the limit, at most once per
  round trip (the refused call's duration, at least ``min_window_s``): the calls already in
  flight were all sent under the old limit, and their refusals say the same thing once;
- every other answered call raises it: by one while below the slow-start threshold (the
  limit doubles per round trip), by ``max(1 / limit, min_step)`` above it (about one more
  call per round of ``limit`` calls while the limit is small, a recovery from half to full
  within a few seconds at the service's rate while it is large);
- it starts at ``initial_limit`` with the threshold at ``max_limit``: a start, or a burst
  of commands after a quiet spell, does not send ``max_limit`` calls into a quota at once;
  each decrease sets the threshold to the new limit;
- it stays between ``min_limit`` and ``max_limit`` (``PA_PROCESSING__MAX_IN_FLIGHT``).

Without it, each rate-limited command backs off alone while the others keep their pace, so
a service faster than PAS's quota keeps meeting 429s and commands run out of attempts. With
it, the service sends about as fast as PAS accepts.

Not thread-safe: meant for one asyncio event loop, where no method awaits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

OnLimit = Callable[[int], None]
"""Called with the new whole limit whenever it changes."""


class AdaptiveLimit:
    def __init__(
        self,
        max_limit: int,
        clock: Callable[[], float],
        *,
        min_limit: int = 1,
        initial_limit: int = 10,
        decrease: float = 0.5,
        min_step: float = 0.1,
        min_window_s: float = 0.05,
        on_change: OnLimit | None = None,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self._max = float(max_limit)
        self._min = float(min_limit)
        self._value = float(min(max(initial_limit, min_limit), max_limit))
        self._threshold = float(max_limit)
        self._decrease = decrease
        self._min_step = min_step
        self._min_window_s = min_window_s
        self._clock = clock
        self._quiet_until = float("-inf")
        self._on_change = on_change

    @property
    def limit(self) -> int:
        return int(self._value)

    def on_success(self) -> None:
        if self._value >= self._max:
            return
        slow_start = self._value < self._threshold
        step = 1.0 if slow_start else max(1.0 / self._value, self._min_step)
        self._set(min(self._max, self._value + step))

    def on_overload(self, round_trip_s: float = 0.0) -> None:
        """A call taking ``round_trip_s`` was refused for load: halve, once per round trip."""
        now = self._clock()
        if now < self._quiet_until:
            return
        self._quiet_until = now + max(round_trip_s, self._min_window_s)
        self._set(max(self._min, self._value * self._decrease))
        self._threshold = self._value

    def _set(self, value: float) -> None:
        before = self.limit
        self._value = value
        if self._on_change is not None and self.limit != before:
            self._on_change(self.limit)


class RatePacer:
    """Paces calls by rate once PAS has answered 429: what a concurrency limit cannot do when
    PAS answers so fast that less than one call in flight fills its quota.

    Unpaced until the first 429. Then the rate is set to ``decrease`` times the rate of calls
    PAS accepted over the last second (at least ``min_rate``), and each accepted call raises
    it by ``growth`` of itself per second (+20 %/s: a quota raised, or the rate cut too far
    by a burst, is found again within seconds). Another 429 cuts it again, at most once per
    ``window_s``.
    A full ``release_s`` without a 429 ends the pacing.

    Not thread-safe: meant for one asyncio event loop, where no method awaits.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        decrease: float = 0.7,
        growth: float = 0.2,
        min_rate: float = 1.0,
        window_s: float = 1.0,
        release_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self._decrease = decrease
        self._growth = growth
        self._min_rate = min_rate
        self._window_s = window_s
        self._release_s = release_s
        self._rate: float | None = None
        self._next_at = float("-inf")
        self._last_throttle = float("-inf")
        self._accepted: deque[float] = deque()  # moments of accepted calls in the last window

    @property
    def rate(self) -> float | None:
        """Calls per second while pacing, None while not."""
        return self._rate

    def wait_s(self) -> float:
        """Seconds the next call would wait now, without booking its moment."""
        if self._rate is None or self._clock() - self._last_throttle >= self._release_s:
            return 0.0
        return max(self._next_at - self._clock(), 0.0)

    def delay(self) -> float:
        """Seconds the next call should wait before it is sent (and book its moment)."""
        if self._rate is None:
            return 0.0
        now = self._clock()
        if now - self._last_throttle >= self._release_s:
            self._rate = None
            return 0.0
        send_at = max(now, self._next_at)
        self._next_at = send_at + 1.0 / self._rate
        return send_at - now

    def on_accepted(self) -> None:
        now = self._clock()
        self._accepted.append(now)
        self._forget(now)
        if self._rate is not None:
            self._rate += self._growth  # r accepted calls a second: + growth x r per second

    def on_throttled(self) -> None:
        now = self._clock()
        if now - self._last_throttle < self._window_s and self._rate is not None:
            return
        self._last_throttle = now
        self._forget(now)
        accepted = len(self._accepted) / self._window_s
        if self._rate is None:
            reference = accepted
        elif accepted:
            reference = min(self._rate, accepted)
        else:
            reference = self._rate  # nothing accepted lately: cut the paced rate itself
        self._rate = max(self._min_rate, reference * self._decrease)
        self._next_at = now + 1.0 / self._rate

    def _forget(self, now: float) -> None:
        cut = now - self._window_s
        while self._accepted and self._accepted[0] < cut:
            self._accepted.popleft()
