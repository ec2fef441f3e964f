"""After an unknown outcome: park the claim, look the request up in PAS's history, decide.

A call whose outcome is unknown (a timeout, a reset, a 5xx) may have been applied, so it is
never simply sent again. With reconciliation on (a history port, and the reference in the
reason, see :mod:`service.domain.reconcile`), the claim is *parked* RECONCILING and the
record handed back; once the settle time has passed the account's history is looked up and
:func:`~service.domain.reconcile.judge` gives the verdict:

- found: the request was applied: COMPLETED, from the history entry;
- absent (after the settle time): the claim is *resumed* and the processor sends the
  request once more (:class:`Resend`);
- undecided: parked again; after ``max_lookups`` failed lookups, OUTCOME_UNKNOWN.

Without reconciliation an unknown outcome *gives up* at once: OUTCOME_UNKNOWN is stored and
a copy of the record goes to the review topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog

from service.domain.claims import Claims
from service.domain.command import AdjustmentCommand
from service.domain.decisions import Attempt, DeadLetterRequest, Decision, Publish, Retry
from service.domain.outcome import CommandInfo, Reason
from service.domain.outcome_builder import OutcomeBuilder
from service.domain.ports import Clock
from service.domain.reconcile import (
    HistoryPort,
    ReconcileAbsent,
    ReconcileFound,
    judge,
    reference_for,
)
from service.domain.store import IdempotencyRecord, State

log = structlog.get_logger("service.reconciler")


@dataclass(frozen=True)
class ReconcileSettings:
    """When and how unknown outcomes are reconciled."""

    enabled: bool
    """Park new unknown outcomes for a lookup (records parked already are looked up anyway,
    as long as a lookup is possible)."""
    reference_in_reason: bool
    """Requests carry the reference a lookup searches for; without it none can tell."""
    settle_s: float
    max_lookups: int


@dataclass(frozen=True, slots=True)
class Resend:
    """The history proved the request absent and the claim is IN_FLIGHT again: send it.

    ``lease_from``: the monotonic instant the new lease runs from (at latest).
    """

    attempt: Attempt
    lease_from: float


class Reconciler:
    """Parks, looks up, judges and resumes the claims whose call had an unknown outcome."""

    def __init__(
        self,
        *,
        claims: Claims,
        history: HistoryPort | None,
        outcomes: OutcomeBuilder,
        settings: ReconcileSettings,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._claims = claims
        self._history = history
        self._outcomes = outcomes
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic

    @property
    def _can_look_up(self) -> bool:
        return self._history is not None and self._settings.reference_in_reason

    async def unknown(self, info: CommandInfo, attempt: Attempt, problem: str) -> Decision:
        """The call may have been applied: look it up later, or give up without a retry."""
        now = self._clock()
        attempt = attempt.failed(now)
        settle_s = self._settings.settle_s
        if self._settings.enabled and self._can_look_up:
            await self._claims.park(info.idempotency_key, now, now + timedelta(seconds=settle_s))
            log.warning("reconcile.scheduled", after_s=settle_s)
            return Retry(settle_s, attempt, f"outcome unknown: {problem}", "reconcile")
        return await self.give_up(info, attempt, problem)

    async def give_up(self, info: CommandInfo, attempt: Attempt, problem: str) -> Publish:
        """Store OUTCOME_UNKNOWN, and ask for a copy of the record on the review topic."""
        now = self._clock()
        decision = await self._claims.finish(
            self._outcomes.unknown(info, problem, attempt, now), State.UNKNOWN
        )
        review = DeadLetterRequest.after(
            attempt, "review", "OutcomeUnknown", Reason.OUTCOME_UNKNOWN, problem, self._clock()
        )
        return replace(decision, dead_letter=review)

    async def reconcile(
        self,
        command: AdjustmentCommand,
        info: CommandInfo,
        attempt: Attempt,
        record: IdempotencyRecord,
    ) -> Decision | Resend:
        """Decide a claim parked RECONCILING (``record``), now this worker's."""
        key = command.idempotency_key
        now = self._clock()
        if self._history is None or not self._settings.reference_in_reason:
            return await self.give_up(info, attempt, "reconciliation is off")
        settle_s = self._settings.settle_s
        # The settle time is in the record, so it holds across restarts and rebalances.
        settle_until = record.settle_until or now
        elapsed = settle_s - max((settle_until - now).total_seconds(), 0.0)
        lookup = await self._history.lookup(
            command.bank_account_number, correlation_id=command.correlation_id
        )
        verdict = judge(
            lookup, reference_for(key), elapsed_since_last_attempt_s=elapsed, settle_s=settle_s
        )
        if isinstance(verdict, ReconcileFound):
            log.info("reconcile.found")
            completed = self._outcomes.found(command, info, verdict.entry, attempt, now)
            return await self._claims.finish(completed, State.COMPLETED)
        if isinstance(verdict, ReconcileAbsent):
            log.info("reconcile.absent")
            now = self._clock()  # the lookup took a while: the new lease runs from here
            lease_from = self._monotonic()
            await self._claims.resume(key, now)
            return Resend(attempt, lease_from)
        if verdict.retry_in_s is None:  # the lookup failed; "not settled yet" is no failure
            attempt = replace(attempt, lookups=attempt.lookups + 1)
        if attempt.lookups >= self._settings.max_lookups:
            log.error("reconcile.gave_up", problem=verdict.problem)
            return await self.give_up(info, attempt, verdict.problem)
        pause = verdict.retry_in_s if verdict.retry_in_s is not None else settle_s
        await self._claims.park(key, now, max(settle_until, now))
        log.warning("reconcile.undecided", problem=verdict.problem, after_s=round(pause, 3))
        return Retry(pause, attempt, verdict.problem, "reconcile")
