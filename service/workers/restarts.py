"""When the parent restarts a worker that died, and when it gives up.

A worker that dies is started again after a pause that doubles with each death in a row
(``BASE_S``, then 2x, up to ``MAX_S``). A worker that stayed up ``STABLE_S`` has its count
reset. After ``GIVE_UP_AFTER`` deaths in a row the worker is in a crash loop: the parent
stops the others and exits non-zero, so that whatever runs it (Kubernetes, systemd) sees the
failure instead of a service that keeps half its workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE_S = 1.0
MAX_S = 30.0
STABLE_S = 60.0
GIVE_UP_AFTER = 5


@dataclass
class RestartPolicy:
    """Deaths in a row per worker; ``died`` says how long to wait, or None to give up."""

    base_s: float = BASE_S
    max_s: float = MAX_S
    stable_s: float = STABLE_S
    give_up_after: int = GIVE_UP_AFTER
    _deaths: dict[int, int] = field(default_factory=dict)

    def died(self, worker: int, *, up_s: float) -> float | None:
        """Worker ``worker`` died after running ``up_s`` seconds: the pause before its
        restart, or None once it died ``give_up_after`` times in a row."""
        deaths = 1 if up_s >= self.stable_s else self._deaths.get(worker, 0) + 1
        self._deaths[worker] = deaths
        if deaths >= self.give_up_after:
            return None
        return float(min(self.max_s, self.base_s * 2 ** (deaths - 1)))

    def deaths(self, worker: int) -> int:
        """Deaths in a row of ``worker`` so far."""
        return self._deaths.get(worker, 0)
