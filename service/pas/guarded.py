"""Decorators that stop sending to PAS while it is failing (circuit breaker).

``GuardedPas`` guards the adjustment calls and ``GuardedHistory`` the history lookups, on
the one breaker of the process: both go to the same PAS, so both tell it how PAS is doing,
and an open circuit stops both. A lookup refused by an open circuit fails at once, nothing
sent, as ``HistoryFailed("circuit open")``.
"""

from __future__ import annotations

import asyncio
from typing import Unpack

from service.domain.circuit import CircuitBreaker
from service.domain.classification import UNHEALTHY, Observation, Transport, classify
from service.domain.ports import PasPort, PasReply, PasRequest
from service.domain.reconcile import HistoryFailed, HistoryLookup
from service.pas.history import LookupOptions, TimedHistoryPort

CIRCUIT_OPEN = "circuit open"
"""The problem of a lookup the open circuit kept from PAS."""


class GuardedPas:
    def __init__(self, inner: PasPort, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self._breaker = breaker

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        if not self._breaker.allow():
            wait = max(self._breaker.retry_in(), 0.05)
            return PasReply(
                Observation(transport=Transport.CIRCUIT_OPEN),
                0.0,
                retry_after_s=wait,
                problem="circuit breaker open: PAS is failing, nothing was sent",
            )
        try:
            reply = await self._inner.adjust(request, deadline=deadline)
        except asyncio.CancelledError:
            self._breaker.release_probe()
            raise
        if reply.rule.action in UNHEALTHY:
            self._breaker.record_failure()
        else:
            self._breaker.record_success()
        return reply


class GuardedHistory:
    def __init__(self, inner: TimedHistoryPort, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self._breaker = breaker

    async def lookup(self, account_number: str, **options: Unpack[LookupOptions]) -> HistoryLookup:
        if not self._breaker.allow():  # held back, never sent: not a failed lookup
            return HistoryFailed(CIRCUIT_OPEN, None, retry_in_s=max(self._breaker.retry_in(), 0.05))
        try:
            found = await self._inner.lookup(account_number, **options)
        except asyncio.CancelledError:
            self._breaker.release_probe()
            raise
        if unhealthy(found):
            self._breaker.record_failure()
        else:
            self._breaker.record_success()
        return found


def unhealthy(lookup: HistoryLookup) -> bool:
    """Whether a lookup says PAS is loaded or unwell, as the classification table reads an
    adjustment call: no answer at all (unreachable, timed out), or a 429 or a 5xx. Any other
    answer, a refusal included, says PAS is up."""
    if not isinstance(lookup, HistoryFailed):
        return False
    if lookup.status is None:
        return True
    return classify(Observation(status=lookup.status)).action in UNHEALTHY
