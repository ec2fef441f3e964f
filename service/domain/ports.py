"""The small protocols the processing core depends on; adapters implement them. The
idempotency store's port, with its records and claim rule, is ``service.domain.store``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Protocol

from service.domain.classification import Observation, Rule, classify
from service.domain.outcome import ErrorDetail
from service.tracing import Span


@dataclass(frozen=True)
class PasRequest:
    """The five PAS fields of one adjustment, plus the correlation id and trace headers."""

    bank_account_number: str
    points_to_adjust: int
    adjustment_type_code: str
    adjustment_reason: str
    adjusted_by: str
    correlation_id: str
    trace: Span | None = field(default=None, compare=False)
    """The span handling the command: the call is a child of it (``traceparent``). Not part
    of the request's identity: the same adjustment is the same request in any span."""

    def body(self) -> dict[str, object]:
        return {
            "bankAccountNumber": self.bank_account_number,
            "pointsToAdjust": self.points_to_adjust,
            "adjustmentTypeCode": self.adjustment_type_code,
            "adjustmentReason": self.adjustment_reason,
            "adjustedBy": self.adjusted_by,
        }


@dataclass(frozen=True)
class PasReply:
    """How one adjustment call ended, before any decision (see ``classification``)."""

    observation: Observation
    duration_s: float
    points_adjusted: int | None = None
    errors: tuple[ErrorDetail, ...] = ()
    retry_after_s: float | None = None
    pas_correlation_id: str | None = None
    problem: str = ""

    @cached_property
    def rule(self) -> Rule:
        """The classification rule this reply matches (looked up once, read by each layer)."""
        return classify(self.observation)


class PasPort(Protocol):
    """Sends one adjustment to PAS and reports how the call ended; never raises for it.

    ``deadline`` is a ``time.monotonic()`` instant by which the whole call is over: waiting
    for a slot, connecting, sending and reading the whole answer. The caller's claim on the
    key outlives it, so a lease never expires under a call still in flight. A call whose
    deadline passes before its request could have left reports a transport failure that
    says "not sent"; once the request may have left, an unfinished call is a read timeout
    (the outcome is unknown).
    """

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply: ...


Clock = Callable[[], datetime]
