"""A ``PasPort`` decorator that stops calling PAS while it is failing (circuit breaker)."""

from __future__ import annotations

import asyncio

from service.domain.circuit import CircuitBreaker
from service.domain.classification import UNHEALTHY, Observation, Transport
from service.domain.ports import PasPort, PasReply, PasRequest


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
