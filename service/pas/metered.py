"""A ``PasPort`` decorator that records every call in the metrics."""

from __future__ import annotations

from service.domain.ports import PasPort, PasReply, PasRequest
from service.metrics import Metrics


class MeteredPas:
    def __init__(self, inner: PasPort, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        reply = await self._inner.adjust(request, deadline=deadline)
        seen = reply.observation
        action = reply.rule.action.value
        status = str(seen.status) if seen.status is not None else (seen.transport or "")
        self._metrics.pas_requests.labels(action, status).inc()
        self._metrics.pas_latency.labels(action).observe(reply.duration_s)
        return reply
