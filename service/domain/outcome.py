"""Outcomes: what the service decides for every command, as typed values.

Building them from a command, a PAS reply and an attempt is
:mod:`service.domain.outcome_builder`'s job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

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
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The Kafka coordinates of a command record."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """What every outcome repeats of its command: safe copies only (never the account)."""

    idempotency_key: str
    correlation_id: str
    requested_by: str
    account_ref: str | None
    account_masked: str | None
    command_occurred_at: datetime
    received_at: datetime
    source: SourceRef
    """The record that led to this outcome."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Never mutated once the outcome is made."""


def event_id(key: str, source: SourceRef | None = None) -> str:
    """Deterministic outcome id: one per key, or one per record when ``source`` is given."""
    name = key if source is None else f"{key}@{source.topic}/{source.partition}/{source.offset}"
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


@dataclass(frozen=True, slots=True, kw_only=True)
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
    service_version: str
    """The version of the service that decided it (a republished outcome keeps it)."""
    kind: Literal["completed"] = "completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """The adjustment was not applied, or its result is unknown."""

    info: CommandInfo
    reason_code: str
    description: str
    retryable: bool
    failed_at: datetime
    service_version: str
    """The version of the service that decided it (a republished outcome keeps it)."""
    errors: tuple[ErrorDetail, ...] = ()
    http_status: int | None = None
    attempts: int = 0
    kind: Literal["failed"] = "failed"


Outcome = Completed | Failed
"""One command's outcome. How it is published or stored is the adapters' business
(``service.codec.outcome``); whether it is an original or a duplicate is the decision's
(``service.domain.decisions.Publish``)."""
