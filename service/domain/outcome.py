"""Outcome events: what the service publishes for every command."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from service.domain.command import FieldError

# Namespace of the deterministic event ids (uuid5).
EVENT_NAMESPACE = uuid.UUID("6f1d2a8e-3c4b-5d6e-8f70-123456789abc")


class Reason:
    """Reason codes of failed outcomes."""

    VALIDATION_FAILED = "VALIDATION_FAILED"
    PAS_REJECTED = "PAS_REJECTED"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    PAS_UNAVAILABLE = "PAS_UNAVAILABLE"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"


@dataclass(frozen=True)
class SourceRef:
    """The Kafka coordinates of a command record."""

    topic: str
    partition: int
    offset: int

    def as_avro(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class ErrorDetail:
    """A field error or one entry of a PAS error envelope."""

    source: str
    reason_code: str
    description: str
    recoverable: bool = False
    field: str | None = None

    @classmethod
    def from_field_error(cls, error: FieldError, source: str) -> ErrorDetail:
        return cls(source, error.reason_code, error.description, False, error.field)

    def as_avro(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "reason_code": self.reason_code,
            "description": self.description,
            "recoverable": self.recoverable,
            "field": self.field,
        }


@dataclass(frozen=True)
class CommandInfo:
    """What every outcome repeats of its command."""

    idempotency_key: str
    correlation_id: str
    requested_by: str
    account_ref: str | None
    account_masked: str | None
    command_occurred_at: datetime
    received_at: datetime
    source: SourceRef
    metadata: dict[str, str] = field(default_factory=dict)


def event_id(key: str, source: SourceRef | None = None) -> str:
    """Deterministic outcome id: one per key, or one per record when ``source`` is given."""
    name = key if source is None else f"{key}@{source.topic}/{source.partition}/{source.offset}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


def _common(info: CommandInfo, duplicate: bool, version: str) -> dict[str, Any]:
    return {
        "event_id": event_id(info.idempotency_key, info.source if duplicate else None),
        "idempotency_key": info.idempotency_key,
        "correlation_id": info.correlation_id,
        "requested_by": info.requested_by,
        "account_ref": info.account_ref,
        "account_masked": info.account_masked,
        "command_occurred_at": info.command_occurred_at,
        "received_at": info.received_at,
        "source": info.source.as_avro(),
        "duplicate": duplicate,
        "metadata": dict(info.metadata),
        "service_version": version,
    }


@dataclass(frozen=True)
class Completed:
    """PAS applied the adjustment."""

    info: CommandInfo
    adjustment_type_code: str
    points_requested: int
    points_adjusted: int
    attempts: int
    completed_at: datetime
    pas_duration_ms: int
    pas_correlation_id: str | None
    duplicate: bool = False
    kind: Literal["completed"] = "completed"

    def as_duplicate(self, info: CommandInfo) -> Completed:
        return replace(self, info=info, duplicate=True)

    def as_avro(self, version: str) -> dict[str, Any]:
        return {
            **_common(self.info, self.duplicate, version),
            "adjustment_type_code": self.adjustment_type_code,
            "points_requested": self.points_requested,
            "points_adjusted": self.points_adjusted,
            "attempts": self.attempts,
            "completed_at": self.completed_at,
            "pas_duration_ms": self.pas_duration_ms,
            "pas_correlation_id": self.pas_correlation_id,
        }


@dataclass(frozen=True)
class Failed:
    """The adjustment was not applied, or its result is unknown."""

    info: CommandInfo
    reason_code: str
    description: str
    retryable: bool
    failed_at: datetime
    errors: tuple[ErrorDetail, ...] = ()
    http_status: int | None = None
    attempts: int = 0
    duplicate: bool = False
    kind: Literal["failed"] = "failed"

    def as_duplicate(self, info: CommandInfo) -> Failed:
        return replace(self, info=info, duplicate=True)

    def as_avro(self, version: str) -> dict[str, Any]:
        return {
            **_common(self.info, self.duplicate, version),
            "reason_code": self.reason_code,
            "description": self.description,
            "retryable": self.retryable,
            "errors": [error.as_avro() for error in self.errors],
            "http_status": self.http_status,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
        }


Outcome = Completed | Failed
