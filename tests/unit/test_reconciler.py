"""The reconciler on its own, over a memory store and a scripted history: park, look up,
judge, then complete, resume (for the processor to send again) or give up for review.

The processor's tests drive the same flows end to end through ``Processor.handle``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.claims import Claims
from service.domain.command import AdjustmentCommand, CommandRules, validate_command
from service.domain.decisions import Attempt, DeadLetterRequest, Publish, Retry
from service.domain.inbound import DecodedCommand
from service.domain.outcome import CommandInfo, Completed, Failed, SourceRef
from service.domain.outcome_builder import OutcomeBuilder, command_info
from service.domain.reconcile import HistoryEntry, HistoryFailed, HistoryFound, reference_for
from service.domain.reconciler import Reconciler, ReconcileSettings, Resend
from service.domain.store import State
from service.idempotency.memory import MemoryStore
from tests.fakes import FakeHistory, FakeWallClock

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
ME = "worker-a"
LEASE_S = 60.0
SETTLE_S = 30.0
KEY = "case-1234-credit"
ACCOUNT = "5123456789012345000"
SETTINGS = ReconcileSettings(
    enabled=True, reference_in_reason=True, settle_s=SETTLE_S, max_lookups=2
)
HISTORY_DOWN = HistoryFailed("HTTP 503 from the history endpoint", 503)


def applied_entry() -> HistoryEntry:
    return HistoryEntry("adj-2", 240, f"Late delivery {reference_for(KEY)}", "2025-03-04")


def the_command() -> AdjustmentCommand:
    command = validate_command(
        DecodedCommand(
            idempotency_key=KEY,
            bank_account_number=ACCOUNT,
            points_to_adjust=250,
            adjustment_type_code="GOODWILL",
            adjustment_reason="Late delivery",
            adjusted_by="agent-0042",
            correlation_id="corr-1",
            requested_by="crm",
            occurred_at=T0,
        ),
        CommandRules(1_000_000, frozenset({"GOODWILL"})),
    )
    assert isinstance(command, AdjustmentCommand)
    return command


class Rig:
    """A reconciler whose claim on KEY was just taken, with the clocks it runs on."""

    def __init__(self, settings: ReconcileSettings = SETTINGS, *, history: bool = True) -> None:
        self.store = MemoryStore()
        self.clock = FakeWallClock(T0)
        self.monotonic = 1000.0
        self.history = FakeHistory()
        self.claims = Claims(self.store, owner=ME, lease_s=LEASE_S, clock=self.clock)
        self.reconciler = Reconciler(
            claims=self.claims,
            history=self.history if history else None,
            outcomes=OutcomeBuilder("9.9.9-test"),
            settings=settings,
            clock=self.clock,
            monotonic=lambda: self.monotonic,
        )
        self.command = the_command()
        self.info: CommandInfo = command_info(self.command, SourceRef("t", 0, 7), T0)

    async def claimed(self) -> None:
        claim = await self.claims.claim(KEY, self.command.fingerprint())
        assert claim.status.value == "CLAIMED"

    async def parked(self) -> Retry:
        """The claim parked after an unknown outcome at T0; the clock at its settle time."""
        await self.claimed()
        retry = await self.reconciler.unknown(self.info, Attempt(calls=1), "ReadTimeout")
        assert isinstance(retry, Retry)
        self.clock.advance(retry.after_s)
        return retry

    async def again(self, attempt: Attempt) -> Publish | Retry | Resend:
        record = await self.store.get(KEY)
        assert record is not None
        step = await self.reconciler.reconcile(self.command, self.info, attempt, record)
        assert isinstance(step, Publish | Retry | Resend)
        return step


async def test_an_unknown_outcome_is_parked_until_the_settle_time() -> None:
    """With reconciliation on, an unknown outcome parks the claim RECONCILING and hands the
    record back for a lookup once the settle time has passed."""
    rig = Rig()
    await rig.claimed()
    retry = await rig.reconciler.unknown(rig.info, Attempt(calls=1), "ReadTimeout")
    assert isinstance(retry, Retry)
    assert (retry.kind, retry.after_s) == ("reconcile", SETTLE_S)
    assert retry.attempt.first_failure_at == T0
    stored = await rig.store.get(KEY)
    assert stored is not None
    assert (stored.state, stored.owner) == (State.RECONCILING, ME)
    assert stored.settle_until == T0 + timedelta(seconds=SETTLE_S)
    assert stored.lease_until == T0 + timedelta(seconds=SETTLE_S + LEASE_S)
    assert rig.history.accounts == []


@pytest.mark.parametrize(
    ("settings", "history"),
    [(ReconcileSettings(False, True, SETTLE_S, 2), True), (SETTINGS, False)],
    ids=["reconciliation-off", "no-history"],
)
async def test_without_a_lookup_an_unknown_outcome_gives_up_for_review(
    settings: ReconcileSettings, history: bool
) -> None:
    """No way to look it up: OUTCOME_UNKNOWN is stored at once, with a review copy."""
    rig = Rig(settings, history=history)
    await rig.claimed()
    decision = await rig.reconciler.unknown(rig.info, Attempt(calls=1), "ReadTimeout")
    assert isinstance(decision, Publish)
    assert isinstance(decision.outcome, Failed)
    assert decision.outcome.reason_code == "OUTCOME_UNKNOWN"
    assert decision.stored_key == KEY
    assert decision.dead_letter == DeadLetterRequest(
        "review", "OutcomeUnknown", "OUTCOME_UNKNOWN", "ReadTimeout", 1, T0, T0
    )
    stored = await rig.store.get(KEY)
    assert stored is not None
    assert (stored.state, stored.outcome) == (State.UNKNOWN, decision.outcome)


async def test_a_request_found_in_the_history_is_completed_from_its_entry() -> None:
    """Found after the settle time: COMPLETED with the history's points, stored; the lookup
    carried the command's correlation id."""
    rig = Rig()
    retry = await rig.parked()
    rig.history.then(HistoryFound([applied_entry()]))
    decision = await rig.again(retry.attempt)
    assert isinstance(decision, Publish)
    assert isinstance(decision.outcome, Completed)
    assert (decision.outcome.points_adjusted, decision.outcome.attempts) == (240, 1)
    assert rig.history.accounts == [ACCOUNT]
    assert rig.history.correlation_ids == ["corr-1"]
    stored = await rig.store.get(KEY)
    assert stored is not None
    assert stored.state is State.COMPLETED


async def test_a_request_proved_absent_is_resumed_for_the_processor_to_send() -> None:
    """Absent after the settle time: the claim is IN_FLIGHT again under a new lease, and the
    processor is told to send, its lease counted from the moment of the resume."""
    rig = Rig()
    retry = await rig.parked()
    rig.history.then(HistoryFound([]))
    rig.monotonic = 2000.0
    step = await rig.again(retry.attempt)
    assert step == Resend(retry.attempt, 2000.0)
    stored = await rig.store.get(KEY)
    assert stored is not None
    assert stored.state is State.IN_FLIGHT
    assert stored.lease_until == rig.clock() + timedelta(seconds=LEASE_S)


async def test_failing_lookups_are_counted_then_given_up() -> None:
    """A failed lookup parks the claim again and counts; at max_lookups it gives up."""
    rig = Rig()
    retry = await rig.parked()
    rig.history.then(HISTORY_DOWN, HISTORY_DOWN)
    first = await rig.again(retry.attempt)
    assert isinstance(first, Retry)
    assert (first.kind, first.attempt.lookups) == ("reconcile", 1)
    rig.clock.advance(first.after_s)
    last = await rig.again(first.attempt)
    assert isinstance(last, Publish)
    assert isinstance(last.outcome, Failed)
    assert last.outcome.reason_code == "OUTCOME_UNKNOWN"
    assert last.dead_letter is not None
    assert "history lookup failed (HTTP 503)" in last.dead_letter.detail
