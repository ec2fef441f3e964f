"""The small protocols the processing core depends on; adapters implement them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.domain.outcome import ErrorDetail


@dataclass(frozen=True)
class PasRequest:
    """The five PAS fields of one adjustment, plus the correlation id header."""

    bank_account_number: str
    points_to_adjust: int
    adjustment_type_code: str
    adjustment_reason: str
    adjusted_by: str
    correlation_id: str

    def body(self) -> dict[str, object]:
        return {
            "bankAccountNumber": self.bank_account_number,
            "pointsToAdjust": self.points_to_adjust,
            "adjustmentTypeCode": self.adjustment_type_code,
            "adjustmentReason": self.adjustment_reason,
            "adjustedBy": self.adjusted_by,
        }


@dataclass(frozen=True)
class PasApplied:
    """PAS answered 200: the adjustment is applied."""

    points_adjusted: int
    duration_s: float
    pas_correlation_id: str | None


@dataclass(frozen=True)
class PasRefused:
    """PAS (or its gateway) answered with an error: nothing was applied."""

    status: int
    errors: tuple[ErrorDetail, ...]
    duration_s: float
    recoverable: bool


@dataclass(frozen=True)
class PasNotSent:
    """The request never reached PAS (connection refused, DNS, pool exhausted)."""

    problem: str
    duration_s: float


@dataclass(frozen=True)
class PasUnknown:
    """The request may have reached PAS and been applied: a timeout, a reset, or a 5xx."""

    problem: str
    status: int | None
    errors: tuple[ErrorDetail, ...]
    duration_s: float


PasResult = PasApplied | PasRefused | PasNotSent | PasUnknown


class PasPort(Protocol):
    """Applies one adjustment at PAS and classifies what happened."""

    async def adjust(self, request: PasRequest) -> PasResult: ...


Clock = Callable[[], datetime]


class Sleep(Protocol):
    async def __call__(self, seconds: float, /) -> None: ...
