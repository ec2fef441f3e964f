"""The processing step over fakes: decode, validate, deduplicate, call PAS, decide."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.app import command_decoder
from service.codec.avro import COMMAND, COMPLETED, FAILED, AvroCodec
from service.domain.command import CommandRules, account_ref, business_fingerprint, mask_account
from service.domain.outcome import ErrorDetail, event_id
from service.domain.ports import (
    PasApplied,
    PasNotSent,
    PasRefused,
    PasRequest,
    PasResult,
    PasUnknown,
)
from service.domain.processor import (
    InboundRecord,
    Processor,
    ProcessorConfig,
    Publish,
    Skip,
)
from service.idempotency.base import IdempotencyRecord, State
from service.idempotency.memory import MemoryStore

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
TOPIC = "points-adjustments.requested.v1"
ME = "worker-a"
OTHER = "worker-b"
LEASE_S = 60.0
ACCOUNT = "5123456789012345000"
KEY = "case-1234-credit"
CONFIG = ProcessorConfig(
    rules=CommandRules(1_000_000, frozenset({"GOODWILL", "CORRECTION"})),
    owner=ME,
    lease_s=LEASE_S,
    version="9.9.9-test",
    unavailable_attempts=3,
    unavailable_backoff_s=0.5,
    busy_poll_s=0.25,
)
APPLIED = PasApplied(points_adjusted=250, duration_s=0.02, pas_correlation_id="mc-1")
NOT_SENT = PasNotSent("ConnectError: connection refused", 0.001)
GATEWAY_401 = ErrorDetail("Gateway", "DECLINED", "Unauthorized - Access Not Granted")
PAS_400 = ErrorDetail("rewards-points-api", "INVALID_POINTS", "bad points", False, "pointsToAdjust")


def raw_command(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "idempotency_key": KEY,
        "bank_account_number": ACCOUNT,
        "points_to_adjust": 250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": datetime(2025, 3, 4, 5, 0, 0, tzinfo=UTC),
        "metadata": {"case": "1234"},
    }
    raw.update(overrides)
    return raw


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeSleep:
    """Records every pause instead of waiting; may run a hook at each pause."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.hook: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, seconds: float, /) -> None:
        self.pauses.append(seconds)
        if self.hook is not None:
            await self.hook()


class ScriptedPas:
    """A PasPort answering from a script, recording every request it gets."""

    def __init__(self, *results: PasResult) -> None:
        self.script = list(results)
        self.requests: list[PasRequest] = []
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    def then(self, *results: PasResult) -> None:
        self.script.extend(results)

    async def adjust(self, request: PasRequest) -> PasResult:
        self.requests.append(request)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        assert self.script, "PAS was called more often than the test scripted"
        return self.script.pop(0)


class Harness:
    """A Processor wired to fakes, and helpers to feed it records."""

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec
        self.store = MemoryStore()
        self.pas = ScriptedPas()
        self.clock = FakeClock(T0)
        self.sleep = FakeSleep()
        self.processor = Processor(
            decode=command_decoder(codec),
            store=self.store,
            pas=self.pas,
            config=CONFIG,
            clock=self.clock,
            sleep=self.sleep,
        )
        self.offset = 100

    def record(self, raw: dict[str, Any] | None = None, *, value: Any = ...) -> InboundRecord:
        self.offset += 1
        data = self.codec.encode(COMMAND, raw or raw_command()) if value is ... else value
        return InboundRecord(TOPIC, 3, self.offset, b"k", data, 1_700_000_000_000)

    async def publish(
        self, raw: dict[str, Any] | None = None, *, published: bool = True
    ) -> Publish:
        decision = await self.processor.handle(self.record(raw))
        assert isinstance(decision, Publish), decision
        if published:
            await self.processor.published(decision)
        return decision

    async def stored(self, key: str = KEY) -> IdempotencyRecord:
        record = await self.store.get(key)
        assert record is not None
        return record


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@pytest.fixture
def h(codec: AvroCodec) -> Harness:
    return Harness(codec)


def fits_schema(codec: AvroCodec, decision: Publish) -> dict[str, Any]:
    """The payload encodes with its outcome schema; return it decoded."""
    name = COMPLETED if decision.kind == "completed" else FAILED
    decoded_name, decoded = codec.decode(codec.encode(name, decision.payload))
    assert decoded_name == name
    return decoded


# -- the happy path and repeats -------------------------------------------------------------


async def test_valid_command_is_applied_once_and_completed(h: Harness) -> None:
    """A valid command calls PAS once with its five fields and yields a completed outcome."""
    h.pas.then(APPLIED)
    decision = await h.publish(published=False)
    assert h.pas.requests == [
        PasRequest(ACCOUNT, 250, "GOODWILL", "Late delivery", "agent-0042", "corr-1")
    ]
    assert decision.kind == "completed"
    assert decision.duplicate is False
    assert decision.reason_code is None
    assert decision.stored_key == KEY
    assert decision.record_key == account_ref(ACCOUNT)
    payload = decision.payload
    assert payload["points_requested"] == 250
    assert payload["points_adjusted"] == 250
    assert payload["attempts"] == 1
    assert payload["account_masked"] == mask_account(ACCOUNT) == "*" * 15 + "5000"
    assert payload["account_ref"] == account_ref(ACCOUNT)
    assert payload["pas_correlation_id"] == "mc-1"
    assert payload["event_id"] == event_id(KEY)
    assert payload["source"] == {"topic": TOPIC, "partition": 3, "offset": h.offset}
    assert payload["metadata"] == {"case": "1234"}
    assert payload["service_version"] == "9.9.9-test"
    assert payload["duplicate"] is False
    assert ACCOUNT not in str(payload)
    assert h.sleep.pauses == []
    fits_schema(h.codec, decision)
    record = await h.stored()
    assert (record.state, record.owner, record.attempts) == (State.COMPLETED, ME, 1)
    assert record.outcome == payload
    assert record.published is False
    await h.processor.published(decision)
    assert (await h.stored()).published is True


async def test_repeat_after_publish_is_a_duplicate_without_pas_call(h: Harness) -> None:
    """A repeat of a published command republishes the stored outcome as a duplicate."""
    h.pas.then(APPLIED)
    original = await h.publish()
    repeat = await h.publish(raw_command(correlation_id="corr-2"))
    assert len(h.pas.requests) == 1
    assert repeat.kind == "completed"
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "completed"
    assert repeat.payload["duplicate"] is True
    assert repeat.payload["event_id"] != original.payload["event_id"]
    assert repeat.payload["source"]["offset"] == h.offset
    assert repeat.payload["points_adjusted"] == original.payload["points_adjusted"]
    assert repeat.record_key == account_ref(ACCOUNT)
    fits_schema(h.codec, repeat)
    again = await h.publish()
    assert again.payload["event_id"] not in {
        original.payload["event_id"],
        repeat.payload["event_id"],
    }
    assert (await h.stored()).outcome == original.payload


async def test_repeat_before_publish_republishes_the_original(h: Harness) -> None:
    """A repeat arriving before the first outcome was acknowledged republishes it as is."""
    h.pas.then(APPLIED)
    original = await h.publish(published=False)
    repeat = await h.publish(published=False)
    assert len(h.pas.requests) == 1
    assert repeat.duplicate is False
    assert repeat.duplicate_kind is None
    assert repeat.payload == original.payload
    assert repeat.payload["event_id"] == original.payload["event_id"] == event_id(KEY)
    assert repeat.stored_key == KEY
    await h.processor.published(repeat)
    assert (await h.stored()).published is True


async def test_conflicting_repeat_is_refused_and_leaves_the_original(h: Harness) -> None:
    """Same key, different business fields: IDEMPOTENCY_CONFLICT, no PAS call, record intact."""
    h.pas.then(APPLIED)
    await h.publish()
    before = await h.stored()
    conflict = await h.publish(raw_command(points_to_adjust=9_999))
    assert len(h.pas.requests) == 1
    assert conflict.kind == "failed"
    assert conflict.reason_code == "IDEMPOTENCY_CONFLICT"
    assert conflict.payload["retryable"] is False
    assert conflict.stored_key is None
    assert conflict.duplicate_kind == "conflict"
    assert before.outcome is not None
    assert conflict.payload["event_id"] != before.outcome["event_id"]
    fits_schema(h.codec, conflict)
    assert await h.stored() == before


# -- invalid and undecodable records ---------------------------------------------------------


async def test_invalid_command_fails_validation_and_is_stored(h: Harness) -> None:
    """An invalid command is VALIDATION_FAILED with field errors, PAS is not called."""
    decision = await h.publish(raw_command(points_to_adjust=0, adjusted_by="a" * 65))
    assert h.pas.requests == []
    assert decision.kind == "failed"
    assert decision.reason_code == "VALIDATION_FAILED"
    assert decision.stored_key == KEY
    assert decision.payload["retryable"] is False
    assert decision.payload["attempts"] == 0
    assert {(e["field"], e["reason_code"]) for e in decision.payload["errors"]} == {
        ("points_to_adjust", "INVALID_POINTS"),
        ("adjusted_by", "INVALID_ADJUSTED_BY"),
    }
    assert all(e["source"] == "points-adjuster" for e in decision.payload["errors"])
    assert decision.payload["account_ref"] == account_ref(ACCOUNT)
    assert ACCOUNT not in str(decision.payload)
    fits_schema(h.codec, decision)
    assert (await h.stored()).state is State.FAILED
    repeat = await h.publish(raw_command(points_to_adjust=0, adjusted_by="a" * 65))
    assert h.pas.requests == []
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "failed"
    assert repeat.reason_code == "VALIDATION_FAILED"


async def test_invalid_account_is_masked_and_has_no_ref(h: Harness) -> None:
    """An invalid account number is masked in the outcome and gets no account_ref."""
    bad = "5123-4567-8901-2345"
    decision = await h.publish(raw_command(bank_account_number=bad))
    assert decision.payload["account_ref"] is None
    assert decision.record_key is None
    assert decision.payload["account_masked"] == mask_account(bad)
    assert bad not in str(decision.payload)
    fits_schema(h.codec, decision)


async def test_invalid_command_with_an_unusable_key_is_not_stored(h: Harness) -> None:
    """An invalid command whose idempotency key is empty fails without touching the store."""
    decision = await h.publish(raw_command(idempotency_key="", points_to_adjust=0))
    assert h.pas.requests == []
    assert decision.reason_code == "VALIDATION_FAILED"
    assert decision.stored_key is None
    assert "idempotency_key" in {e["field"] for e in decision.payload["errors"]}
    assert h.store.records == {}
    fits_schema(h.codec, decision)


async def test_key_with_a_space_is_refused_without_a_pas_call(h: Harness) -> None:
    """A command whose idempotency key contains a space is invalid: PAS is not called."""
    h.pas.then(APPLIED)
    decision = await h.publish(raw_command(idempotency_key="case 1234"))
    assert h.pas.requests == []
    assert decision.reason_code == "VALIDATION_FAILED"
    assert decision.stored_key is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "EMPTY_RECORD"),
        (b"", "EMPTY_RECORD"),
        (b'{"idempotency_key": "k"}', "NOT_SINGLE_OBJECT_ENCODED"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "UNKNOWN_SCHEMA"),
    ],
    ids=["none", "empty", "json", "unknown-schema"],
)
async def test_undecodable_record_is_skipped_with_reason(
    h: Harness, value: bytes | None, reason: str
) -> None:
    """Bytes that are not a command are skipped with the decoder's reason."""
    decision = await h.processor.handle(h.record(value=value))
    assert isinstance(decision, Skip)
    assert decision.reason == reason
    assert decision.detail
    assert h.pas.requests == []
    assert h.store.records == {}


async def test_outcome_event_on_the_command_topic_is_skipped(h: Harness) -> None:
    """A well-formed record of another schema is skipped as UNEXPECTED_SCHEMA."""
    h.pas.then(APPLIED)
    completed = await h.publish()
    stray = h.codec.encode(COMPLETED, completed.payload)
    decision = await h.processor.handle(h.record(value=stray))
    assert decision == Skip("UNEXPECTED_SCHEMA", f"a {COMPLETED} is not a command")


# -- PAS answers -----------------------------------------------------------------------------


async def test_not_sent_twice_then_applied_completes_after_backoff(h: Harness) -> None:
    """PAS unreachable twice, then applied: completed with 3 attempts after 0.5 s and 1 s."""
    h.pas.then(NOT_SENT, NOT_SENT, APPLIED)
    decision = await h.publish()
    assert decision.kind == "completed"
    assert decision.payload["attempts"] == 3
    assert h.sleep.pauses == [0.5, 1.0]
    assert len(h.pas.requests) == 3
    assert len(set(h.pas.requests)) == 1
    assert decision.payload["pas_duration_ms"] == 22
    assert (await h.stored()).attempts == 3


async def test_not_sent_every_time_is_unavailable_and_released(h: Harness) -> None:
    """PAS never reachable: PAS_UNAVAILABLE, retryable, the claim released for a later try."""
    h.pas.then(NOT_SENT, NOT_SENT, NOT_SENT)
    decision = await h.publish()
    assert decision.kind == "failed"
    assert decision.reason_code == "PAS_UNAVAILABLE"
    assert decision.payload["retryable"] is True
    assert decision.payload["attempts"] == 3
    assert decision.payload["http_status"] is None
    assert decision.stored_key is None
    assert h.sleep.pauses == [0.5, 1.0]
    assert await h.store.get(KEY) is None
    fits_schema(h.codec, decision)
    h.pas.then(APPLIED)
    later = await h.publish()
    assert len(h.pas.requests) == 4
    assert later.kind == "completed"
    assert later.payload["event_id"] != decision.payload["event_id"]


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "PAS_REJECTED"), (409, "PAS_REJECTED"), (404, "ACCOUNT_NOT_FOUND")]
)
async def test_refusal_is_stored_as_failed(h: Harness, status: int, reason: str) -> None:
    """A non-recoverable refusal is stored as a failure with PAS's status and errors."""
    h.pas.then(PasRefused(status, (PAS_400,), 0.01, recoverable=False))
    decision = await h.publish()
    assert len(h.pas.requests) == 1
    assert decision.reason_code == reason
    assert decision.payload["retryable"] is False
    assert decision.payload["http_status"] == status
    assert decision.payload["errors"] == [PAS_400.as_avro()]
    assert decision.stored_key == KEY
    assert h.sleep.pauses == []
    record = await h.stored()
    assert record.state is State.FAILED
    fits_schema(h.codec, decision)
    repeat = await h.publish()
    assert len(h.pas.requests) == 1
    assert repeat.duplicate is True
    assert repeat.reason_code == reason


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorized_is_retryable_and_released(h: Harness, status: int) -> None:
    """A 401/403 from the gateway is UNAUTHORIZED, retryable, not retried, and released."""
    h.pas.then(PasRefused(status, (GATEWAY_401,), 0.01, recoverable=False))
    decision = await h.publish()
    assert len(h.pas.requests) == 1
    assert decision.reason_code == "UNAUTHORIZED"
    assert decision.payload["retryable"] is True
    assert decision.payload["http_status"] == status
    assert decision.stored_key is None
    assert await h.store.get(KEY) is None
    h.pas.then(APPLIED)
    assert (await h.publish()).kind == "completed"
    assert len(h.pas.requests) == 2


async def test_recoverable_refusal_is_retried(h: Harness) -> None:
    """A 429 (recoverable) is retried after the backoff and may then succeed."""
    h.pas.then(PasRefused(429, (), 0.01, recoverable=True), APPLIED)
    decision = await h.publish()
    assert decision.kind == "completed"
    assert decision.payload["attempts"] == 2
    assert h.sleep.pauses == [0.5]


async def test_recoverable_refusal_every_time_is_unavailable(h: Harness) -> None:
    """Recoverable refusals until the attempts run out give a retryable PAS_UNAVAILABLE."""
    busy = PasRefused(503, (), 0.01, recoverable=True)
    h.pas.then(busy, busy, busy)
    decision = await h.publish()
    assert decision.reason_code == "PAS_UNAVAILABLE"
    assert decision.payload["retryable"] is True
    assert decision.payload["http_status"] == 503
    assert decision.payload["attempts"] == 3
    assert await h.store.get(KEY) is None


async def test_unknown_outcome_is_stored_and_never_retried(h: Harness) -> None:
    """PasUnknown is OUTCOME_UNKNOWN: not retried, stored, and a repeat is a duplicate."""
    h.pas.then(PasUnknown("ReadTimeout", None, (), 10.0))
    decision = await h.publish()
    assert len(h.pas.requests) == 1
    assert h.sleep.pauses == []
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert decision.payload["retryable"] is False
    assert decision.payload["attempts"] == 1
    assert decision.stored_key == KEY
    assert (await h.stored()).state is State.UNKNOWN
    fits_schema(h.codec, decision)
    repeat = await h.publish()
    assert len(h.pas.requests) == 1
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "unknown"
    assert repeat.reason_code == "OUTCOME_UNKNOWN"


# -- concurrent and interrupted claims ------------------------------------------------------


async def claim_as_other(h: Harness, raw: dict[str, Any], now: datetime) -> None:
    await h.store.claim(
        raw["idempotency_key"], business_fingerprint(raw), owner=OTHER, now=now, lease_s=LEASE_S
    )


async def test_expired_claim_of_another_owner_is_outcome_unknown(h: Harness) -> None:
    """An IN_FLIGHT claim whose lease ran out is taken over as OUTCOME_UNKNOWN, PAS not called."""
    raw = raw_command()
    await claim_as_other(h, raw, T0 - timedelta(seconds=LEASE_S + 1))
    decision = await h.publish(raw)
    assert h.pas.requests == []
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert decision.payload["retryable"] is False
    assert decision.stored_key == KEY
    record = await h.stored()
    assert (record.state, record.owner) == (State.UNKNOWN, ME)


async def test_busy_claim_waits_for_the_other_owner_outcome(h: Harness) -> None:
    """A live claim of another owner is waited on; its stored outcome is returned, no PAS call."""
    raw = raw_command()
    await claim_as_other(h, raw, T0)
    theirs = {"event_id": event_id(KEY), "account_ref": account_ref(ACCOUNT), "points_adjusted": 7}

    async def other_owner_finishes() -> None:
        h.clock.advance(1)
        await h.store.finish(
            KEY,
            owner=OTHER,
            state=State.COMPLETED,
            outcome_kind="completed",
            outcome=theirs,
            attempts=1,
            now=h.clock(),
        )
        await h.store.mark_published(KEY)

    h.sleep.hook = other_owner_finishes
    decision = await h.publish(raw)
    assert h.pas.requests == []
    assert h.sleep.pauses == [0.25]
    assert decision.kind == "completed"
    assert decision.duplicate is True
    assert decision.duplicate_kind == "completed"
    assert decision.payload["points_adjusted"] == 7
    assert decision.payload["event_id"] != event_id(KEY)
    assert (await h.stored()).owner == OTHER


async def test_busy_claim_that_is_released_is_then_claimed(h: Harness) -> None:
    """When the other owner releases its claim while we wait, we claim it and call PAS."""
    raw = raw_command()
    await claim_as_other(h, raw, T0)

    async def other_owner_releases() -> None:
        await h.store.release(KEY, owner=OTHER)

    h.sleep.hook = other_owner_releases
    h.pas.then(APPLIED)
    decision = await h.publish(raw)
    assert len(h.pas.requests) == 1
    assert decision.kind == "completed"
    assert decision.duplicate is False


async def test_invalid_repeat_while_busy_does_not_crash(h: Harness) -> None:
    """An invalid repeat of a command another owner is applying waits like a valid one.

    Its business fields equal the in-flight command's (only correlation_id is bad), so the
    claim is BUSY; the processor must not treat that as a finished record.
    """
    valid = raw_command()
    await claim_as_other(h, valid, T0)
    theirs = {"event_id": event_id(KEY), "account_ref": account_ref(ACCOUNT)}

    async def other_owner_finishes() -> None:
        await h.store.finish(
            KEY,
            owner=OTHER,
            state=State.COMPLETED,
            outcome_kind="completed",
            outcome=theirs,
            attempts=1,
            now=T0,
        )
        await h.store.mark_published(KEY)

    h.sleep.hook = other_owner_finishes
    decision = await h.processor.handle(h.record(raw_command(correlation_id="")))
    assert isinstance(decision, Publish)
    assert h.pas.requests == []
    assert decision.kind == "completed"
    assert decision.duplicate is True


async def test_invalid_repeat_taking_over_an_expired_claim_is_outcome_unknown(
    h: Harness,
) -> None:
    """Taking over an abandoned claim never records 'not applied': the result is unknown.

    The earlier owner was applying the valid command with the same business fields and may
    have reached PAS; an invalid repeat that takes the claim over must not store FAILED
    VALIDATION_FAILED, which would tell every later repeat that nothing was applied.
    """
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    decision = await h.publish(raw_command(correlation_id=""))
    assert h.pas.requests == []
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert (await h.stored()).state is State.UNKNOWN


async def test_same_command_twice_at_once_in_one_worker_calls_pas_once(h: Harness) -> None:
    """Two concurrent deliveries of one command in one worker: one PAS call, one outcome.

    This happens when a producer does not key by account and the copies land on two
    partitions, which the runner processes concurrently under the same owner id.
    """
    h.pas.gate = asyncio.Event()
    h.pas.then(APPLIED)
    first = asyncio.create_task(h.processor.handle(h.record()))
    await h.pas.called.wait()

    async def let_the_first_finish() -> None:
        assert h.pas.gate is not None
        h.pas.gate.set()
        await first

    h.sleep.hook = let_the_first_finish
    second = await h.processor.handle(h.record())
    h.pas.gate.set()
    first_decision = await first
    assert len(h.pas.requests) == 1
    assert isinstance(first_decision, Publish)
    assert isinstance(second, Publish)
    assert first_decision.kind == "completed"
    assert second.kind == "completed", second.reason_code
    assert second.payload["event_id"] == first_decision.payload["event_id"]
    assert (await h.stored()).state is State.COMPLETED
