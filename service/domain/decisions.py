"""What the processor hands back to the runner for one record."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Literal

from service.domain.inbound import Decoded
from service.domain.outcome import Failed, Outcome, SourceRef, event_id
from service.tracing import Span, Trace, trace_of


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
    payload: Decoded | None = field(default=None, compare=False, repr=False)
    """The value decoded, when the runner read it already (``Processor.payload_of``)."""

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition, self.offset)

    @cached_property
    def trace(self) -> Trace:
        """The trace the record's ``traceparent`` header continues, or a new one (read once)."""
        return trace_of(self.headers)

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

    @classmethod
    def after(
        cls,
        attempt: Attempt,
        target: Literal["dlt", "review"],
        error_class: str,
        reason: str,
        detail: str,
        now: datetime,
    ) -> DeadLetterRequest:
        """A copy after ``attempt``: its calls and failure times (``now`` for those missing)."""
        return cls(
            target,
            error_class,
            reason,
            detail,
            attempt.calls,
            attempt.first_failure_at or now,
            attempt.last_failure_at or now,
        )


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish this outcome event; then, when ``stored_key`` is set, mark it published.

    The event is ``outcome`` as the record ``source`` answers it: an original (the record
    that decided it) or, with ``duplicate``, a repeat of a stored one. Build it with
    :meth:`original`, :meth:`unstored` or :meth:`republished`.
    """

    outcome: Outcome
    event_id: str
    source: SourceRef
    duplicate: bool
    stored_key: str | None
    duplicate_kind: str | None = None
    dead_letter: DeadLetterRequest | None = None
    trace: Span | None = field(default=None, compare=False)
    """The span that decided it: the event's ``traceparent`` names it (set by the processor).
    Not part of the decision's identity (the same outcome, whichever try decided it)."""

    @classmethod
    def original(cls, outcome: Outcome) -> Publish:
        """The key's one stored outcome: the key's event id, whichever record publishes it."""
        key = outcome.info.idempotency_key
        return cls(outcome, event_id(key), outcome.info.source, False, key)

    @classmethod
    def unstored(
        cls,
        outcome: Outcome,
        *,
        duplicate_kind: str | None = None,
        dead_letter: DeadLetterRequest | None = None,
    ) -> Publish:
        """An outcome not stored, so not the key's one outcome: an event id per record."""
        info = outcome.info
        return cls(
            outcome,
            event_id(info.idempotency_key, info.source),
            info.source,
            False,
            None,
            duplicate_kind,
            dead_letter,
        )

    @classmethod
    def republished(
        cls, outcome: Outcome, key: str, source: SourceRef, *, duplicate_kind: str
    ) -> Publish:
        """The stored (and published) outcome of ``key`` again, for the repeat at ``source``."""
        return cls(outcome, event_id(key, source), source, True, key, duplicate_kind)

    @property
    def kind(self) -> Literal["completed", "failed"]:
        return self.outcome.kind

    @property
    def record_key(self) -> str | None:
        """The event's record key: the account reference (None for an unusable account)."""
        return self.outcome.info.account_ref

    @property
    def reason_code(self) -> str | None:
        return self.outcome.reason_code if isinstance(self.outcome, Failed) else None


@dataclass(frozen=True)
class DeadLetterOnly:
    """The record is not a readable command: it goes to the dead-letter topic, nothing else."""

    dead_letter: DeadLetterRequest


@dataclass(frozen=True)
class AlreadyPublished:
    """Nothing to publish: the record is the one whose stored outcome was already published
    in a committed transaction (a re-delivery); only its offset is left to commit.

    Only with Kafka transactions: there a published outcome is visible to ``read_committed``
    readers exactly once, and publishing it again would show it twice.
    """

    stored_key: str


@dataclass(frozen=True)
class Retry:
    """Nothing is decided yet: hand the same record back after ``after_s`` seconds.

    The record's account waits meanwhile (key quarantine); other accounts go on.
    """

    after_s: float
    attempt: Attempt
    reason: str = field(default="")
    kind: Literal["backoff", "busy", "reconcile"] = "backoff"


Decision = Publish | DeadLetterOnly | AlreadyPublished | Retry
