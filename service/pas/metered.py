"""Decorators that record every PAS request in the metrics: ``MeteredPas`` the adjustment
calls, ``MeteredHistory`` the history lookups.

A lookup is counted by result (``found``, ``incomplete``: the answer says there is more,
``failed``) and HTTP status (``none`` when no answer came), and timed by result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Unpack

from service import api_clock
from service.domain.ports import PasPort, PasReply, PasRequest
from service.domain.reconcile import HistoryFound, HistoryLookup
from service.metrics import Metrics
from service.pas.history import LookupOptions, TimedHistoryPort


class MeteredPas:
    def __init__(self, inner: PasPort, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        reply = await self._inner.adjust(request, deadline=deadline)
        seen = reply.observation
        action = reply.rule.action.value
        status = str(seen.status) if seen.status is not None else (seen.transport or "")
        self._metrics.pas_requests_for(action, status).inc()
        self._metrics.pas_latency_for(action).observe(reply.duration_s)
        api_clock.add(reply.duration_s)
        return reply


class MeteredHistory:
    def __init__(
        self,
        inner: TimedHistoryPort,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    async def lookup(self, account_number: str, **options: Unpack[LookupOptions]) -> HistoryLookup:
        started = self._clock()
        found = await self._inner.lookup(account_number, **options)
        result, status = _labels(found)
        self._metrics.pas_history_requests.labels(result, status).inc()
        took = self._clock() - started
        self._metrics.pas_history_latency.labels(result).observe(took)
        api_clock.add(took)
        return found


def _labels(lookup: HistoryLookup) -> tuple[str, str]:
    """(result, status) of a lookup, both from small fixed sets."""
    if isinstance(lookup, HistoryFound):
        return ("found" if lookup.complete else "incomplete"), "200"
    return "failed", str(lookup.status) if lookup.status is not None else "none"
