"""Readiness with reasons: what keeps the service from doing its work right now.

Every part that can stop the work (the consumer loop, the broker, a topic, the idempotency
store, records held up by a fault) reports a *problem* under its own name and clears it when
the problem is gone. The service is ready while it is started, not draining, and no part
reports a problem; ``/readyz`` shows the reasons. Problems are short texts for an on-call
engineer: no key, account or payload in them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("service.health")

STARTING = "starting"
DRAINING = "draining"


class Health:
    """The service's problems by part; ``on_change`` hears every flip of readiness."""

    def __init__(
        self,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._problems: dict[str, tuple[str, float]] = {"service": (STARTING, clock())}
        self._on_change = on_change
        self._clock = clock

    @property
    def ready(self) -> bool:
        return not self._problems

    def problems(self) -> dict[str, str]:
        """Each part's problem, with how long it has lasted."""
        now = self._clock()
        return {
            part: f"{problem} (for {now - since:.0f} s)"
            for part, (problem, since) in sorted(self._problems.items())
        }

    def problem(self, part: str) -> str | None:
        entry = self._problems.get(part)
        return entry[0] if entry else None

    def report(self, part: str, problem: str) -> None:
        """``part`` has ``problem`` (a new text for the same part keeps its start time)."""
        was_ready = self.ready
        previous = self._problems.get(part)
        if previous is None:
            log.warning("health.problem", part=part, problem=problem)
        since = previous[1] if previous else self._clock()
        self._problems[part] = (problem, since)
        if was_ready:
            self._changed()

    def clear(self, part: str) -> None:
        """``part`` is fine again."""
        entry = self._problems.pop(part, None)
        if entry is None:
            return
        log.info("health.recovered", part=part, after_s=round(self._clock() - entry[1], 1))
        if self.ready:
            self._changed()

    def started(self) -> None:
        self.clear("service")

    def draining(self) -> None:
        self.report("service", DRAINING)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.ready)
