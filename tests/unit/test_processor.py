"""The processing step over fakes: decode, validate, deduplicate, call PAS, decide what follows."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from service.app import command_decoder
from service.codec.avro import COMMAND, COMPLETED, FAILED, AvroCodec
from service.codec.outcome import outcome_record
from service.domain.backoff import BackoffPolicy
from service.domain.classification import Observation, Transport
from service.domain.command import (
    CommandRules,
    account_ref,
    business_fingerprint,
    identify,
    mask_account,
)
from service.domain.decisions import (
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    Decision,
    InboundRecord,
    Publish,
    Retry,
)
from service.domain.inbound import Decoded, DecodedCommand, Undecodable, Unresolved
from service.domain.outcome import (
    CommandInfo,
    Completed,
    ErrorDetail,
    Failed,
    SourceRef,
    event_id,
)
from service.domain.ports import PasReply, PasRequest
from service.domain.processor import Processor, ProcessorConfig
from service.domain.reconcile import (
    HistoryEntry,
    HistoryFailed,
    HistoryFound,
    reason_with_reference,
    reference_for,
)
from service.domain.store import IdempotencyRecord, State
from service.idempotency.memory import MemoryStore
from service.registry.errors import RegistryUnavailable
from tests.fakes import FakeHistory, FakeWallClock, ScriptedPas

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
TOPIC = "points-adjustments.requested.v1"
ME = "worker-a"
OTHER = "worker-b"
LEASE_S = 60.0
SETTLE_S = 30.0
TTL_S = 3600.0
ACCOUNT = "5123456789012345000"
KEY = "case-1234-credit"
REF = reference_for(KEY)
SENT_REASON = reason_with_reference("Late delivery", REF)
CONFIG = ProcessorConfig(
    rules=CommandRules(1_000_000, frozenset({"GOODWILL", "CORRECTION"})),
    owner=ME,
    lease_s=LEASE_S,
    version="9.9.9-test",
    backoff=BackoffPolicy(initial_s=0.5, max_s=8.0, jitter=False),
    max_attempts=3,
    command_ttl_s=TTL_S,
    reconcile=True,
    reference_in_reason=True,
    settle_s=SETTLE_S,
    max_lookups=3,
    busy_poll_s=0.25,
)

APPLIED = PasReply(Observation(status=200), 0.022, points_adjusted=250, pas_correlation_id="mc-1")
CONNECT_FAILED = PasReply(
    Observation(transport=Transport.CONNECT), 0.001, problem="ConnectError: connection refused"
)
READ_TIMEOUT = PasReply(
    Observation(transport=Transport.READ_TIMEOUT), 10.0, problem="ReadTimeout: timed out"
)
CIRCUIT_OPEN = PasReply(
    Observation(transport=Transport.CIRCUIT_OPEN),
    0.0,
    retry_after_s=2.0,
    problem="circuit breaker open: PAS is failing, nothing was sent",
)
GATEWAY_401 = ErrorDetail("Gateway", "DECLINED", "Unauthorized - Access Not Granted")
PAS_400 = ErrorDetail("rewards-points-api", "INVALID_POINTS", "bad points", False, "pointsToAdjust")


def answer(
    status: int,
    *errors: ErrorDetail,
    recoverable: bool = False,
    retry_after_s: float | None = None,
) -> PasReply:
    codes = ",".join(error.reason_code for error in errors) or "no error envelope"
    return PasReply(
        Observation(status=status, recoverable=recoverable),
        0.01,
        errors=errors,
        retry_after_s=retry_after_s,
        pas_correlation_id="mc-err",
        problem=f"HTTP {status} {codes}",
    )


def history_entry(reason: str, points: int = 240, adjustment_id: str = "adj-9") -> HistoryEntry:
    return HistoryEntry(adjustment_id, points, reason, "2025-03-04T05:06:08.000Z")


APPLIED_IN_HISTORY = HistoryFound(
    [history_entry("Welcome bonus", 10, "adj-1"), history_entry(SENT_REASON, 240, "adj-2")]
)
NOT_IN_HISTORY = HistoryFound([history_entry("Welcome bonus", 10, "adj-1")])
HISTORY_DOWN = HistoryFailed("HTTP 503 from the history endpoint", 503)


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


class Harness:
    """A Processor wired to fakes, and helpers to feed it records."""

    def __init__(self, codec: AvroCodec, *, with_history: bool = True, **config: Any) -> None:
        self.codec = codec
        self.store = MemoryStore()
        self.pas = ScriptedPas()
        self.history = FakeHistory()
        self.clock = FakeWallClock(T0)
        self.processor = Processor(
            decode=command_decoder(codec),
            store=self.store,
            pas=self.pas,
            history=self.history if with_history else None,
            config=replace(CONFIG, **config),
            clock=self.clock,
        )
        self.offset = 100

    def record(self, raw: dict[str, Any] | None = None, *, value: Any = ...) -> InboundRecord:
        self.offset += 1
        data = self.codec.encode(COMMAND, raw or raw_command()) if value is ... else value
        return InboundRecord(TOPIC, 3, self.offset, b"k", data, 1_700_000_000_000)

    async def handle(
        self, record: InboundRecord | None = None, attempt: Attempt | None = None
    ) -> Decision:
        return await self.processor.handle(record or self.record(), attempt)

    async def retry(
        self, record: InboundRecord | None = None, attempt: Attempt | None = None
    ) -> Retry:
        decision = await self.handle(record, attempt)
        assert isinstance(decision, Retry), decision
        return decision

    async def publish(
        self,
        raw: dict[str, Any] | None = None,
        *,
        record: InboundRecord | None = None,
        attempt: Attempt | None = None,
        published: bool = True,
    ) -> Publish:
        decision = await self.processor.handle(record or self.record(raw), attempt)
        assert isinstance(decision, Publish), decision
        if published:
            await self.processor.published(decision)
        return decision

    async def drive(
        self, record: InboundRecord, attempt: Attempt | None = None, *, max_handles: int = 10
    ) -> tuple[Decision, list[Retry]]:
        """Handle ``record`` as the runner does (waiting each Retry out) until it is decided."""
        retries: list[Retry] = []
        for _ in range(max_handles):
            decision = await self.processor.handle(record, attempt)
            if not isinstance(decision, Retry):
                return decision, retries
            retries.append(decision)
            attempt = decision.attempt
            self.clock.advance(decision.after_s)
        raise AssertionError(f"still not decided after {max_handles} handles: {retries[-1]}")

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


def event_of(decision: Publish) -> dict[str, Any]:
    """The decision's outcome event, as the publisher makes it before encoding."""
    return outcome_record(
        decision.outcome,
        event_id=decision.event_id,
        source=decision.source,
        duplicate=decision.duplicate,
    )


def fits_schema(codec: AvroCodec, decision: Publish) -> dict[str, Any]:
    """The outcome event encodes with its outcome schema; return it decoded."""
    name = COMPLETED if decision.kind == "completed" else FAILED
    decoded_name, decoded = codec.decode(codec.encode(name, event_of(decision)))
    assert decoded_name == name
    return decoded


def completed_of(decision: Decision) -> Completed:
    """The Completed outcome a decision publishes."""
    assert isinstance(decision, Publish), decision
    assert isinstance(decision.outcome, Completed), decision.outcome
    return decision.outcome


def failed_of(decision: Decision) -> Failed:
    """The Failed outcome a decision publishes."""
    assert isinstance(decision, Publish), decision
    assert isinstance(decision.outcome, Failed), decision.outcome
    return decision.outcome


def fingerprint(raw: dict[str, Any]) -> str:
    """The business fingerprint of the command ``raw`` decodes into."""
    return business_fingerprint(DecodedCommand(**raw))


def completed_elsewhere(key: str, *, points_adjusted: int = 250) -> Completed:
    """A Completed outcome as another worker stored it (its own record and version)."""
    return Completed(
        info=CommandInfo(
            idempotency_key=key,
            correlation_id="corr-1",
            requested_by="crm",
            account_ref=account_ref(ACCOUNT),
            account_masked=mask_account(ACCOUNT),
            command_occurred_at=T0,
            received_at=T0,
            source=SourceRef(TOPIC, 0, 1),
        ),
        adjustment_type_code="GOODWILL",
        points_requested=250,
        points_adjusted=points_adjusted,
        attempts=1,
        completed_at=T0,
        pas_duration_ms=5,
        pas_correlation_id="mc-elsewhere",
        service_version=OTHER,
    )


async def claim_as_other(h: Harness, raw: dict[str, Any], now: datetime) -> None:
    await h.store.claim(
        raw["idempotency_key"], fingerprint(raw), owner=OTHER, now=now, lease_s=LEASE_S
    )


# -- applied, and repeats --------------------------------------------------------------------


async def test_valid_command_is_applied_once_and_completed(h: Harness) -> None:
    """A valid command calls PAS once (reason + reference) and its Completed outcome is stored."""
    h.pas.then(APPLIED)
    decision = await h.publish(published=False)
    assert h.pas.requests == [
        PasRequest(ACCOUNT, 250, "GOODWILL", f"Late delivery {REF}", "agent-0042", "corr-1")
    ]
    assert decision.kind == "completed"
    assert decision.duplicate is False
    assert decision.reason_code is None
    assert decision.stored_key == KEY
    assert decision.record_key == account_ref(ACCOUNT)
    assert decision.dead_letter is None
    outcome = completed_of(decision)
    assert outcome.points_requested == 250
    assert outcome.points_adjusted == 250
    assert outcome.attempts == 1
    assert outcome.pas_duration_ms == 22
    assert outcome.pas_correlation_id == "mc-1"
    assert outcome.info.account_masked == mask_account(ACCOUNT) == "*" * 15 + "5000"
    assert outcome.info.account_ref == account_ref(ACCOUNT)
    assert decision.event_id == event_id(KEY)
    assert decision.source == outcome.info.source == SourceRef(TOPIC, 3, h.offset)
    assert outcome.info.metadata == {"case": "1234"}
    assert outcome.service_version == "9.9.9-test"
    assert outcome.info.received_at == outcome.completed_at == T0
    event = fits_schema(h.codec, decision)
    assert event["event_id"] == event_id(KEY)
    assert event["source"] == {"topic": TOPIC, "partition": 3, "offset": h.offset}
    assert event["received_at"] == event["completed_at"] == T0
    assert event["duplicate"] is False
    assert ACCOUNT not in str(event)
    record = await h.stored()
    assert (record.state, record.owner, record.attempts) == (State.COMPLETED, ME, 1)
    assert record.outcome == outcome
    assert record.published is False
    await h.processor.published(decision)
    assert (await h.stored()).published is True
    assert h.history.accounts == []


async def test_the_reference_is_left_out_when_reference_in_reason_is_off(codec: AvroCodec) -> None:
    """With reference_in_reason off, adjustmentReason is sent exactly as the command gave it."""
    h = Harness(codec, reference_in_reason=False)
    h.pas.then(APPLIED)
    await h.publish()
    (sent,) = h.pas.requests
    assert sent.adjustment_reason == "Late delivery"


async def test_a_reason_at_the_limit_is_cut_to_make_room_for_the_reference(h: Harness) -> None:
    """A 256-character reason is shortened so reason + reference still fits 256 characters."""
    h.pas.then(APPLIED)
    await h.publish(raw_command(adjustment_reason="r" * 256))
    (sent,) = h.pas.requests
    assert len(sent.adjustment_reason) == 256
    assert sent.adjustment_reason.endswith(" " + REF)


async def test_repeat_after_publish_is_a_duplicate_without_pas_call(h: Harness) -> None:
    """A repeat of a published command republishes the stored outcome as a duplicate."""
    h.pas.then(APPLIED)
    original = await h.publish()
    repeat = await h.publish(raw_command(correlation_id="corr-2"))
    assert len(h.pas.requests) == 1
    assert repeat.kind == "completed"
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "completed"
    assert repeat.event_id == event_id(KEY, SourceRef(TOPIC, 3, h.offset))
    assert repeat.event_id != original.event_id
    assert repeat.source.offset == h.offset
    assert repeat.outcome == original.outcome
    assert repeat.record_key == account_ref(ACCOUNT)
    event = fits_schema(h.codec, repeat)
    assert event["duplicate"] is True
    assert event["event_id"] == repeat.event_id
    assert event["source"]["offset"] == h.offset
    assert event["correlation_id"] == "corr-1"  # the stored outcome's, not the repeat's
    await h.processor.published(repeat)
    assert (await h.stored()).outcome == original.outcome


async def test_repeat_before_publish_republishes_the_original(h: Harness) -> None:
    """A repeat arriving before the first outcome was acknowledged (the process that decided
    it crashed before publishing) republishes it as is."""
    h.pas.then(APPLIED)
    original = await h.publish(published=False)
    h.processor.abandon(original)  # the process that decided it is gone
    repeat = await h.publish(published=False)
    assert len(h.pas.requests) == 1
    assert repeat.duplicate is False
    assert repeat.duplicate_kind is None
    assert repeat.outcome == original.outcome
    assert repeat.event_id == original.event_id == event_id(KEY)
    assert repeat.source == original.source
    assert event_of(repeat) == event_of(original)
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
    assert failed_of(conflict).retryable is False
    assert conflict.stored_key is None
    assert conflict.duplicate_kind == "conflict"
    assert conflict.dead_letter is None
    assert conflict.event_id == event_id(KEY, SourceRef(TOPIC, 3, h.offset))
    fits_schema(h.codec, conflict)
    assert await h.stored() == before


# -- invalid and undecodable records ---------------------------------------------------------


async def test_invalid_command_fails_validation_and_is_stored(h: Harness) -> None:
    """An invalid command is a stored VALIDATION_FAILED with field errors; PAS is not called."""
    decision = await h.publish(raw_command(points_to_adjust=0, adjusted_by="a" * 65))
    assert h.pas.requests == []
    assert decision.kind == "failed"
    assert decision.reason_code == "VALIDATION_FAILED"
    assert decision.stored_key == KEY
    outcome = failed_of(decision)
    assert outcome.retryable is False
    assert outcome.attempts == 0
    assert {(e.field, e.reason_code) for e in outcome.errors} == {
        ("points_to_adjust", "INVALID_POINTS"),
        ("adjusted_by", "INVALID_ADJUSTED_BY"),
    }
    assert all(e.source == "points-adjuster" for e in outcome.errors)
    assert outcome.info.account_ref == account_ref(ACCOUNT)
    assert ACCOUNT not in str(fits_schema(h.codec, decision))
    assert (await h.stored()).state is State.FAILED


async def test_repeat_of_an_invalid_command_is_a_duplicate(h: Harness) -> None:
    """A repeat of a stored invalid command republishes VALIDATION_FAILED as a duplicate."""
    bad = raw_command(points_to_adjust=0)
    await h.publish(bad)
    repeat = await h.publish(bad)
    assert h.pas.requests == []
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "failed"
    assert repeat.reason_code == "VALIDATION_FAILED"


async def test_invalid_account_is_masked_and_has_no_ref(h: Harness) -> None:
    """An invalid account number is masked in the outcome and gets no account_ref."""
    bad = "5123-4567-8901-2345"
    decision = await h.publish(raw_command(bank_account_number=bad))
    assert decision.outcome.info.account_ref is None
    assert decision.record_key is None
    assert decision.outcome.info.account_masked == mask_account(bad)
    assert bad not in str(fits_schema(h.codec, decision))


@pytest.mark.parametrize("key", ["", "case 1234", "k" * 129, "caf\u00e9"])
async def test_invalid_command_with_an_unusable_key_is_not_stored(h: Harness, key: str) -> None:
    """An invalid command whose idempotency key is unusable fails without touching the store."""
    h.pas.then(APPLIED)
    decision = await h.publish(raw_command(idempotency_key=key))
    assert h.pas.requests == []
    assert decision.reason_code == "VALIDATION_FAILED"
    assert decision.stored_key is None
    assert "idempotency_key" in {e.field for e in failed_of(decision).errors}
    copied = identify(DecodedCommand(**raw_command(idempotency_key=key)))[0]  # cut when too long
    assert decision.event_id == event_id(copied, SourceRef(TOPIC, 3, h.offset))
    assert h.store.records == {}
    fits_schema(h.codec, decision)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "EMPTY_RECORD"),
        (b"", "EMPTY_RECORD"),
        (b'{"idempotency_key": "k"}', "UNKNOWN_FRAMING"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "UNKNOWN_SCHEMA"),
    ],
    ids=["none", "empty", "json", "unknown-schema"],
)
async def test_undecodable_record_goes_to_the_dead_letter_topic_only(
    h: Harness, value: bytes | None, reason: str
) -> None:
    """Bytes that are not a command are DeadLetterOnly to the dlt with the decoder's reason."""
    decision = await h.handle(h.record(value=value))
    assert isinstance(decision, DeadLetterOnly)
    letter = decision.dead_letter
    assert (letter.target, letter.error_class, letter.reason) == (
        "dlt",
        "UndecodableRecordError",
        reason,
    )
    assert letter.detail
    assert (letter.attempts, letter.first_failure_at, letter.last_failure_at) == (0, T0, T0)
    assert h.pas.requests == []
    assert h.store.records == {}


async def test_outcome_event_on_the_command_topic_is_dead_lettered(h: Harness) -> None:
    """A well-formed record of another schema is dead-lettered as UNEXPECTED_SCHEMA."""
    h.pas.then(APPLIED)
    completed = await h.publish()
    stray = h.codec.encode(COMPLETED, event_of(completed))
    decision = await h.handle(h.record(value=stray))
    assert decision == DeadLetterOnly(
        DeadLetterRequest(
            "dlt",
            "UndecodableRecordError",
            "UNEXPECTED_SCHEMA",
            f"a {COMPLETED} (fingerprint {h.codec.entry(COMPLETED).fingerprint_bytes.hex()})"
            f" is not a command ({COMMAND})",
            0,
            T0,
            T0,
        )
    )


# -- ordering ---------------------------------------------------------------------------------


async def test_ordering_key_is_the_account_or_none(h: Harness) -> None:
    """ordering_key is the account of a readable record (valid or not), None for unreadable."""
    assert h.processor.ordering_key(h.record()) == ACCOUNT
    assert h.processor.ordering_key(h.record(raw_command(points_to_adjust=0))) == ACCOUNT
    assert h.processor.ordering_key(h.record(value=b"")) is None
    assert h.processor.ordering_key(h.record(value=b"junk")) is None
    assert h.pas.requests == []
    assert h.store.records == {}


async def test_a_v2_channel_is_on_the_records_log_lines_and_never_sent_to_pas(
    h: Harness,
) -> None:
    """A command with a channel (schema v2): PAS gets exactly the fields it got before, and
    the channel is bound to every log line of the record's handling."""
    h.pas.then(APPLIED)

    async def handled() -> dict[str, Any]:
        await h.publish(raw_command(channel="call-centre"), published=False)
        return structlog.contextvars.get_contextvars()

    bound = await asyncio.create_task(handled())  # a task: its context is its own
    assert bound.get("channel") == "call-centre"
    assert h.pas.requests == [
        PasRequest(ACCOUNT, 250, "GOODWILL", f"Late delivery {REF}", "agent-0042", "corr-1")
    ]


async def test_an_unresolved_record_is_prepared_then_decoded_and_a_failing_fetch_raises(
    codec: AvroCodec,
) -> None:
    """A value whose writer schema is still to be fetched (Unresolved): handle calls prepare
    first; while prepare raises (the registry is down) the error goes out of handle, for the
    runner to hold the record back (never a dead letter); once it passes, the command is
    decided as any other."""
    h = Harness(codec)
    data = codec.encode(COMMAND, raw_command())
    fetched: list[bytes | None] = []
    down = [True]

    def decode(value: bytes | None) -> Decoded:
        return command_decoder(codec)(value) if fetched and not down[0] else Unresolved("id 7")

    async def prepare(value: bytes | None) -> None:
        if down[0]:
            raise RegistryUnavailable("GET /schemas/ids/7: connection refused")
        fetched.append(value)

    h.processor = Processor(
        decode=decode,
        prepare=prepare,
        store=h.store,
        pas=h.pas,
        history=h.history,
        config=CONFIG,
        clock=h.clock,
    )
    h.pas.then(APPLIED)
    record = h.record(value=data)
    with pytest.raises(RegistryUnavailable):
        await h.handle(record)
    assert h.pas.requests == []
    down[0] = False
    decision = await h.handle(record)
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert fetched == [data]


async def test_a_record_read_once_is_not_decoded_again(codec: AvroCodec) -> None:
    """payload_of() decodes a record once; ordering_key and handle reuse that value."""
    decoded: list[bytes | None] = []
    inner = command_decoder(codec)

    def counting(value: bytes | None) -> Decoded:
        decoded.append(value)
        return inner(value)

    h = Harness(codec)
    h.processor._decode = counting
    fetched = h.record()
    record = replace(fetched, payload=h.processor.payload_of(fetched.value))
    assert isinstance(record.payload, DecodedCommand)
    assert record.payload.bank_account_number == ACCOUNT
    assert h.processor.ordering_key(record) == ACCOUNT
    h.pas.then(APPLIED)
    decision = await h.processor.handle(record)
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert len(decoded) == 1
    unreadable = h.record(value=b"junk")
    undecodable = h.processor.payload_of(unreadable.value)
    assert undecodable == Undecodable(
        "UNKNOWN_FRAMING",
        "expected Avro single-object encoding (C3 01 + an 8-byte schema fingerprint) or the"
        " Confluent wire format (00 + a 4-byte schema id); the value starts with 6a 75 6e 6b",
    )
    unreadable = replace(unreadable, payload=undecodable)
    assert h.processor.ordering_key(unreadable) is None
    assert isinstance(await h.processor.handle(unreadable), DeadLetterOnly)
    assert len(decoded) == 2  # the unreadable value was read once too


# -- RETRY: nothing was applied ---------------------------------------------------------------


async def test_connect_failure_releases_the_claim_and_retries_after_the_backoff(
    h: Harness,
) -> None:
    """PAS unreachable: the claim is released and Retry(backoff) asks for the first pause."""
    h.pas.then(CONNECT_FAILED)
    retry = await h.retry()
    assert retry.kind == "backoff"
    assert retry.after_s == 0.5
    assert retry.reason == CONNECT_FAILED.problem
    tried = retry.attempt
    assert (tried.calls, tried.lookups, tried.last_call_at) == (1, 0, T0)
    assert (tried.first_failure_at, tried.last_failure_at) == (T0, T0)
    assert (await h.stored()).state is State.RELEASED  # the key keeps its fingerprint
    assert len(h.pas.requests) == 1


async def test_handling_again_with_the_returned_attempt_calls_pas_again(h: Harness) -> None:
    """The record handed back with its attempt is claimed and sent again; attempts add up."""
    h.pas.then(CONNECT_FAILED, APPLIED)
    record = h.record()
    retry = await h.retry(record)
    h.clock.advance(retry.after_s)
    decision = await h.publish(record=record, attempt=retry.attempt)
    assert len(h.pas.requests) == 2
    assert h.pas.requests[0] == h.pas.requests[1]
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 2
    assert (await h.stored()).attempts == 2


async def test_backoff_grows_until_the_attempts_run_out(h: Harness) -> None:
    """Each RETRY doubles the pause; after max_attempts calls it is PAS_UNAVAILABLE + dlt."""
    h.pas.then(CONNECT_FAILED, CONNECT_FAILED, CONNECT_FAILED)
    record = h.record()
    decision, retries = await h.drive(record)
    assert [r.after_s for r in retries] == [0.5, 1.0]
    assert [r.attempt.calls for r in retries] == [1, 2]
    assert {r.kind for r in retries} == {"backoff"}
    assert isinstance(decision, Publish)
    assert len(h.pas.requests) == 3
    assert decision.kind == "failed"
    assert decision.reason_code == "PAS_UNAVAILABLE"
    assert failed_of(decision).retryable is True
    assert decision.outcome.attempts == 3
    assert failed_of(decision).http_status is None
    assert decision.stored_key is None
    assert decision.event_id == event_id(KEY, record.source)
    assert decision.dead_letter == DeadLetterRequest(
        "dlt",
        "RetriesExhausted",
        "PAS_UNAVAILABLE",
        CONNECT_FAILED.problem,
        3,
        T0,
        T0 + timedelta(seconds=1.5),
    )
    assert (await h.stored()).state is State.RELEASED  # the key keeps its fingerprint
    fits_schema(h.codec, decision)


async def test_the_first_command_written_under_a_key_wins_over_a_later_one(h: Harness) -> None:
    """A command dead-lettered after its retries keeps its key: a later command with other
    business fields under that key is refused as IDEMPOTENCY_CONFLICT without a call, and the
    dead-lettered original, replayed, is applied."""
    h.pas.then(CONNECT_FAILED, CONNECT_FAILED, CONNECT_FAILED, APPLIED)
    original = raw_command()
    dead, _ = await h.drive(h.record(original))
    assert isinstance(dead, Publish)
    assert dead.dead_letter is not None
    later = raw_command(points_to_adjust=999)
    refused, _ = await h.drive(h.record(later))
    assert isinstance(refused, Publish)
    assert refused.reason_code == "IDEMPOTENCY_CONFLICT"
    assert len(h.pas.requests) == 3
    replayed, _ = await h.drive(h.record(original))
    assert isinstance(replayed, Publish)
    assert replayed.kind == "completed"
    assert len(h.pas.requests) == 4
    stored = await h.stored()
    assert (stored.state, stored.fingerprint) == (State.COMPLETED, fingerprint(original))


async def test_received_at_is_when_the_command_was_first_taken(h: Harness) -> None:
    """After retries, received_at is still the first handling (the schema: 'first took')."""
    h.pas.then(CONNECT_FAILED, CONNECT_FAILED, APPLIED)
    decision, retries = await h.drive(h.record())
    assert len(retries) == 2
    assert isinstance(decision, Publish)
    assert completed_of(decision).completed_at == T0 + timedelta(seconds=1.5)
    assert decision.outcome.info.received_at == T0


async def test_a_command_whose_retries_ran_out_may_be_sent_again_later(h: Harness) -> None:
    """After RetriesExhausted nothing is stored, so a replay of the command calls PAS afresh."""
    h.pas.then(CONNECT_FAILED, CONNECT_FAILED, CONNECT_FAILED, APPLIED)
    exhausted, _ = await h.drive(h.record())
    assert isinstance(exhausted, Publish)
    later = await h.publish()
    assert len(h.pas.requests) == 4
    assert later.kind == "completed"
    assert later.outcome.attempts == 1
    assert later.event_id != exhausted.event_id


@pytest.mark.parametrize(
    "reply",
    [
        answer(429),
        answer(409, PAS_400, recoverable=True),
        answer(503, recoverable=True),
    ],
    ids=["429", "4xx-recoverable", "5xx-recoverable"],
)
async def test_refusals_that_applied_nothing_are_retried(h: Harness, reply: PasReply) -> None:
    """429 and Recoverable refusals are released and retried, then may succeed."""
    h.pas.then(reply, APPLIED)
    decision, retries = await h.drive(h.record())
    assert [r.kind for r in retries] == ["backoff"]
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 2


async def test_recoverable_refusals_until_the_end_carry_the_status(h: Harness) -> None:
    """Recoverable 503s until the attempts run out: PAS_UNAVAILABLE with http_status and errors."""
    busy = answer(
        503, ErrorDetail("Gateway", "SERVICE_UNAVAILABLE", "busy", True), recoverable=True
    )
    h.pas.then(busy, busy, busy)
    decision, _ = await h.drive(h.record())
    assert isinstance(decision, Publish)
    assert decision.reason_code == "PAS_UNAVAILABLE"
    assert failed_of(decision).http_status == 503
    assert failed_of(decision).errors[0].reason_code == "SERVICE_UNAVAILABLE"
    assert decision.dead_letter is not None
    assert decision.dead_letter.error_class == "RetriesExhausted"
    assert (await h.stored()).state is State.RELEASED  # the key keeps its fingerprint


async def test_retry_after_is_honoured_over_a_shorter_backoff(h: Harness) -> None:
    """A Retry-After longer than the backoff sets the pause; a shorter one does not shorten it."""
    h.pas.then(answer(429, retry_after_s=7.0), answer(429, retry_after_s=0.1), APPLIED)
    decision, retries = await h.drive(h.record())
    assert [r.after_s for r in retries] == [7.0, 1.0]
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"


async def test_retry_after_wins_over_the_backoff_cap(h: Harness) -> None:
    """A Retry-After above max_backoff is still honoured in full."""
    h.pas.then(answer(429, retry_after_s=120.0))
    retry = await h.retry()
    assert retry.after_s == 120.0


async def test_an_open_circuit_is_not_an_attempt(h: Harness) -> None:
    """CIRCUIT_OPEN replies are retried after their Retry-After and never use up attempts."""
    h.pas.then(*[CIRCUIT_OPEN] * 5, APPLIED)
    decision, retries = await h.drive(h.record())
    assert len(retries) == 5 > CONFIG.max_attempts
    assert {r.after_s for r in retries} == {2.0}
    assert {r.attempt.calls for r in retries} == {0}
    assert {r.kind for r in retries} == {"backoff"}
    assert retries[0].attempt.first_failure_at == T0
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 1


async def test_a_call_our_limiter_held_back_is_not_an_attempt(h: Harness) -> None:
    """DEFERRED replies (no slot or paced turn before the deadline: PAS never saw the call)
    are retried after their Retry-After and never use up attempts."""
    deferred = PasReply(
        Observation(transport=Transport.DEFERRED),
        0.0,
        retry_after_s=2.0,
        problem="paced after a 429: no turn before the call's deadline",
    )
    h.pas.then(*[deferred] * 5, APPLIED)
    decision, retries = await h.drive(h.record())
    assert len(retries) == 5 > CONFIG.max_attempts
    assert {r.attempt.calls for r in retries} == {0}
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 1


async def test_an_open_circuit_after_a_real_failure_keeps_the_count(h: Harness) -> None:
    """A circuit-open reply after one failed call leaves calls at 1; the next failures count."""
    h.pas.then(CONNECT_FAILED, CIRCUIT_OPEN, CONNECT_FAILED, CONNECT_FAILED)
    decision, retries = await h.drive(h.record())
    assert [r.attempt.calls for r in retries] == [1, 1, 2]
    assert [r.after_s for r in retries] == [0.5, 2.0, 1.0]
    assert isinstance(decision, Publish)
    assert decision.reason_code == "PAS_UNAVAILABLE"
    assert decision.outcome.attempts == 3
    assert len(h.pas.requests) == 4


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorized_is_dead_lettered_released_and_not_retried(
    h: Harness, status: int
) -> None:
    """401/403: UNAUTHORIZED, retryable, a dlt copy (Unauthorized), the claim released."""
    refused = answer(status, GATEWAY_401)
    h.pas.then(refused)
    record = h.record()
    decision = await h.publish(record=record)
    assert len(h.pas.requests) == 1
    assert decision.reason_code == "UNAUTHORIZED"
    assert failed_of(decision).retryable is True
    assert failed_of(decision).http_status == status
    assert decision.outcome.attempts == 1
    assert failed_of(decision).errors == (GATEWAY_401,)
    assert decision.stored_key is None
    assert decision.event_id == event_id(KEY, record.source)
    assert decision.dead_letter == DeadLetterRequest(
        "dlt", "Unauthorized", "UNAUTHORIZED", refused.problem, 1, T0, T0
    )
    assert (await h.stored()).state is State.RELEASED  # the key keeps its fingerprint
    fits_schema(h.codec, decision)
    h.pas.then(APPLIED)
    assert (await h.publish()).kind == "completed"
    assert len(h.pas.requests) == 2


# -- PERMANENT: stored failures ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "PAS_REJECTED"), (409, "PAS_REJECTED"), (404, "ACCOUNT_NOT_FOUND")],
)
async def test_refusal_is_stored_as_failed(h: Harness, status: int, reason: str) -> None:
    """A non-recoverable refusal is stored as a failure with PAS's status and errors."""
    h.pas.then(answer(status, PAS_400))
    decision = await h.publish()
    assert len(h.pas.requests) == 1
    assert decision.reason_code == reason
    assert failed_of(decision).retryable is False
    assert failed_of(decision).http_status == status
    assert failed_of(decision).errors == (PAS_400,)
    assert decision.outcome.attempts == 1
    assert decision.stored_key == KEY
    assert decision.dead_letter is None
    assert (await h.stored()).state is State.FAILED
    fits_schema(h.codec, decision)
    repeat = await h.publish()
    assert len(h.pas.requests) == 1
    assert repeat.duplicate is True
    assert repeat.reason_code == reason


async def test_404_marked_recoverable_is_still_a_stored_account_not_found(h: Harness) -> None:
    """A 404 with Recoverable=true is not retried: ACCOUNT_NOT_FOUND, stored."""
    h.pas.then(answer(404, recoverable=True))
    decision = await h.publish()
    assert decision.reason_code == "ACCOUNT_NOT_FOUND"
    assert decision.stored_key == KEY
    assert len(h.pas.requests) == 1


# -- EXPIRED ----------------------------------------------------------------------------------


async def test_a_command_older_than_its_ttl_expires_without_a_pas_call(h: Harness) -> None:
    """A command older than command_ttl_s is stored as FAILED EXPIRED and PAS is not called."""
    old = T0 - timedelta(seconds=TTL_S + 1)
    decision = await h.publish(raw_command(occurred_at=old))
    assert h.pas.requests == []
    assert decision.kind == "failed"
    assert decision.reason_code == "EXPIRED"
    assert failed_of(decision).retryable is False
    assert decision.outcome.attempts == 0
    assert decision.stored_key == KEY
    assert decision.dead_letter is None
    assert (await h.stored()).state is State.FAILED
    fits_schema(h.codec, decision)


async def test_a_command_exactly_at_its_ttl_is_still_sent(h: Harness) -> None:
    """A command exactly command_ttl_s old has not passed its deadline: it is applied."""
    h.pas.then(APPLIED)
    decision = await h.publish(raw_command(occurred_at=T0 - timedelta(seconds=TTL_S)))
    assert decision.kind == "completed"


async def test_a_command_expiring_between_retries_is_not_sent_again(h: Harness) -> None:
    """A retried command that outlives its TTL while waiting ends EXPIRED with its attempts."""
    h.pas.then(CONNECT_FAILED)
    record = h.record()
    retry = await h.retry(record)
    h.clock.advance(TTL_S)
    decision = await h.publish(record=record, attempt=retry.attempt)
    assert len(h.pas.requests) == 1
    assert decision.reason_code == "EXPIRED"
    assert decision.outcome.attempts == 1


# -- UNKNOWN and reconciliation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        READ_TIMEOUT,
        PasReply(Observation(transport=Transport.RESET), 0.1, problem="ReadError"),
        PasReply(Observation(transport=Transport.UNREADABLE_ANSWER), 0.1, problem="HTTP 200 ?"),
        answer(500),
        answer(302),
    ],
    ids=["read-timeout", "reset", "unreadable-200", "500", "302"],
)
async def test_an_unknown_outcome_is_parked_for_reconciliation(h: Harness, reply: PasReply) -> None:
    """An unknown outcome parks the record RECONCILING and asks for a lookup after settle_s."""
    h.pas.then(reply)
    retry = await h.retry()
    assert retry.kind == "reconcile"
    assert retry.after_s == SETTLE_S
    assert reply.problem in retry.reason
    assert retry.attempt.calls == 1
    assert retry.attempt.last_call_at == T0
    assert retry.attempt.first_failure_at == T0
    record = await h.stored()
    assert (record.state, record.owner) == (State.RECONCILING, ME)
    assert record.lease_until == T0 + timedelta(seconds=SETTLE_S + LEASE_S)
    assert len(h.pas.requests) == 1
    assert h.history.accounts == []


async def test_a_parked_command_found_in_the_history_is_completed(h: Harness) -> None:
    """After settle, a history entry carrying the reference completes it with its points."""
    h.pas.then(READ_TIMEOUT)
    h.history.then(APPLIED_IN_HISTORY)
    record = h.record()
    retry = await h.retry(record)
    h.clock.advance(retry.after_s)
    decision = await h.publish(record=record, attempt=retry.attempt, published=False)
    assert len(h.pas.requests) == 1
    assert h.history.accounts == [ACCOUNT]
    assert h.history.correlation_ids == ["corr-1"]  # the command's, as its calls carry it
    assert decision.kind == "completed"
    assert decision.stored_key == KEY
    assert completed_of(decision).points_adjusted == 240
    assert completed_of(decision).points_requested == 250
    assert decision.outcome.attempts == 1
    assert completed_of(decision).pas_correlation_id is None
    assert completed_of(decision).completed_at == T0 + timedelta(seconds=SETTLE_S)
    assert decision.dead_letter is None
    fits_schema(h.codec, decision)
    stored = await h.stored()
    assert (stored.state, stored.attempts) == (State.COMPLETED, 1)
    assert stored.outcome == decision.outcome


async def test_a_parked_command_absent_from_the_history_is_sent_once_more(h: Harness) -> None:
    """After settle, a history without the reference resumes the claim: exactly one more call."""
    h.pas.then(READ_TIMEOUT, APPLIED)
    h.history.then(NOT_IN_HISTORY)
    record = h.record()
    retry = await h.retry(record)
    h.clock.advance(retry.after_s)
    decision = await h.publish(record=record, attempt=retry.attempt)
    assert len(h.pas.requests) == 2
    assert h.pas.requests[0] == h.pas.requests[1]
    assert h.pas.requests[1].adjustment_reason == SENT_REASON
    assert h.history.accounts == [ACCOUNT]
    assert decision.kind == "completed"
    assert completed_of(decision).points_adjusted == 250
    assert decision.outcome.attempts == 2
    assert (await h.stored()).state is State.COMPLETED


async def test_an_unknown_outcome_after_resuming_is_parked_again(h: Harness) -> None:
    """The call sent after an absent lookup that also times out is parked, never sent blindly."""
    h.pas.then(READ_TIMEOUT, READ_TIMEOUT)
    h.history.then(NOT_IN_HISTORY, APPLIED_IN_HISTORY)
    decision, retries = await h.drive(h.record())
    assert [r.kind for r in retries] == ["reconcile", "reconcile"]
    assert len(h.pas.requests) == 2
    assert isinstance(decision, Publish)
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 2


async def test_failing_lookups_end_in_outcome_unknown_for_review(h: Harness) -> None:
    """History lookups failing max_lookups times: OUTCOME_UNKNOWN stored + a review copy."""
    h.pas.then(READ_TIMEOUT)
    h.history.then(HISTORY_DOWN, HISTORY_DOWN, HISTORY_DOWN)
    record = h.record()
    decision, retries = await h.drive(record)
    assert [r.kind for r in retries] == ["reconcile"] * 3
    assert [r.after_s for r in retries] == [SETTLE_S] * 3
    assert [r.attempt.lookups for r in retries] == [0, 1, 2]
    assert len(h.history.accounts) == CONFIG.max_lookups
    assert len(h.pas.requests) == 1
    assert isinstance(decision, Publish)
    assert decision.kind == "failed"
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert failed_of(decision).retryable is False
    assert decision.outcome.attempts == 1
    assert decision.stored_key == KEY
    letter = decision.dead_letter
    assert letter is not None
    assert (letter.target, letter.error_class, letter.reason) == (
        "review",
        "OutcomeUnknown",
        "OUTCOME_UNKNOWN",
    )
    assert "history lookup failed (HTTP 503)" in letter.detail
    assert letter.attempts == 1
    assert letter.first_failure_at == T0
    stored = await h.stored()
    assert stored.state is State.UNKNOWN
    fits_schema(h.codec, decision)
    await h.processor.published(decision)
    repeat = await h.publish()
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "unknown"
    assert len(h.pas.requests) == 1


async def test_a_lookup_before_the_settle_time_cannot_say_absent(h: Harness) -> None:
    """Handled again before settle_s, a history without the reference is no reason to resend."""
    h.pas.then(READ_TIMEOUT)
    h.history.then(NOT_IN_HISTORY)
    record = h.record()
    first = await h.retry(record)
    h.clock.advance(10)
    early = await h.retry(record, first.attempt)
    assert early.kind == "reconcile"
    assert early.after_s == pytest.approx(SETTLE_S - 10)
    assert len(h.pas.requests) == 1
    assert h.history.accounts == [ACCOUNT]
    stored = await h.stored()
    assert (stored.state, stored.owner) == (State.RECONCILING, ME)


async def test_a_lookup_too_early_to_decide_does_not_use_up_the_lookups(
    codec: AvroCodec,
) -> None:
    """A lookup that only could not decide because settle_s had not quite passed is no failure.

    The runner's timer (monotonic) and the processor's clock (wall) may disagree by a few
    milliseconds, so the lookup after settle_s can land just before it. With max_lookups=1
    that lookup must not turn into OUTCOME_UNKNOWN: nothing failed, the answer is just early.
    """
    h = Harness(codec, max_lookups=1)
    h.pas.then(READ_TIMEOUT)
    h.history.then(NOT_IN_HISTORY, APPLIED_IN_HISTORY)
    record = h.record()
    parked = await h.retry(record)
    h.clock.advance(SETTLE_S - 0.01)
    early = await h.handle(record, parked.attempt)
    assert isinstance(early, Retry), "an undecided early lookup counted as a failed lookup"
    assert early.kind == "reconcile"
    assert early.after_s == pytest.approx(0.01)
    h.clock.advance(early.after_s)
    decision = await h.publish(record=record, attempt=early.attempt)
    assert decision.kind == "completed"
    assert len(h.pas.requests) == 1


@pytest.mark.parametrize(
    "setup",
    [
        {"reconcile": False},
        {"reference_in_reason": False},
        {"with_history": False},
    ],
    ids=["reconciliation-off", "no-reference", "no-history-port"],
)
async def test_without_reconciliation_an_unknown_outcome_is_final(
    codec: AvroCodec, setup: dict[str, Any]
) -> None:
    """Without a way to reconcile, an unknown outcome is OUTCOME_UNKNOWN at once + a review copy."""
    h = Harness(codec, **setup)
    h.pas.then(READ_TIMEOUT)
    decision = await h.publish()
    assert len(h.pas.requests) == 1
    assert h.history.accounts == []
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert failed_of(decision).retryable is False
    assert decision.outcome.attempts == 1
    assert decision.stored_key == KEY
    assert decision.dead_letter == DeadLetterRequest(
        "review", "OutcomeUnknown", "OUTCOME_UNKNOWN", READ_TIMEOUT.problem, 1, T0, T0
    )
    assert (await h.stored()).state is State.UNKNOWN
    fits_schema(h.codec, decision)


# -- claims held elsewhere, taken over, parked by others --------------------------------------


async def test_own_live_claim_is_busy(h: Harness) -> None:
    """A key this worker holds IN_FLIGHT (another delivery in progress) waits: Retry(busy)."""
    raw = raw_command()
    await h.store.claim(KEY, fingerprint(raw), owner=ME, now=T0, lease_s=LEASE_S)
    retry = await h.retry(h.record(raw))
    assert retry.kind == "busy"
    assert retry.after_s == 0.25
    assert h.pas.requests == []
    assert (await h.stored()).state is State.IN_FLIGHT


async def test_live_claim_of_another_owner_is_busy_then_a_duplicate(h: Harness) -> None:
    """A live claim elsewhere gives Retry(busy); once it is finished the outcome is republished."""
    raw = raw_command()
    await claim_as_other(h, raw, T0)
    record = h.record(raw)
    retry = await h.retry(record)
    assert retry.kind == "busy"
    theirs = completed_elsewhere(KEY, points_adjusted=7)
    await h.store.finish(
        KEY,
        owner=OTHER,
        token=1,
        state=State.COMPLETED,
        outcome=theirs,
        attempts=1,
        now=T0,
    )
    await h.store.mark_published(KEY)
    decision = await h.publish(record=record, attempt=retry.attempt)
    assert h.pas.requests == []
    assert decision.duplicate is True
    assert decision.outcome == theirs
    assert decision.source == record.source
    assert (await h.stored()).owner == OTHER


async def test_invalid_repeat_of_a_command_in_flight_elsewhere_is_busy(h: Harness) -> None:
    """An invalid repeat with the business fields of a command in flight elsewhere waits too."""
    await claim_as_other(h, raw_command(), T0)
    retry = await h.retry(h.record(raw_command(correlation_id="")))
    assert retry.kind == "busy"
    assert h.pas.requests == []
    assert (await h.stored()).owner == OTHER


async def test_an_expired_claim_of_another_owner_is_reconciled_not_resent(h: Harness) -> None:
    """An IN_FLIGHT claim whose lease ran out is taken over and parked, never called blindly."""
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    record = h.record()
    retry = await h.retry(record)
    assert retry.kind == "reconcile"
    assert retry.after_s == SETTLE_S
    assert retry.attempt.calls == 0
    assert h.pas.requests == []
    assert h.history.accounts == []
    stored = await h.stored()
    assert (stored.state, stored.owner) == (State.RECONCILING, ME)


async def test_a_taken_over_claim_found_in_the_history_is_completed(h: Harness) -> None:
    """A taken-over claim whose request did land is completed from the history, no call."""
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    h.history.then(APPLIED_IN_HISTORY)
    decision, _ = await h.drive(h.record())
    assert isinstance(decision, Publish)
    assert h.pas.requests == []
    assert decision.kind == "completed"
    assert completed_of(decision).points_adjusted == 240
    assert decision.outcome.attempts == 1


async def test_a_taken_over_claim_absent_from_the_history_is_sent_after_settle(
    h: Harness,
) -> None:
    """A taken-over claim is sent only after a settled lookup proved it absent."""
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    h.history.then(NOT_IN_HISTORY)
    h.pas.then(APPLIED)
    decision, retries = await h.drive(h.record())
    assert isinstance(decision, Publish)
    assert len(h.pas.requests) == 1
    assert len(h.history.accounts) == 1
    assert h.clock() - T0 >= timedelta(seconds=SETTLE_S)
    assert retries[0].kind == "reconcile"
    assert decision.kind == "completed"
    assert decision.outcome.attempts == 1


async def test_a_parked_record_of_another_owner_is_busy_while_its_lease_lives(
    h: Harness,
) -> None:
    """A RECONCILING record of another owner under a live lease: Retry(busy), no lookup, no call."""
    raw = raw_command()
    await claim_as_other(h, raw, T0)
    await h.store.park(
        KEY,
        owner=OTHER,
        token=1,
        now=T0,
        settle_until=T0 + timedelta(seconds=SETTLE_S),
        lease_until=T0 + timedelta(seconds=SETTLE_S + LEASE_S),
    )
    retry = await h.retry(h.record(raw))
    assert retry.kind == "busy"
    assert retry.after_s == 0.25
    assert h.pas.requests == []
    assert h.history.accounts == []
    assert (await h.stored()).owner == OTHER


async def test_a_parked_record_of_another_owner_is_reconciled_here_after_its_lease(
    h: Harness,
) -> None:
    """Once another owner's RECONCILING lease has expired this worker reconciles it."""
    raw = raw_command()
    await claim_as_other(h, raw, T0 - timedelta(seconds=200))
    await h.store.park(
        KEY,
        owner=OTHER,
        token=1,
        now=T0 - timedelta(seconds=100),
        settle_until=T0 - timedelta(seconds=70),
        lease_until=T0 - timedelta(seconds=10),
    )
    h.history.then(APPLIED_IN_HISTORY)
    decision, _ = await h.drive(h.record(raw))
    assert isinstance(decision, Publish)
    assert h.pas.requests == []
    assert h.history.accounts == [ACCOUNT]
    assert decision.kind == "completed"
    assert completed_of(decision).points_adjusted == 240
    stored = await h.stored()
    assert (stored.state, stored.owner) == (State.COMPLETED, ME)


async def test_a_redelivered_copy_of_a_parked_command_is_not_resent_before_settle(
    h: Harness,
) -> None:
    """A second delivery of a command parked a second ago never resends it on an early lookup.

    The copy (another partition, or the same record after a rebalance) arrives with a fresh
    Attempt. The record is this worker's own RECONCILING claim, parked one second after a
    read timeout: PAS may still be applying the request, so a history without the reference
    proves nothing yet and PAS must not be called again.
    """
    h.pas.then(READ_TIMEOUT, APPLIED)
    h.history.then(NOT_IN_HISTORY, NOT_IN_HISTORY)
    parked = await h.retry(h.record())
    assert parked.kind == "reconcile"
    h.clock.advance(1)
    copy = await h.handle(h.record())
    assert len(h.pas.requests) == 1, "PAS called again one second after an unknown outcome"
    assert isinstance(copy, Retry)
    assert copy.kind == "reconcile"


async def test_invalid_repeat_taking_over_an_expired_claim_without_reconciliation(
    codec: AvroCodec,
) -> None:
    """Without reconciliation, an invalid repeat taking over a lapsed claim stores OUTCOME_UNKNOWN.

    The earlier owner was applying the valid command with the same business fields and may
    have reached PAS; the repeat must not store VALIDATION_FAILED ('not applied').
    """
    h = Harness(codec, reconcile=False)
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    decision = await h.publish(raw_command(correlation_id=""))
    assert h.pas.requests == []
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert decision.dead_letter is not None
    assert decision.dead_letter.target == "review"
    assert (await h.stored()).state is State.UNKNOWN


async def test_invalid_repeat_taking_over_an_expired_claim_is_eventually_decided(
    h: Harness,
) -> None:
    """With reconciliation on, an invalid repeat taking over a lapsed claim still ends.

    It cannot be reconciled (there is no valid command to look up or send), so it must end
    as OUTCOME_UNKNOWN for review instead of being parked again on every handle, which would
    hold its account's later commands back forever.
    """
    await claim_as_other(h, raw_command(), T0 - timedelta(seconds=LEASE_S + 1))
    decision, _ = await h.drive(h.record(raw_command(correlation_id="")))
    assert h.pas.requests == []
    assert isinstance(decision, Publish)
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert decision.dead_letter is not None
    assert decision.dead_letter.target == "review"
    stored = await h.stored()
    assert stored.state is State.UNKNOWN
    assert stored.outcome == decision.outcome


async def test_an_invalid_copy_of_a_parked_command_does_not_hold_it_forever(
    h: Harness,
) -> None:
    """An invalid copy meeting this worker's parked record is decided, not parked again and again.

    Re-parking on every handle would also push the parked command's settle time forward
    each time.
    """
    h.pas.then(READ_TIMEOUT)
    await h.retry(h.record())
    h.clock.advance(1)
    decision, _ = await h.drive(h.record(raw_command(correlation_id="")))
    assert isinstance(decision, Publish)
    assert len(h.pas.requests) == 1
    assert decision.reason_code == "OUTCOME_UNKNOWN"
    assert (await h.stored()).state is State.UNKNOWN


# -- published ---------------------------------------------------------------------------------


async def test_published_marks_only_stored_originals(h: Harness) -> None:
    """published() flags a stored outcome; a conflict (not stored) leaves the record alone."""
    h.pas.then(APPLIED)
    original = await h.publish(published=False)
    h.processor.abandon(original)  # held no longer, so the conflicting repeat is decided
    conflict = await h.publish(raw_command(points_to_adjust=5), published=False)
    await h.processor.published(conflict)
    assert (await h.stored()).published is False
    await h.processor.published(original)
    assert (await h.stored()).published is True


# -- one call per key in the process, and a deadline inside the lease ---------------------------


class GatedPas(ScriptedPas):
    """A PasPort that holds every call until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        self.entered.set()
        await self.gate.wait()
        return await super().adjust(request, deadline=deadline)


async def test_the_same_key_from_another_partition_waits_while_the_first_is_in_flight(
    codec: AvroCodec,
) -> None:
    """Two records with one key on two partitions, PAS slow: one POST; the other record is
    handed back as busy and later finds the stored outcome (a duplicate, no second call)."""
    h = Harness(codec)
    h.pas = GatedPas()
    h.processor._pas = h.pas  # the gated fake in place of the scripted one
    h.pas.then(APPLIED)
    first = h.record()
    second = replace(h.record(), partition=7)
    running = asyncio.create_task(h.processor.handle(first))
    await h.pas.entered.wait()
    waiting = await h.processor.handle(second)
    assert isinstance(waiting, Retry)
    assert waiting.kind == "busy"
    h.pas.gate.set()
    decided = await running
    assert isinstance(decided, Publish)
    await h.processor.published(decided)
    again = await h.processor.handle(second, waiting.attempt)
    assert isinstance(again, Publish)
    assert again.duplicate is True
    assert len(h.pas.requests) == 1


async def test_a_repeat_waits_while_the_stored_outcome_is_not_yet_published(h: Harness) -> None:
    """A repeat on another partition, arriving after the outcome was stored but before it was
    published, waits (busy) instead of republishing it as a second original; once published
    it is a duplicate."""
    h.pas.then(APPLIED)
    original = await h.publish(published=False)
    repeat = replace(h.record(), partition=9)
    waiting = await h.processor.handle(repeat)
    assert isinstance(waiting, Retry)
    assert waiting.kind == "busy"
    await h.processor.published(original)
    again = await h.processor.handle(repeat, waiting.attempt)
    assert isinstance(again, Publish)
    assert again.duplicate is True
    assert len(h.pas.requests) == 1


async def test_the_key_is_free_again_after_its_record_was_handled(h: Harness) -> None:
    """The in-process guard holds a key only while a record of it is being handled."""
    h.pas.then(CONNECT_FAILED)
    first = await h.handle()
    assert isinstance(first, Retry)
    assert first.kind == "backoff"
    h.pas.then(APPLIED)
    decided = await h.handle(attempt=first.attempt)
    assert isinstance(decided, Publish)
    assert decided.kind == "completed"


async def test_a_call_deadline_is_the_call_timeout_and_ends_before_the_lease(
    codec: AvroCodec,
) -> None:
    """The deadline handed to PAS is at most the call timeout away and ends the lease margin
    before the claim's lease, counted from before the claim was written."""
    ticks = iter([1000.0, 1000.0, 1000.0, 1000.0])
    h = Harness(codec, call_timeout_s=20.0, lease_margin_s=5.0)
    h.processor._monotonic = lambda: next(ticks)
    h.pas.then(APPLIED)
    await h.publish()
    assert h.pas.deadlines == [1020.0]
    short = Harness(codec, call_timeout_s=20.0, lease_margin_s=5.0, lease_s=12.0)
    short.processor._monotonic = lambda: 1000.0
    short.pas.then(APPLIED)
    await short.publish()
    assert short.pas.deadlines == [1000.0 + 12.0 - 5.0]
