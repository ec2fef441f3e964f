"""The processing step: decode, validate, deduplicate, call PAS, decide the outcome.

Plain code over small protocols (``PasPort``, ``IdempotencyStore``, a decode function and a
clock): it knows nothing of Kafka or HTTP. The runner hands it one record at a time per
account and publishes what it decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from service.domain.command import (
    IDEMPOTENCY_KEY_PATTERN,
    OUR_SOURCE,
    AdjustmentCommand,
    CommandRules,
    account_ref,
    business_fingerprint,
    identify,
    mask_account,
    validate_command,
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
from service.domain.ports import (
    Clock,
    PasApplied,
    PasNotSent,
    PasPort,
    PasRefused,
    PasRequest,
    PasResult,
    PasUnknown,
    Sleep,
)
from service.errors import UndecodableRecordError
from service.idempotency.base import Claim, ClaimStatus, IdempotencyStore, State

log = structlog.get_logger("service.processor")

Decode = Callable[[bytes | None], Mapping[str, Any]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class InboundRecord:
    """A command record as read from the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition, self.offset)


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


@dataclass(frozen=True)
class Skip:
    """The record cannot be read as a command: nothing can be published for it."""

    reason: str
    detail: str


Decision = Publish | Skip


@dataclass(frozen=True)
class ProcessorConfig:
    rules: CommandRules
    owner: str
    lease_s: float
    version: str
    unavailable_attempts: int
    unavailable_backoff_s: float
    busy_poll_s: float = 0.5


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


class Processor:
    """Turns one command record into one decision."""

    def __init__(
        self,
        *,
        decode: Decode,
        store: IdempotencyStore,
        pas: PasPort,
        config: ProcessorConfig,
        clock: Clock = lambda: datetime.now(UTC),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._decode = decode
        self._store = store
        self._pas = pas
        self._config = config
        self._clock = clock
        self._sleep = sleep

    async def handle(self, record: InboundRecord) -> Decision:
        received_at = self._clock()
        try:
            raw = self._decode(record.value)
        except UndecodableRecordError as exc:
            log.warning(
                "record.undecodable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=exc.reason,
                detail=exc.detail,
            )
            return Skip(exc.reason, exc.detail)
        checked = validate_command(raw, self._config.rules)
        if isinstance(checked, list):
            return await self._invalid(record, raw, checked, received_at)
        return await self._valid(record, checked, received_at)

    async def published(self, decision: Publish) -> None:
        """Record that the outcome of a stored key was acknowledged by the broker."""
        if decision.stored_key is not None and not decision.duplicate:
            await self._store.mark_published(decision.stored_key)

    # -- invalid commands -------------------------------------------------------------

    async def _invalid(
        self,
        record: InboundRecord,
        raw: Mapping[str, Any],
        errors: list[Any],
        received_at: datetime,
    ) -> Decision:
        key, correlation_id, requested_by = identify(raw)
        account = raw.get("bank_account_number")
        account_text = account if isinstance(account, str) else None
        occurred = raw.get("occurred_at")
        valid_account = (
            account_text is not None and account_text.isdigit() and len(account_text) <= 30
        )
        info = CommandInfo(
            idempotency_key=key,
            correlation_id=correlation_id,
            requested_by=requested_by,
            account_ref=account_ref(account_text) if valid_account and account_text else None,
            account_masked=mask_account(account_text) if account_text else None,
            command_occurred_at=occurred if isinstance(occurred, datetime) else EPOCH,
            received_at=received_at,
            source=record.source,
            metadata=_string_map(raw.get("metadata")),
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
        if claim.status is ClaimStatus.TAKEN_OVER:
            return await self._taken_over(key, info, claim.record.attempts)
        return await self._not_claimed(claim.status, claim.record, info, key, record, raw)

    # -- valid commands ---------------------------------------------------------------

    async def _valid(
        self, record: InboundRecord, command: AdjustmentCommand, received_at: datetime
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
            metadata=dict(command.metadata),
        )
        claim = await self._claim(key, command.fingerprint())
        if claim.status is ClaimStatus.CLAIMED:
            return await self._call(command, info)
        if claim.status is ClaimStatus.TAKEN_OVER:
            return await self._taken_over(key, info, claim.record.attempts)
        return await self._not_claimed(
            claim.status, claim.record, info, key, record, command.model_dump()
        )

    async def _claim(self, key: str, fingerprint: str) -> Claim:
        """Claim ``key``, waiting while another owner's live lease holds it."""
        while True:
            claim = await self._store.claim(
                key,
                fingerprint,
                owner=self._config.owner,
                now=self._clock(),
                lease_s=self._config.lease_s,
            )
            if claim.status is not ClaimStatus.BUSY:
                return claim
            log.info("idempotency.busy", idempotency_key=key, owner=claim.record.owner)
            await self._sleep(self._config.busy_poll_s)

    async def _taken_over(self, key: str, info: CommandInfo, attempts: int) -> Decision:
        """An abandoned claim may have reached PAS: record the outcome as unknown."""
        log.warning("idempotency.taken_over", idempotency_key=key, attempts=attempts)
        failure = Failed(
            info=info,
            reason_code=Reason.OUTCOME_UNKNOWN,
            description=(
                "an earlier attempt was interrupted after the claim; it may have reached PAS,"
                " so it is not sent again"
            ),
            retryable=False,
            failed_at=self._clock(),
            attempts=attempts,
        )
        return await self._finish(key, failure, State.UNKNOWN)

    async def _not_claimed(
        self,
        status: ClaimStatus,
        stored: Any,
        info: CommandInfo,
        key: str,
        record: InboundRecord,
        raw: Mapping[str, Any],
    ) -> Decision:
        if status is ClaimStatus.CONFLICT:
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
        # DUPLICATE: publish the stored outcome again.
        assert stored.outcome is not None
        assert stored.outcome_kind is not None
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
            kind=stored.outcome_kind,
            payload=payload,
            record_key=payload.get("account_ref"),
            duplicate=stored.published,
            reason_code=payload.get("reason_code"),
            stored_key=key,
            duplicate_kind=stored.state.value.lower() if stored.published else None,
        )

    async def _call(self, command: AdjustmentCommand, info: CommandInfo) -> Decision:
        request = PasRequest(
            bank_account_number=command.bank_account_number,
            points_to_adjust=command.points_to_adjust,
            adjustment_type_code=command.adjustment_type_code,
            adjustment_reason=command.adjustment_reason,
            adjusted_by=command.adjusted_by,
            correlation_id=command.correlation_id,
        )
        attempts = 0
        pas_time = 0.0
        result: PasResult
        while True:
            attempts += 1
            result = await self._pas.adjust(request)
            pas_time += result.duration_s
            retry = isinstance(result, PasNotSent) or (
                isinstance(result, PasRefused) and result.recoverable
            )
            if not retry or attempts >= self._config.unavailable_attempts:
                break
            pause = self._config.unavailable_backoff_s * 2 ** (attempts - 1)
            log.warning(
                "pas.retry_scheduled",
                idempotency_key=info.idempotency_key,
                attempt=attempts,
                pause_s=pause,
                problem=_problem(result),
            )
            await self._sleep(pause)
        key = command.idempotency_key
        now = self._clock()
        if isinstance(result, PasApplied):
            completed = Completed(
                info=info,
                adjustment_type_code=command.adjustment_type_code,
                points_requested=command.points_to_adjust,
                points_adjusted=result.points_adjusted,
                attempts=attempts,
                completed_at=now,
                pas_duration_ms=int(pas_time * 1000),
                pas_correlation_id=result.pas_correlation_id,
            )
            return await self._finish(key, completed, State.COMPLETED)
        if isinstance(result, PasUnknown):
            log.error(
                "pas.outcome_unknown",
                idempotency_key=key,
                problem=result.problem,
                status=result.status,
            )
            unknown = Failed(
                info=info,
                reason_code=Reason.OUTCOME_UNKNOWN,
                description=f"PAS may have applied the adjustment: {result.problem}",
                retryable=False,
                failed_at=now,
                errors=result.errors,
                http_status=result.status,
                attempts=attempts,
            )
            return await self._finish(key, unknown, State.UNKNOWN)
        if (
            isinstance(result, PasRefused)
            and not result.recoverable
            and result.status not in (401, 403)
        ):
            reason = Reason.ACCOUNT_NOT_FOUND if result.status == 404 else Reason.PAS_REJECTED
            refused = Failed(
                info=info,
                reason_code=reason,
                description=f"PAS refused the adjustment with HTTP {result.status}",
                retryable=False,
                failed_at=now,
                errors=result.errors,
                http_status=result.status,
                attempts=attempts,
            )
            return await self._finish(key, refused, State.FAILED)
        # Nothing was applied and trying later may work: forget the claim.
        await self._store.release(key, owner=self._config.owner)
        if isinstance(result, PasRefused):
            reason = Reason.UNAUTHORIZED if result.status in (401, 403) else Reason.PAS_UNAVAILABLE
            status: int | None = result.status
            errors = result.errors
        else:
            reason, status, errors = Reason.PAS_UNAVAILABLE, None, ()
        log.error("pas.unavailable", idempotency_key=key, reason=reason, problem=_problem(result))
        unavailable = Failed(
            info=info,
            reason_code=reason,
            description=f"nothing was applied; publish the command again later: {_problem(result)}",
            retryable=True,
            failed_at=now,
            errors=errors,
            http_status=status,
            attempts=attempts,
        )
        return self._decision(unavailable, stored=False)

    async def _finish(self, key: str, outcome: Outcome, state: State) -> Decision:
        decision = self._decision(outcome, stored=True)
        attempts = outcome.attempts
        await self._store.finish(
            key,
            owner=self._config.owner,
            state=state,
            outcome_kind=decision.kind,
            outcome=decision.payload,
            attempts=attempts,
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


def _problem(result: PasResult) -> str:
    if isinstance(result, PasNotSent | PasUnknown):
        return result.problem
    if isinstance(result, PasRefused):
        codes = ",".join(error.reason_code for error in result.errors) or "no envelope"
        return f"HTTP {result.status} {codes}"
    return "applied"


def _string_map(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {}
