"""Building outcomes: from a command, a PAS reply (or a history entry) and the attempt so far.

The processor and the reconciler decide *which* outcome a command gets; this module says
what each one holds. Every outcome copies its command through a :class:`CommandInfo` of
safe copies: a valid command's own fields (inside every limit; metadata with card numbers
masked), or for an invalid one the copies of :func:`~service.domain.command.identify` and
:func:`~service.domain.command.safe_metadata`. The account number itself is never copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from service.domain.command import (
    OUR_SOURCE,
    AdjustmentCommand,
    FieldError,
    account_ref,
    identify,
    mask_account,
    safe_metadata,
)
from service.domain.decisions import Attempt
from service.domain.inbound import DecodedCommand
from service.domain.limits import MAX_ACCOUNT_DIGITS
from service.domain.outcome import (
    CommandInfo,
    Completed,
    ErrorDetail,
    Failed,
    Reason,
    SourceRef,
)
from service.domain.ports import PasReply
from service.domain.reconcile import HistoryEntry


def command_info(
    command: AdjustmentCommand, source: SourceRef, received_at: datetime
) -> CommandInfo:
    """What the outcomes of a valid command repeat of it."""
    return CommandInfo(
        idempotency_key=command.idempotency_key,
        correlation_id=command.correlation_id,
        requested_by=command.requested_by,
        account_ref=account_ref(command.bank_account_number),
        account_masked=mask_account(command.bank_account_number),
        command_occurred_at=command.occurred_at,
        received_at=received_at,
        source=source,
        metadata=command.published_metadata(),
    )


def invalid_command_info(
    command: DecodedCommand, source: SourceRef, received_at: datetime
) -> CommandInfo:
    """What the failed outcome of an invalid command repeats of it: safe copies only.

    An account that is not 1-30 digits gets no reference (it names no account PAS knows).
    """
    key, correlation_id, requested_by = identify(command)
    account = command.bank_account_number
    usable = account.isdigit() and len(account) <= MAX_ACCOUNT_DIGITS
    return CommandInfo(
        idempotency_key=key,
        correlation_id=correlation_id,
        requested_by=requested_by,
        account_ref=account_ref(account) if usable else None,
        account_masked=mask_account(account) if account else None,
        command_occurred_at=command.occurred_at,
        received_at=received_at,
        source=source,
        metadata=safe_metadata(command.metadata),
    )


def error_fields(errors: Sequence[FieldError]) -> str:
    """The fields named by ``errors``, sorted, comma-separated."""
    return ", ".join(sorted({error.field for error in errors}))


class OutcomeBuilder:
    """Makes each kind of outcome; every one carries ``version``, the service's version."""

    def __init__(self, version: str) -> None:
        self._version = version

    # -- not sent to PAS ------------------------------------------------------------------

    def invalid(self, info: CommandInfo, errors: Sequence[FieldError], at: datetime) -> Failed:
        """VALIDATION_FAILED with every field error."""
        return Failed(
            info=info,
            reason_code=Reason.VALIDATION_FAILED,
            description=f"invalid command: {error_fields(errors)}",
            retryable=False,
            failed_at=at,
            errors=tuple(ErrorDetail.from_field_error(error, OUR_SOURCE) for error in errors),
            service_version=self._version,
        )

    def conflict(self, info: CommandInfo, at: datetime) -> Failed:
        """IDEMPOTENCY_CONFLICT: the key was used before for other business fields."""
        return Failed(
            info=info,
            reason_code=Reason.IDEMPOTENCY_CONFLICT,
            description=(
                "this idempotency key was used before for a command with different"
                " business fields; the earlier command stands"
            ),
            retryable=False,
            failed_at=at,
            service_version=self._version,
        )

    def expired(self, info: CommandInfo, ttl_s: float, attempt: Attempt, at: datetime) -> Failed:
        """EXPIRED: older than its time-to-live, so not sent (again)."""
        return Failed(
            info=info,
            reason_code=Reason.EXPIRED,
            description=(
                f"the command is older than its time-to-live ({ttl_s:g} s); it was not applied"
            ),
            retryable=False,
            failed_at=at,
            attempts=attempt.calls,
            service_version=self._version,
        )

    # -- PAS's answers ----------------------------------------------------------------------

    def applied(
        self,
        command: AdjustmentCommand,
        info: CommandInfo,
        reply: PasReply,
        attempt: Attempt,
        at: datetime,
    ) -> Completed:
        """PAS answered that it applied the adjustment (``reply.points_adjusted`` is set)."""
        assert reply.points_adjusted is not None
        return Completed(
            info=info,
            adjustment_type_code=command.adjustment_type_code,
            points_requested=command.points_to_adjust,
            points_adjusted=reply.points_adjusted,
            attempts=attempt.calls,
            completed_at=at,
            pas_duration_ms=int(reply.duration_s * 1000),
            pas_correlation_id=reply.pas_correlation_id,
            service_version=self._version,
        )

    def refused(
        self,
        info: CommandInfo,
        reason: str | None,
        reply: PasReply,
        attempt: Attempt,
        at: datetime,
        *,
        retryable: bool,
    ) -> Failed:
        """PAS did not apply it: refused, unreachable or unauthorized (``reason``)."""
        return Failed(
            info=info,
            reason_code=reason or Reason.PAS_REJECTED,
            description=(
                f"PAS did not apply the adjustment: {reply.problem}"
                + ("; publish the command again later" if retryable else "")
            ),
            retryable=retryable,
            failed_at=at,
            errors=reply.errors,
            http_status=reply.observation.status,
            attempts=attempt.calls,
            service_version=self._version,
        )

    # -- unknown outcomes ---------------------------------------------------------------------

    def found(
        self,
        command: AdjustmentCommand,
        info: CommandInfo,
        entry: HistoryEntry,
        attempt: Attempt,
        at: datetime,
    ) -> Completed:
        """A request whose outcome was unknown is in PAS's history: it was applied."""
        return Completed(
            info=info,
            adjustment_type_code=command.adjustment_type_code,
            points_requested=command.points_to_adjust,
            points_adjusted=entry.points_adjusted,
            attempts=max(attempt.calls, 1),
            completed_at=at,
            pas_duration_ms=0,
            pas_correlation_id=None,
            service_version=self._version,
        )

    def unknown(self, info: CommandInfo, problem: str, attempt: Attempt, at: datetime) -> Failed:
        """OUTCOME_UNKNOWN: PAS may have applied it; not retried, for review."""
        return Failed(
            info=info,
            reason_code=Reason.OUTCOME_UNKNOWN,
            description=f"PAS may have applied the adjustment ({problem}); not retried, review it",
            retryable=False,
            failed_at=at,
            attempts=attempt.calls,
            service_version=self._version,
        )
