"""A ``PasPort`` decorator that records every call in the metrics."""

from __future__ import annotations

from service.domain.ports import (
    PasApplied,
    PasNotSent,
    PasPort,
    PasRefused,
    PasRequest,
    PasResult,
)
from service.metrics import Metrics


class MeteredPas:
    def __init__(self, inner: PasPort, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def adjust(self, request: PasRequest) -> PasResult:
        result = await self._inner.adjust(request)
        if isinstance(result, PasApplied):
            name, status = "applied", "200"
        elif isinstance(result, PasRefused):
            name, status = "refused", str(result.status)
        elif isinstance(result, PasNotSent):
            name, status = "not_sent", ""
        else:
            name, status = "unknown", str(result.status or "")
        self._metrics.pas_requests.labels(name, status).inc()
        self._metrics.pas_latency.labels(name).observe(result.duration_s)
        return result
