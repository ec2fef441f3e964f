"""How long a command waited on PAS, summed over its calls, for the metric of the time the
service adds to the API's latency (``points_adjuster_command_service_added_seconds``).

The runner gives each record an ``ApiClock`` and binds it to the task that tries the record
(``bind``); the PAS decorators that time each call (``service.pas.metered``) add to whichever
clock the running task has bound (``add``), without knowing about records. A task started
from that one (asyncio copies the context) adds to the same clock. Outside a bound task,
``add`` does nothing: a call made at start-up or by a tool is nobody's command.
"""

from __future__ import annotations

from contextvars import ContextVar


class ApiClock:
    """Seconds one command spent in PAS calls (adjustments and history lookups)."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


_bound: ContextVar[ApiClock | None] = ContextVar("api_clock", default=None)


def bind(clock: ApiClock) -> None:
    """Count the PAS calls of the running task (and of the tasks it starts) on ``clock``.
    Call it first thing in a task of its own: the binding lasts as long as that task."""
    _bound.set(clock)


def add(seconds: float) -> None:
    """Count ``seconds`` of a PAS call on the running task's clock, if it has one."""
    clock = _bound.get()
    if clock is not None:
        clock.seconds += seconds
