"""Outcomes as records: the Avro outcome events, and the JSON the idempotency store keeps.

Both are the same plain record: the fields of the ``PointsAdjustmentCompleted`` or
``PointsAdjustmentFailed`` schema, in schema order, instants as epoch milliseconds (which
the Avro writer takes for ``timestamp-millis``). The publisher encodes it
(``service.kafka.publisher``); the SQLite store keeps it as JSON, exactly as every earlier
version did, and reads it back into an outcome (:func:`outcome_from_record`).

A stored outcome is always the key's original: its ``event_id`` is the key's, its
``source`` the record that decided it, ``duplicate`` false. Reading one back recomputes the
first and drops the last; a repeat's event id, source and flag come with the decision
(``service.domain.decisions.Publish``), not with the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain.outcome import (
    CommandInfo,
    Completed,
    ErrorDetail,
    Failed,
    Outcome,
    SourceRef,
    event_id,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

Record = dict[str, Any]
"""An outcome as a plain record (what fastavro and json take); only inside the adapters."""


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch (an instant without a zone is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _MS


def from_epoch_ms(value: int) -> datetime:
    """The instant ``value`` milliseconds after the epoch, in UTC (exact: no float)."""
    return EPOCH + value * _MS


def outcome_record(
    outcome: Outcome, *, event_id: str, source: SourceRef, duplicate: bool
) -> Record:
    """The event record of ``outcome`` as published for the record at ``source``."""
    info = outcome.info
    record: Record = {
        "event_id": event_id,
        "idempotency_key": info.idempotency_key,
        "correlation_id": info.correlation_id,
        "requested_by": info.requested_by,
        "account_ref": info.account_ref,
        "account_masked": info.account_masked,
        "command_occurred_at": epoch_ms(info.command_occurred_at),
        "received_at": epoch_ms(info.received_at),
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "duplicate": duplicate,
        "metadata": dict(info.metadata),
        "service_version": outcome.service_version,
    }
    if isinstance(outcome, Completed):
        record["adjustment_type_code"] = outcome.adjustment_type_code
        record["points_requested"] = outcome.points_requested
        record["points_adjusted"] = outcome.points_adjusted
        record["attempts"] = outcome.attempts
        record["completed_at"] = epoch_ms(outcome.completed_at)
        record["pas_duration_ms"] = outcome.pas_duration_ms
        record["pas_correlation_id"] = outcome.pas_correlation_id
    else:
        record["reason_code"] = outcome.reason_code
        record["description"] = outcome.description
        record["retryable"] = outcome.retryable
        record["errors"] = [
            {
                "source": error.source,
                "reason_code": error.reason_code,
                "description": error.description,
                "recoverable": error.recoverable,
                "field": error.field,
            }
            for error in outcome.errors
        ]
        record["http_status"] = outcome.http_status
        record["attempts"] = outcome.attempts
        record["failed_at"] = epoch_ms(outcome.failed_at)
    return record


def stored_record(outcome: Outcome) -> Record:
    """The record of ``outcome`` as its key's original: what the store keeps."""
    info = outcome.info
    return outcome_record(
        outcome, event_id=event_id(info.idempotency_key), source=info.source, duplicate=False
    )


def outcome_from_record(kind: str, record: Mapping[str, Any]) -> Outcome:
    """The outcome a stored record holds; ``kind`` is ``completed`` or ``failed``.

    Raises ``ValueError`` (naming the field, never its value) when the record is not one.
    """
    try:
        info = _info(record)
        if kind == "completed":
            return Completed(
                info=info,
                adjustment_type_code=record["adjustment_type_code"],
                points_requested=record["points_requested"],
                points_adjusted=record["points_adjusted"],
                attempts=record["attempts"],
                completed_at=from_epoch_ms(record["completed_at"]),
                pas_duration_ms=record["pas_duration_ms"],
                pas_correlation_id=record["pas_correlation_id"],
                service_version=record["service_version"],
            )
        if kind == "failed":
            return Failed(
                info=info,
                reason_code=record["reason_code"],
                description=record["description"],
                retryable=record["retryable"],
                failed_at=from_epoch_ms(record["failed_at"]),
                errors=tuple(_error(entry) for entry in record["errors"]),
                http_status=record["http_status"],
                attempts=record["attempts"],
                service_version=record["service_version"],
            )
    except KeyError as exc:
        raise ValueError(f"a {kind} outcome without the field {exc.args[0]!r}") from None
    except (TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"a {kind} outcome of the wrong shape ({type(exc).__name__})") from None
    raise ValueError(f"no outcome is of the kind {kind!r}")


def _info(record: Mapping[str, Any]) -> CommandInfo:
    source = record["source"]
    return CommandInfo(
        idempotency_key=record["idempotency_key"],
        correlation_id=record["correlation_id"],
        requested_by=record["requested_by"],
        account_ref=record["account_ref"],
        account_masked=record["account_masked"],
        command_occurred_at=from_epoch_ms(record["command_occurred_at"]),
        received_at=from_epoch_ms(record["received_at"]),
        source=SourceRef(source["topic"], source["partition"], source["offset"]),
        metadata=dict(record["metadata"]),
    )


def _error(entry: Mapping[str, Any]) -> ErrorDetail:
    return ErrorDetail(
        entry["source"],
        entry["reason_code"],
        entry["description"],
        entry["recoverable"],
        entry["field"],
    )
