"""What the processor hands back to the runner for one record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from service.domain.outcome import SourceRef


@dataclass(frozen=True)
class InboundRecord:
    """A command record as read from the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    payload: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The decoded value when the runner read it already (``Processor.payload_of``)."""

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition, self.offset)

    @property
    def size(self) -> int:
        """Bytes of the record as the broker holds it: key, value, header names and values."""
        return (
            len(self.key or b"")
            + len(self.value or b"")
            + sum(len(name) + len(value or b"") for name, value in self.headers)
        )


@dataclass(frozen=True)
class Attempt:
    """What the runner remembers of a record between its tries (in memory only)."""

    calls: int = 0
    lookups: int = 0
    received_at: datetime | None = None
    first_failure_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_call_at: datetime | None = None

    def failed(self, now: datetime) -> Attempt:
        """This attempt, with ``now`` noted as its latest failure (and first, if none yet)."""
        return replace(self, first_failure_at=self.first_failure_at or now, last_failure_at=now)


@dataclass(frozen=True)
class DeadLetterRequest:
    """Copy the original record to the dead-letter topic (or the review topic)."""

    target: Literal["dlt", "review"]
    error_class: str
    reason: str
    detail: str
    attempts: int
    first_failure_at: datetime
    last_failure_at: datetime


@dataclass(frozen=True)
class Publish:
    """Publish this outcome event; then, when ``stored_key`` is set, mark it published."""

    kind: Literal["completed", "failed"]
    payload: dict[str, Any]
    record_key: str | None
    duplicate: bool
    reason_code: str | None
    stored_key: str | None
    duplicate_kind: str | None = None
    dead_letter: DeadLetterRequest | None = None


@dataclass(frozen=True)
class DeadLetterOnly:
    """The record is not a readable command: it goes to the dead-letter topic, nothing else."""

    dead_letter: DeadLetterRequest


@dataclass(frozen=True)
class Retry:
    """Nothing is decided yet: hand the same record back after ``after_s`` seconds.

    The record's account waits meanwhile (key quarantine); other accounts go on.
    """

    after_s: float
    attempt: Attempt
    reason: str = field(default="")
    kind: Literal["backoff", "busy", "reconcile"] = "backoff"


Decision = Publish | DeadLetterOnly | Retry


def to_stored(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of an outcome payload (datetimes become epoch milliseconds)."""

    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return int(value.timestamp() * 1000)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in payload.items()}
