"""A circuit breaker on PAS failures: stop calling a PAS that is failing, probe it now and then.

::

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN   --(open_s elapsed)--------------------------> HALF_OPEN
    HALF_OPEN: allow() lets exactly one probe go
      probe succeeds --> CLOSED        probe fails --> OPEN (for another open_s)

A success while CLOSED resets the count of consecutive failures. What counts as a failure
is the caller's decision (typically: PAS unreachable, a timeout, a 5xx, a 429; not a 4xx
refusal of one command, which says PAS is up).

Results that arrive while OPEN are ignored: they belong to calls let through before the
circuit opened, and must neither extend nor cut short the open period. In HALF_OPEN the
breaker cannot tell the probe's result from a late one of such a call (``allow`` hands out
no token), so any result reported while the probe is out settles the probe.

A probe whose caller never reports (cancelled mid-call) must not wedge the circuit: the
caller should call :meth:`CircuitBreaker.release_probe`, and in any case a probe that has
not reported within ``probe_timeout_s`` (``open_s`` by default) is presumed lost and
another may go.

Not thread-safe: meant for one asyncio event loop, where no method awaits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import CircuitSettings


class CircuitState(enum.Enum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


OnChange = Callable[[CircuitState, CircuitState], None]
"""Called with ``(old, new)`` on every transition, after the breaker has changed state."""


class CircuitBreaker:
    """Counts consecutive PAS failures and refuses calls while PAS is presumed down.

    ``clock`` returns monotonic seconds (``time.monotonic`` in production).
    """

    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        clock: Callable[[], float],
        *,
        on_change: OnChange | None = None,
        probe_timeout_s: float | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not open_s > 0:
            raise ValueError("open_s must be positive")
        if probe_timeout_s is not None and not probe_timeout_s > 0:
            raise ValueError("probe_timeout_s must be positive")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else open_s
        self.on_change = on_change
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @classmethod
    def from_settings(
        cls,
        settings: CircuitSettings,
        clock: Callable[[], float],
        *,
        on_change: OnChange | None = None,
    ) -> CircuitBreaker:
        """The breaker of ``PA_CIRCUIT__*``."""
        return cls(settings.failure_threshold, settings.open_s, clock, on_change=on_change)

    @property
    def state(self) -> CircuitState:
        """The current state (OPEN turns HALF_OPEN here once ``open_s`` has passed)."""
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures counted since the last success while CLOSED."""
        return self._failures

    def allow(self) -> bool:
        """May a call go to PAS now? In HALF_OPEN, True once until the probe reports."""
        self._refresh()
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            return False
        now = self._clock()
        if self._probe_started_at is None or now - self._probe_started_at >= self.probe_timeout_s:
            self._probe_started_at = now
            return True
        return False

    def record_success(self) -> None:
        """A call came back healthy: reset the count, or close after a successful probe."""
        self._refresh()
        if self._state is CircuitState.CLOSED:
            self._failures = 0
        elif self._state is CircuitState.HALF_OPEN and self._probe_started_at is not None:
            self._failures = 0
            self._probe_started_at = None
            self._move(CircuitState.CLOSED)

    def record_failure(self) -> None:
        """A call failed: count it, open at the threshold, or re-open after a failed probe."""
        self._refresh()
        if self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()
        elif self._state is CircuitState.HALF_OPEN and self._probe_started_at is not None:
            self._open()

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled): let the next ``allow`` send one."""
        if self._state is CircuitState.HALF_OPEN:
            self._probe_started_at = None

    def retry_in(self) -> float:
        """Seconds until a call may go (0 when one may go now)."""
        self._refresh()
        now = self._clock()
        if self._state is CircuitState.OPEN:
            return max(0.0, self._opened_at + self.open_s - now)
        if self._state is CircuitState.HALF_OPEN and self._probe_started_at is not None:
            return max(0.0, self._probe_started_at + self.probe_timeout_s - now)
        return 0.0

    def _refresh(self) -> None:
        if self._state is CircuitState.OPEN and self._clock() >= self._opened_at + self.open_s:
            self._probe_started_at = None
            self._move(CircuitState.HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._probe_started_at = None
        self._move(CircuitState.OPEN)

    def _move(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if old is not new and self.on_change is not None:
            self.on_change(old, new)
