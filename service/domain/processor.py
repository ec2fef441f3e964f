"""The processing step: decode, validate, deduplicate, call PAS, decide what follows.

Plain code over small protocols (``PasPort``, ``HistoryPort``, ``IdempotencyStore``, a
decode function and a clock): it knows nothing of Kafka or HTTP, and it never sleeps. When
something must wait (a retry, a claim held elsewhere, a settle time before a history
lookup) it returns ``Retry`` and the runner hands the record back later, keeping that
account's later commands waiting.

The exactly-once rule: PAS is called for a key only while this worker holds a durable
claim on it, and a claim whose call may have gone out is never simply called again. It is
either looked up in PAS's history (reconciliation) or ends as OUTCOME_UNKNOWN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from service.domain.backoff import BackoffPolicy, deadline_passed
from service.domain.classification import Action, Transport
from service.domain.command import (
    IDEMPOTENCY_KEY_PATTERN,
    OUR_SOURCE,
    AdjustmentCommand,
    CommandRules,
    FieldError,
    account_ref,
    business_fingerprint,
    identify,
    mask_account,
    safe_metadata,
    validate_command,
)
from service.domain.decisions import (
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    Decision,
    InboundRecord,
    Publish,
    Retry,
    to_stored,
)
from service.domain.outcome import (
    CommandInfo,
    Completed,
    ErrorDetail,
    Failed,
    Outcome,
    Reason,
    SourceRef,
    event_id,
)
from service.domain.ports import Clock, PasPort, PasReply, PasRequest
from service.domain.reconcile import (
    HistoryPort,
    ReconcileAbsent,
    ReconcileFound,
    judge,
    reason_with_reference,
    reference_for,
)
from service.errors import UndecodableRecordError
from service.idempotency.base import Claim, ClaimStatus, IdempotencyRecord, IdempotencyStore, State

log = structlog.get_logger("service.processor")

Decode = Callable[[bytes | None], Mapping[str, Any]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXPIRED = "EXPIRED"


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


class Processor:
    """Turns one command record (and what happened to it so far) into one decision."""

    def __init__(
        self,
        *,
        decode: Decode,
        store: IdempotencyStore,
        pas: PasPort,
        history: HistoryPort | None,
        config: ProcessorConfig,
        clock: Clock = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._decode = decode
        self._store = store
        self._pas = pas
        self._history = history
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._active: dict[str, SourceRef] = {}
        """Idempotency keys being handled now, and by which record: one at a time per
        process. A stored outcome keeps its key held until it is published (``published``)
        or given up (``abandon``), so a repeat on another partition cannot republish it as
        an original meanwhile."""

    def payload_of(self, value: bytes | None) -> Mapping[str, Any] | None:
        """The decoded command value, or None when it cannot be decoded.

        The runner decodes each record once, for its ordering key, and hands the value on in
        ``InboundRecord.payload``; ``handle`` reuses it.
        """
        try:
            return self._decode(value)
        except UndecodableRecordError:
            return None

    def ordering_key(self, record: InboundRecord) -> str | None:
        """The account a record is for (in memory only), or None when it is unreadable."""
        raw = record.payload if record.payload is not None else self.payload_of(record.value)
        if raw is None:
            return None
        account = raw.get("bank_account_number")
        return account if isinstance(account, str) else None

    async def handle(self, record: InboundRecord, attempt: Attempt | None = None) -> Decision:
        attempt = attempt or Attempt()
        received_at = attempt.received_at or self._clock()
        attempt = replace(attempt, received_at=received_at)
        try:
            raw = record.payload if record.payload is not None else self._decode(record.value)
        except UndecodableRecordError as exc:
            log.warning(
                "record.undecodable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=exc.reason,
                detail=exc.detail,
            )
            return DeadLetterOnly(
                DeadLetterRequest(
                    "dlt",
                    "UndecodableRecordError",
                    exc.reason,
                    exc.detail,
                    0,
                    received_at,
                    received_at,
                )
            )
        checked = validate_command(raw, self._config.rules, record_bytes=record.size)
        key = checked.idempotency_key if not isinstance(checked, list) else identify(raw)[0]
        holder = self._active.get(key)
        if holder is not None and holder != record.source:
            # The same key from another record (another partition, a repeat) is being
            # handled right now: wait for it, so one key never has two calls in flight here.
            log.info("idempotency.busy_here", idempotency_key=key)
            return Retry(self._config.busy_poll_s, attempt, "key handled by another record", "busy")
        self._active[key] = record.source
        try:
            if isinstance(checked, list):
                decision = await self._invalid(record, raw, checked, received_at, attempt)
            else:
                decision = await self._valid(record, checked, received_at, attempt)
        except BaseException:
            self._release(key, record.source)
            raise
        if not isinstance(decision, Publish) or decision.stored_key != key:
            self._release(key, record.source)  # nothing of this key is left to publish
        return decision

    def _release(self, key: str, source: SourceRef) -> None:
        if self._active.get(key) == source:
            del self._active[key]

    def abandon(self, decision: Decision) -> None:
        """The runner dropped a decision before publishing it (its partition moved)."""
        if isinstance(decision, Publish) and decision.stored_key is not None:
            self._active.pop(decision.stored_key, None)

    async def published(self, decision: Publish) -> None:
        """Record that the outcome of a stored key was acknowledged by the broker."""
        if decision.stored_key is not None and not decision.duplicate:
            await self._store.mark_published(decision.stored_key)
        if decision.stored_key is not None:
            self._active.pop(decision.stored_key, None)

    # -- claims -------------------------------------------------------------------------

    async def _claim(self, key: str, fingerprint: str) -> Claim:
        return await self._store.claim(
            key,
            fingerprint,
            owner=self._config.owner,
            now=self._clock(),
            lease_s=self._config.lease_s,
        )

    def _busy(self, claim: Claim, attempt: Attempt) -> Retry:
        log.info("idempotency.busy", idempotency_key=claim.record.key, owner=claim.record.owner)
        return Retry(self._config.busy_poll_s, attempt, "claim held by another worker", "busy")

    # -- invalid commands ---------------------------------------------------------------

    async def _invalid(
        self,
        record: InboundRecord,
        raw: Mapping[str, Any],
        errors: list[FieldError],
        received_at: datetime,
        attempt: Attempt,
    ) -> Decision:
        key, correlation_id, requested_by = identify(raw)
        account = raw.get("bank_account_number")
        account_text = account if isinstance(account, str) else None
        valid_account = (
            account_text is not None and account_text.isdigit() and len(account_text) <= 30
        )
        occurred = raw.get("occurred_at")
        info = CommandInfo(
            idempotency_key=key,
            correlation_id=correlation_id,
            requested_by=requested_by,
            account_ref=account_ref(account_text) if valid_account and account_text else None,
            account_masked=mask_account(account_text) if account_text else None,
            command_occurred_at=occurred if isinstance(occurred, datetime) else EPOCH,
            received_at=received_at,
            source=record.source,
            metadata=safe_metadata(raw.get("metadata")),
        )
        fields = ", ".join(sorted({error.field for error in errors}))
        failure = Failed(
            info=info,
            reason_code=Reason.VALIDATION_FAILED,
            description=f"invalid command: {fields}",
            retryable=False,
            failed_at=self._clock(),
            errors=tuple(ErrorDetail.from_field_error(error, OUR_SOURCE) for error in errors),
        )
        log.warning(
            "command.invalid",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            idempotency_key=key,
            fields=fields,
        )
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            return self._decision(failure, stored=False)
        claim = await self._claim(key, business_fingerprint(raw))
        if claim.status is ClaimStatus.CLAIMED:
            return await self._finish(key, failure, State.FAILED)
        if claim.status is ClaimStatus.BUSY:
            return self._busy(claim, attempt)
        if claim.status in (ClaimStatus.TAKEN_OVER, ClaimStatus.RECONCILE):
            # Same business fields as a command whose call may have gone out, but this copy is
            # invalid and cannot be reconciled: record the outcome as unknown, for review.
            return await self._give_up(key, info, attempt, "an interrupted earlier attempt")
        return self._not_claimed(claim, info, key, record)

    # -- valid commands -----------------------------------------------------------------

    async def _valid(
        self,
        record: InboundRecord,
        command: AdjustmentCommand,
        received_at: datetime,
        attempt: Attempt,
    ) -> Decision:
        key = command.idempotency_key
        info = CommandInfo(
            idempotency_key=key,
            correlation_id=command.correlation_id,
            requested_by=command.requested_by,
            account_ref=account_ref(command.bank_account_number),
            account_masked=mask_account(command.bank_account_number),
            command_occurred_at=command.occurred_at,
            received_at=received_at,
            source=record.source,
            metadata=command.published_metadata(),
        )
        lease_from = self._monotonic()  # the lease runs from (at latest) this instant
        claim = await self._claim(key, command.fingerprint())
        status = claim.status
        if status is ClaimStatus.CLAIMED:
            return await self._call(command, info, attempt, lease_from)
        if status is ClaimStatus.BUSY:
            return self._busy(claim, attempt)
        if status is ClaimStatus.TAKEN_OVER:
            log.warning("idempotency.taken_over", idempotency_key=key)
            return await self._unknown(key, info, attempt, "an earlier attempt was interrupted")
        if status is ClaimStatus.RECONCILE:
            return await self._reconcile(command, info, attempt, claim.record)
        return self._not_claimed(claim, info, key, record)

    def _not_claimed(
        self, claim: Claim, info: CommandInfo, key: str, record: InboundRecord
    ) -> Decision:
        if claim.status is ClaimStatus.CONFLICT:
            log.warning(
                "idempotency.conflict",
                idempotency_key=key,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            conflict = Failed(
                info=info,
                reason_code=Reason.IDEMPOTENCY_CONFLICT,
                description=(
                    "this idempotency key was used before for a command with different"
                    " business fields; the earlier command stands"
                ),
                retryable=False,
                failed_at=self._clock(),
            )
            return self._decision(conflict, stored=False, duplicate_kind="conflict")
        return self._republish(claim.record, key, record)

    def _republish(self, stored: IdempotencyRecord, key: str, record: InboundRecord) -> Publish:
        """DUPLICATE: the stored outcome again (as the original if it never got out)."""
        assert stored.outcome is not None
        assert stored.outcome_kind in ("completed", "failed")
        payload = dict(stored.outcome)
        if stored.published:
            payload.update(
                event_id=event_id(key, record.source),
                source=record.source.as_avro(),
                duplicate=True,
            )
        log.info(
            "idempotency.duplicate",
            idempotency_key=key,
            state=stored.state.value,
            republished_original=not stored.published,
        )
        return Publish(
            kind="completed" if stored.outcome_kind == "completed" else "failed",
            payload=payload,
            record_key=payload.get("account_ref"),
            duplicate=stored.published,
            reason_code=payload.get("reason_code"),
            stored_key=key,
            duplicate_kind=stored.state.value.lower() if stored.published else None,
        )

    # -- calling PAS --------------------------------------------------------------------

    def _request(self, command: AdjustmentCommand) -> PasRequest:
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
        )

    def _deadline(self, lease_from: float) -> float:
        """When a call must be over: within the call timeout, and before the lease ends."""
        config = self._config
        lease_end = lease_from + config.lease_s - config.lease_margin_s
        return min(self._monotonic() + config.call_timeout_s, lease_end)

    async def _call(
        self, command: AdjustmentCommand, info: CommandInfo, attempt: Attempt, lease_from: float
    ) -> Decision:
        key = command.idempotency_key
        now = self._clock()
        if deadline_passed(command.occurred_at, now, self._config.command_ttl_s):
            expired = Failed(
                info=info,
                reason_code=EXPIRED,
                description=(
                    f"the command is older than its time-to-live"
                    f" ({self._config.command_ttl_s:g} s); it was not applied"
                ),
                retryable=False,
                failed_at=now,
                attempts=attempt.calls,
            )
            log.warning("command.expired", idempotency_key=key, attempts=attempt.calls)
            return await self._finish(key, expired, State.FAILED)
        reply = await self._pas.adjust(self._request(command), deadline=self._deadline(lease_from))
        rule = reply.rule
        circuit_open = reply.observation.transport is Transport.CIRCUIT_OPEN
        now = self._clock()
        attempt = (
            attempt if circuit_open else replace(attempt, calls=attempt.calls + 1, last_call_at=now)
        )
        if rule.action is Action.APPLIED:
            assert reply.points_adjusted is not None
            completed = Completed(
                info=info,
                adjustment_type_code=command.adjustment_type_code,
                points_requested=command.points_to_adjust,
                points_adjusted=reply.points_adjusted,
                attempts=attempt.calls,
                completed_at=now,
                pas_duration_ms=int(reply.duration_s * 1000),
                pas_correlation_id=reply.pas_correlation_id,
            )
            return await self._finish(key, completed, State.COMPLETED)
        if rule.action is Action.PERMANENT:
            refused = self._failure(info, rule.reason, reply, attempt, retryable=False)
            return await self._finish(key, refused, State.FAILED)
        if rule.action is Action.UNKNOWN:
            log.error(
                "pas.outcome_unknown",
                idempotency_key=key,
                problem=reply.problem,
                status=reply.observation.status,
            )
            return await self._unknown(key, info, attempt, reply.problem)
        # RETRY or DEAD_LETTER: nothing was applied; let go of the claim.
        await self._store.release(key, owner=self._config.owner)
        attempt = attempt.failed(now)
        if rule.action is Action.RETRY and (
            circuit_open or attempt.calls < self._config.max_attempts
        ):
            pause = self._config.backoff.delay(max(attempt.calls, 1), reply.retry_after_s)
            log.warning(
                "pas.retry_scheduled",
                idempotency_key=key,
                attempt=attempt.calls,
                pause_s=round(pause, 3),
                problem=reply.problem,
            )
            return Retry(pause, attempt, reply.problem)
        error_class = "Unauthorized" if rule.action is Action.DEAD_LETTER else "RetriesExhausted"
        log.error(
            "pas.dead_letter",
            idempotency_key=key,
            error_class=error_class,
            attempts=attempt.calls,
            problem=reply.problem,
        )
        failure = self._failure(info, rule.reason, reply, attempt, retryable=True)
        return replace(
            self._decision(failure, stored=False),
            dead_letter=self._dead_letter(
                "dlt", error_class, failure.reason_code, reply.problem, attempt
            ),
        )

    def _failure(
        self,
        info: CommandInfo,
        reason: str | None,
        reply: PasReply,
        attempt: Attempt,
        *,
        retryable: bool,
    ) -> Failed:
        return Failed(
            info=info,
            reason_code=reason or Reason.PAS_REJECTED,
            description=(
                f"PAS did not apply the adjustment: {reply.problem}"
                + ("; publish the command again later" if retryable else "")
            ),
            retryable=retryable,
            failed_at=self._clock(),
            errors=reply.errors,
            http_status=reply.observation.status,
            attempts=attempt.calls,
        )

    def _dead_letter(
        self, target: str, error_class: str, reason: str, detail: str, attempt: Attempt
    ) -> DeadLetterRequest:
        now = self._clock()
        return DeadLetterRequest(
            "review" if target == "review" else "dlt",
            error_class,
            reason,
            detail,
            attempt.calls,
            attempt.first_failure_at or now,
            attempt.last_failure_at or now,
        )

    # -- unknown outcomes ---------------------------------------------------------------

    async def _unknown(
        self, key: str, info: CommandInfo, attempt: Attempt, problem: str
    ) -> Decision:
        """The call may have been applied: look it up later, or give up without a retry."""
        now = self._clock()
        attempt = attempt.failed(now)
        if (
            self._config.reconcile
            and self._history is not None
            and self._config.reference_in_reason
        ):
            await self._park(key, now, now + timedelta(seconds=self._config.settle_s))
            log.warning("reconcile.scheduled", idempotency_key=key, after_s=self._config.settle_s)
            return Retry(self._config.settle_s, attempt, f"outcome unknown: {problem}", "reconcile")
        return await self._give_up(key, info, attempt, problem)

    async def _give_up(
        self, key: str, info: CommandInfo, attempt: Attempt, problem: str
    ) -> Decision:
        unknown = Failed(
            info=info,
            reason_code=Reason.OUTCOME_UNKNOWN,
            description=f"PAS may have applied the adjustment ({problem}); not retried, review it",
            retryable=False,
            failed_at=self._clock(),
            attempts=attempt.calls,
        )
        decision = await self._finish(key, unknown, State.UNKNOWN)
        return replace(
            decision,
            dead_letter=self._dead_letter(
                "review", "OutcomeUnknown", Reason.OUTCOME_UNKNOWN, problem, attempt
            ),
        )

    async def _park(self, key: str, now: datetime, settle_until: datetime) -> None:
        """RECONCILING until ``settle_until``; the lease outlives it, so a dead owner's park
        is taken over only after the settle time."""
        lease_until = settle_until + timedelta(seconds=self._config.lease_s)
        await self._store.park(
            key,
            owner=self._config.owner,
            now=now,
            settle_until=settle_until,
            lease_until=lease_until,
        )

    async def _reconcile(
        self,
        command: AdjustmentCommand,
        info: CommandInfo,
        attempt: Attempt,
        record: IdempotencyRecord,
    ) -> Decision:
        key = command.idempotency_key
        now = self._clock()
        if self._history is None or not self._config.reference_in_reason:
            return await self._give_up(key, info, attempt, "reconciliation is off")
        # The settle time is in the record, so it holds across restarts and rebalances.
        settle_until = record.settle_until or now
        elapsed = self._config.settle_s - max((settle_until - now).total_seconds(), 0.0)
        lookup = await self._history.lookup(command.bank_account_number)
        verdict = judge(
            lookup,
            reference_for(key),
            elapsed_since_last_attempt_s=elapsed,
            settle_s=self._config.settle_s,
        )
        if isinstance(verdict, ReconcileFound):
            log.info("reconcile.found", idempotency_key=key)
            completed = Completed(
                info=info,
                adjustment_type_code=command.adjustment_type_code,
                points_requested=command.points_to_adjust,
                points_adjusted=verdict.entry.points_adjusted,
                attempts=max(attempt.calls, 1),
                completed_at=now,
                pas_duration_ms=0,
                pas_correlation_id=None,
            )
            return await self._finish(key, completed, State.COMPLETED)
        if isinstance(verdict, ReconcileAbsent):
            log.info("reconcile.absent", idempotency_key=key)
            now = self._clock()  # the lookup took a while: the new lease runs from here
            lease_from = self._monotonic()
            lease_until = now + timedelta(seconds=self._config.lease_s)
            await self._store.resume(
                key, owner=self._config.owner, lease_until=lease_until, now=now
            )
            return await self._call(command, info, attempt, lease_from)
        if verdict.retry_in_s is None:  # the lookup failed; "not settled yet" is no failure
            attempt = replace(attempt, lookups=attempt.lookups + 1)
        if attempt.lookups >= self._config.max_lookups:
            log.error("reconcile.gave_up", idempotency_key=key, problem=verdict.problem)
            return await self._give_up(key, info, attempt, verdict.problem)
        pause = verdict.retry_in_s if verdict.retry_in_s is not None else self._config.settle_s
        await self._park(key, now, max(settle_until, now))
        log.warning(
            "reconcile.undecided",
            idempotency_key=key,
            problem=verdict.problem,
            after_s=round(pause, 3),
        )
        return Retry(pause, attempt, verdict.problem, "reconcile")

    # -- outcomes -----------------------------------------------------------------------

    async def _finish(self, key: str, outcome: Outcome, state: State) -> Publish:
        decision = self._decision(outcome, stored=True)
        await self._store.finish(
            key,
            owner=self._config.owner,
            state=state,
            outcome_kind=decision.kind,
            outcome=decision.payload,
            attempts=outcome.attempts,
            now=self._clock(),
        )
        return decision

    def _decision(
        self, outcome: Outcome, *, stored: bool, duplicate_kind: str | None = None
    ) -> Publish:
        payload = to_stored(outcome.as_avro(self._config.version))
        if not stored:
            # Not stored, so not the key's one outcome: an id of its own per record.
            payload["event_id"] = event_id(outcome.info.idempotency_key, outcome.info.source)
        return Publish(
            kind=outcome.kind,
            payload=payload,
            record_key=outcome.info.account_ref,
            duplicate=False,
            reason_code=outcome.reason_code if isinstance(outcome, Failed) else None,
            stored_key=outcome.info.idempotency_key if stored else None,
            duplicate_kind=duplicate_kind,
        )
