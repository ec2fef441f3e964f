"""The processing step: route what was decoded, validate, claim, call PAS, decide what follows.

Plain code over small protocols (``PasPort``, ``HistoryPort``, ``IdempotencyStore``, a
decode function and a clock): it knows nothing of Kafka or HTTP, and it never sleeps. When
something must wait (a retry, a claim held elsewhere, a settle time before a history
lookup) it returns ``Retry`` and the runner hands the record back later, keeping that
account's later commands waiting.

The exactly-once rule: PAS is called for a key only while this worker holds a durable
claim on it, and a claim whose call may have gone out is never simply called again. It is
either looked up in PAS's history (:mod:`service.domain.reconciler`) or ends as
OUTCOME_UNKNOWN. What each outcome holds is :mod:`service.domain.outcome_builder`'s to say.

Logs name no record: the runner binds the record's topic, partition, offset, idempotency
key and trace id to every log line of its handling.

Each try at a record is a span of the record's trace (``InboundRecord.trace``): the PAS call
is made as its child (``PasRequest.trace``), and the outcome event names it (``Publish.trace``).

With Kafka transactions (``ProcessorConfig.transactional``) an outcome is published only when
the transaction carrying it and its record's offset commits, and it is visible exactly once
from then on. Three rules change: the record that decided a published outcome, read again,
publishes nothing (``AlreadyPublished``); a key decided here whose transaction has not
committed yet counts as published for a repeat of it (its original is on its way); and a key
is held against other records only while one of them is being decided, not until its outcome
is published (the outcome of a record waits for the records before it in its partition, one
of which may be a repeat of the key: holding the key would deadlock them).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from service.domain.backoff import BackoffPolicy, deadline_passed
from service.domain.claims import Claims
from service.domain.classification import HELD_BACK, Action
from service.domain.command import (
    IDEMPOTENCY_KEY_PATTERN,
    AdjustmentCommand,
    CommandRules,
    FieldError,
    business_fingerprint,
    identify,
    validate_command,
)
from service.domain.decisions import (
    AlreadyPublished,
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    Decision,
    InboundRecord,
    Publish,
    Retry,
)
from service.domain.inbound import Decoded, DecodedCommand, Undecodable, Unresolved
from service.domain.outcome import CommandInfo, SourceRef
from service.domain.outcome_builder import (
    OutcomeBuilder,
    command_info,
    error_fields,
    invalid_command_info,
)
from service.domain.ports import Clock, PasPort, PasRequest
from service.domain.reconcile import HistoryPort, reason_with_reference, reference_for
from service.domain.reconciler import Reconciler, ReconcileSettings, Resend
from service.domain.store import Claim, ClaimStatus, IdempotencyRecord, IdempotencyStore, State
from service.tracing import NO_SPANS, Span, SpanSink

log = structlog.get_logger("service.processor")

Decode = Callable[[bytes | None], Decoded]
"""Reads a command record's value (the Kafka adapter's decoder); never raises."""

Prepare = Callable[[bytes | None], Awaitable[None]]
"""Fetches what decoding a value found ``Unresolved`` needs (a writer schema); raises while
it cannot (a fault of our infrastructure: the record waits and is tried again)."""


@dataclass(frozen=True)
class ProcessorConfig:
    rules: CommandRules
    owner: str
    lease_s: float
    version: str
    backoff: BackoffPolicy
    max_attempts: int
    command_ttl_s: float
    reconcile: bool
    reference_in_reason: bool
    settle_s: float
    max_lookups: int
    busy_poll_s: float = 0.5
    call_timeout_s: float = 20.0
    """The longest a PAS call may take; the deadline handed to ``PasPort.adjust``."""
    lease_margin_s: float = 5.0
    """A call's deadline ends this long before the claim's lease does."""
    transactional: bool = False
    """Outcomes are published in Kafka transactions (``PA_KAFKA__TRANSACTIONS``): see the
    module docstring for the rules that change."""


class Processor:
    """Turns one command record (and what happened to it so far) into one decision."""

    def __init__(
        self,
        *,
        decode: Decode,
        prepare: Prepare | None = None,
        store: IdempotencyStore,
        pas: PasPort,
        history: HistoryPort | None,
        config: ProcessorConfig,
        clock: Clock = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        spans: SpanSink = NO_SPANS,
    ) -> None:
        self._decode = decode
        self._prepare = prepare
        self._spans = spans
        self._pas = pas
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._claims = Claims(store, owner=config.owner, lease_s=config.lease_s, clock=clock)
        self._outcomes = OutcomeBuilder(config.version)
        self._reconciler = Reconciler(
            claims=self._claims,
            history=history,
            outcomes=self._outcomes,
            settings=ReconcileSettings(
                enabled=config.reconcile,
                reference_in_reason=config.reference_in_reason,
                settle_s=config.settle_s,
                max_lookups=config.max_lookups,
            ),
            clock=clock,
            monotonic=monotonic,
        )
        self._active: dict[str, SourceRef] = {}
        """Idempotency keys being handled now, and by which record: one at a time per
        process. Without transactions a stored outcome keeps its key held until it is
        published (``published``) or given up (``abandon``), so a repeat on another partition
        cannot republish it as an original meanwhile."""
        self._unpublished: Counter[str] = Counter()
        """With transactions: keys with decisions of a stored outcome waiting for their
        transaction (until ``published`` or ``abandon``), and how many."""

    def payload_of(self, value: bytes | None) -> Decoded:
        """The record value decoded: a command's fields, or why it cannot be read.

        The runner decodes each record once, for its ordering key, and hands the value on in
        ``InboundRecord.payload``; ``handle`` reuses it.
        """
        return self._decode(value)

    async def prepare(self, value: bytes | None) -> None:
        """Fetch what decoding ``value`` needs when it was ``Unresolved``; raises while that
        cannot be had (the caller holds the record back and tries again later)."""
        if self._prepare is not None:
            await self._prepare(value)

    def ordering_key(self, record: InboundRecord) -> str | None:
        """The account a record is for (in memory only), or None when it is unreadable."""
        decoded = record.payload if record.payload is not None else self._decode(record.value)
        return decoded.bank_account_number if isinstance(decoded, DecodedCommand) else None

    async def handle(self, record: InboundRecord, attempt: Attempt | None = None) -> Decision:
        """Decide for ``record``, given what happened to it so far (``attempt``).

        The try is a span of the record's trace; an outcome to publish carries it.
        """
        span = record.trace.span()
        started_ns = time.time_ns()
        decision = await self._handle(record, attempt, span)
        if isinstance(decision, Publish):
            decision = replace(decision, trace=span)
        self._spans.finished(
            span,
            "points-adjuster handle",
            started_ns,
            time.time_ns(),
            {
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "points_adjuster.decision": _decision_name(decision),
            },
        )
        return decision

    async def _handle(self, record: InboundRecord, attempt: Attempt | None, span: Span) -> Decision:
        attempt = attempt or Attempt()
        received_at = attempt.received_at or self._clock()
        attempt = replace(attempt, received_at=received_at)
        decoded = record.payload if record.payload is not None else self._decode(record.value)
        if isinstance(decoded, Unresolved):
            await self.prepare(record.value)  # raises while the registry cannot answer
            decoded = self._decode(record.value)
            if isinstance(decoded, Unresolved):
                raise RuntimeError(f"the writer schema ({decoded.what}) is still not at hand")
        if isinstance(decoded, Undecodable):
            log.warning("record.undecodable", reason=decoded.reason, detail=decoded.detail)
            return DeadLetterOnly(
                DeadLetterRequest(
                    "dlt",
                    "UndecodableRecordError",
                    decoded.reason,
                    decoded.detail,
                    0,
                    received_at,
                    received_at,
                )
            )
        checked = validate_command(decoded, self._config.rules, record_bytes=record.size)
        key = checked.idempotency_key if not isinstance(checked, list) else identify(decoded)[0]
        holder = self._active.get(key)
        if holder is not None and holder != record.source:
            # The same key from another record (another partition, a repeat) is being
            # handled right now: wait for it, so one key never has two calls in flight here.
            log.info("idempotency.busy_here")
            return Retry(self._config.busy_poll_s, attempt, "key handled by another record", "busy")
        self._active[key] = record.source
        try:
            if isinstance(checked, list):
                decision = await self._invalid(record, decoded, checked, received_at, attempt)
            else:
                decision = await self._valid(record, checked, received_at, attempt, span)
        except BaseException:
            self._release(key, record.source)
            raise
        if self._config.transactional:
            self._release(key, record.source)  # decided: its outcome waits for the commit
            if isinstance(decision, Publish) and decision.stored_key == key:
                self._unpublished[key] += 1
        elif not isinstance(decision, Publish) or decision.stored_key != key:
            self._release(key, record.source)  # nothing of this key is left to publish
        return decision

    def _release(self, key: str, source: SourceRef) -> None:
        if self._active.get(key) == source:
            del self._active[key]

    def abandon(self, decision: Decision) -> None:
        """The runner dropped a decision before publishing it (its partition moved)."""
        if isinstance(decision, Publish) and decision.stored_key is not None:
            self._let_go(decision.stored_key)

    async def published(self, decision: Publish) -> None:
        """Record that the outcome of a stored key was acknowledged by the broker (with
        transactions: that the transaction carrying it committed)."""
        if decision.stored_key is not None and not decision.duplicate:
            await self._claims.mark_published(decision.stored_key)
        if decision.stored_key is not None:
            self._let_go(decision.stored_key)

    def _let_go(self, key: str) -> None:
        """A decision of ``key`` is published or dropped: it no longer holds the key."""
        if not self._config.transactional:
            self._active.pop(key, None)
            return
        self._unpublished[key] -= 1
        if self._unpublished[key] <= 0:
            del self._unpublished[key]

    def _busy(self, claim: Claim, attempt: Attempt) -> Retry:
        log.info("idempotency.busy", owner=claim.record.owner)
        return Retry(self._config.busy_poll_s, attempt, "claim held by another worker", "busy")

    # -- invalid commands ---------------------------------------------------------------

    async def _invalid(
        self,
        record: InboundRecord,
        command: DecodedCommand,
        errors: list[FieldError],
        received_at: datetime,
        attempt: Attempt,
    ) -> Decision:
        info = invalid_command_info(command, record.source, received_at)
        key = info.idempotency_key
        failure = self._outcomes.invalid(info, errors, self._clock())
        log.warning("command.invalid", fields=error_fields(errors))
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            return Publish.unstored(failure)
        claim = await self._claims.claim(key, business_fingerprint(command))
        if claim.status is ClaimStatus.CLAIMED:
            return await self._claims.finish(failure, State.FAILED)
        if claim.status is ClaimStatus.BUSY:
            return self._busy(claim, attempt)
        if claim.status in (ClaimStatus.TAKEN_OVER, ClaimStatus.RECONCILE):
            # Same business fields as a command whose call may have gone out, but this copy is
            # invalid and cannot be reconciled: record the outcome as unknown, for review.
            return await self._reconciler.give_up(info, attempt, "an interrupted earlier attempt")
        return self._not_claimed(claim, info, key, record)

    # -- valid commands -----------------------------------------------------------------

    async def _valid(
        self,
        record: InboundRecord,
        command: AdjustmentCommand,
        received_at: datetime,
        attempt: Attempt,
        span: Span,
    ) -> Decision:
        key = command.idempotency_key
        if command.channel is not None:  # valid: short, printable; every line of it says it
            structlog.contextvars.bind_contextvars(channel=command.channel)
        info = command_info(command, record.source, received_at)
        lease_from = self._monotonic()  # the lease runs from (at latest) this instant
        claim = await self._claims.claim(key, command.fingerprint())
        status = claim.status
        if status is ClaimStatus.CLAIMED:
            return await self._call(command, info, attempt, lease_from, span)
        if status is ClaimStatus.BUSY:
            return self._busy(claim, attempt)
        if status is ClaimStatus.TAKEN_OVER:
            log.warning("idempotency.taken_over")
            interrupted = "an earlier attempt was interrupted"
            return await self._reconciler.unknown(info, attempt, interrupted)
        if status is ClaimStatus.RECONCILE:
            step = await self._reconciler.reconcile(command, info, attempt, claim.record)
            if isinstance(step, Resend):
                return await self._call(command, info, step.attempt, step.lease_from, span)
            return step
        return self._not_claimed(claim, info, key, record)

    def _not_claimed(
        self, claim: Claim, info: CommandInfo, key: str, record: InboundRecord
    ) -> Publish | AlreadyPublished:
        if claim.status is ClaimStatus.CONFLICT:
            log.warning("idempotency.conflict")
            conflict = self._outcomes.conflict(info, self._clock())
            return Publish.unstored(conflict, duplicate_kind="conflict")
        return self._republish(claim.record, key, record)

    def _republish(
        self, stored: IdempotencyRecord, key: str, record: InboundRecord
    ) -> Publish | AlreadyPublished:
        """DUPLICATE: the stored outcome again (as the original if it never got out).

        With transactions, the record that decided it and published it publishes nothing
        more, and an outcome decided here whose transaction is still to come counts as
        published.
        """
        outcome = stored.outcome
        assert outcome is not None
        published = stored.published
        if self._config.transactional:
            if published and outcome.info.source == record.source:
                log.info("idempotency.already_published", state=stored.state.value)
                return AlreadyPublished(key)
            published = published or self._unpublished[key] > 0
        log.info(
            "idempotency.duplicate",
            state=stored.state.value,
            republished_original=not published,
        )
        if not published:
            return Publish.original(outcome)
        kind = stored.state.value.lower()
        return Publish.republished(outcome, key, record.source, duplicate_kind=kind)

    # -- calling PAS --------------------------------------------------------------------

    def _request(self, command: AdjustmentCommand, span: Span) -> PasRequest:
        reason = command.adjustment_reason
        if self._config.reference_in_reason:
            reason = reason_with_reference(reason, reference_for(command.idempotency_key))
        return PasRequest(
            bank_account_number=command.bank_account_number,
            points_to_adjust=command.points_to_adjust,
            adjustment_type_code=command.adjustment_type_code,
            adjustment_reason=reason,
            adjusted_by=command.adjusted_by,
            correlation_id=command.correlation_id,
            trace=span,
        )

    def _deadline(self, lease_from: float) -> float:
        """When a call must be over: within the call timeout, and before the lease ends."""
        config = self._config
        lease_end = lease_from + config.lease_s - config.lease_margin_s
        return min(self._monotonic() + config.call_timeout_s, lease_end)

    async def _call(
        self,
        command: AdjustmentCommand,
        info: CommandInfo,
        attempt: Attempt,
        lease_from: float,
        span: Span,
    ) -> Decision:
        key = command.idempotency_key
        now = self._clock()
        ttl_s = self._config.command_ttl_s
        if deadline_passed(command.occurred_at, now, ttl_s):
            log.warning("command.expired", attempts=attempt.calls)
            expired = self._outcomes.expired(info, ttl_s, attempt, now)
            return await self._claims.finish(expired, State.FAILED)
        request = self._request(command, span)
        reply = await self._pas.adjust(request, deadline=self._deadline(lease_from))
        rule = reply.rule
        held_back = reply.observation.transport in HELD_BACK  # PAS never saw it
        now = self._clock()
        attempt = (
            attempt if held_back else replace(attempt, calls=attempt.calls + 1, last_call_at=now)
        )
        if rule.action is Action.APPLIED:
            completed = self._outcomes.applied(command, info, reply, attempt, now)
            return await self._claims.finish(completed, State.COMPLETED)
        if rule.action is Action.PERMANENT:
            refused = self._outcomes.refused(
                info, rule.reason, reply, attempt, self._clock(), retryable=False
            )
            return await self._claims.finish(refused, State.FAILED)
        if rule.action is Action.UNKNOWN:
            log.error("pas.outcome_unknown", problem=reply.problem, status=reply.observation.status)
            return await self._reconciler.unknown(info, attempt, reply.problem)
        # RETRY or DEAD_LETTER: nothing was applied; let go of the claim (the key keeps its
        # fingerprint: only this command takes it again, on a retry or a replay).
        await self._claims.release(key)
        attempt = attempt.failed(now)
        if rule.action is Action.RETRY and (held_back or attempt.calls < self._config.max_attempts):
            pause = self._config.backoff.delay(max(attempt.calls, 1), reply.retry_after_s)
            log.warning(
                "pas.retry_scheduled",
                attempt=attempt.calls,
                pause_s=round(pause, 3),
                problem=reply.problem,
            )
            return Retry(pause, attempt, reply.problem)
        error_class = "Unauthorized" if rule.action is Action.DEAD_LETTER else "RetriesExhausted"
        log.error(
            "pas.dead_letter",
            error_class=error_class,
            attempts=attempt.calls,
            problem=reply.problem,
        )
        failure = self._outcomes.refused(
            info, rule.reason, reply, attempt, self._clock(), retryable=True
        )
        letter = DeadLetterRequest.after(
            attempt, "dlt", error_class, failure.reason_code, reply.problem, self._clock()
        )
        return Publish.unstored(failure, dead_letter=letter)


def _decision_name(decision: Decision) -> str:
    """A bounded word for a span attribute: what the try decided."""
    if isinstance(decision, Publish):
        return decision.kind
    if isinstance(decision, DeadLetterOnly):
        return "dead_letter"
    if isinstance(decision, AlreadyPublished):
        return "already_published"
    return "retry"
