"""Outcomes as records: the event the publisher encodes and the JSON the store keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.codec.outcome import (
    epoch_ms,
    from_epoch_ms,
    outcome_from_record,
    outcome_record,
    stored_record,
)
from service.domain.decisions import Publish
from service.domain.outcome import (
    CommandInfo,
    Completed,
    ErrorDetail,
    Failed,
    Outcome,
    SourceRef,
    event_id,
)

KEY = "case-1234-credit"
SOURCE = SourceRef("points-adjustments.requested.v1", 3, 101)
REPEAT = SourceRef("points-adjustments.requested.v1", 5, 9)
INFO = CommandInfo(
    idempotency_key=KEY,
    correlation_id="corr-1",
    requested_by="crm",
    account_ref="acct-0123456789abcdef0123456789abcdef",
    account_masked="***************5000",
    command_occurred_at=datetime(1969, 7, 20, 20, 17, 40, 5_000, tzinfo=UTC),
    received_at=datetime(2025, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC),
    source=SOURCE,
    metadata={"case": "1234"},
)
COMPLETED_OUTCOME = Completed(
    info=INFO,
    adjustment_type_code="GOODWILL",
    points_requested=250,
    points_adjusted=240,
    attempts=2,
    completed_at=datetime(2025, 3, 4, 5, 6, 8, tzinfo=UTC),
    pas_duration_ms=22,
    pas_correlation_id=None,
    service_version="1.2.3",
)
FAILED_OUTCOME = Failed(
    info=INFO,
    reason_code="PAS_REJECTED",
    description="PAS did not apply the adjustment: HTTP 400 X",
    retryable=False,
    failed_at=datetime(2025, 3, 4, 5, 6, 8, 999_000, tzinfo=UTC),
    errors=(
        ErrorDetail("rewards-points-api", "X", "bad", False, "pointsToAdjust"),
        ErrorDetail("Gateway", "DECLINED", "no", True, None),
    ),
    http_status=400,
    attempts=1,
    service_version="1.2.3",
)
OUTCOMES: list[Outcome] = [COMPLETED_OUTCOME, FAILED_OUTCOME]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@pytest.mark.parametrize("outcome", OUTCOMES, ids=["completed", "failed"])
def test_a_stored_record_reads_back_as_the_same_outcome(outcome: Outcome) -> None:
    """What the store keeps of an outcome (instants in whole milliseconds) gives it back."""
    record = stored_record(outcome)
    assert record["event_id"] == event_id(KEY)
    assert record["source"] == {"topic": SOURCE.topic, "partition": 3, "offset": 101}
    assert record["duplicate"] is False
    assert outcome_from_record(outcome.kind, record) == outcome


@pytest.mark.parametrize("outcome", OUTCOMES, ids=["completed", "failed"])
def test_every_decision_publishes_an_event_of_its_schema(
    codec: AvroCodec, outcome: Outcome
) -> None:
    """An original, an unstored outcome and a duplicate each encode with their schema; the
    duplicate carries the repeat's source and an event id of its own, the rest unchanged."""
    schema = COMPLETED if outcome.kind == "completed" else FAILED
    original = Publish.original(outcome)
    duplicate = Publish.republished(outcome, KEY, REPEAT, duplicate_kind=outcome.kind)
    events = {}
    for name, decision in (
        ("original", original),
        ("unstored", Publish.unstored(outcome)),
        ("duplicate", duplicate),
    ):
        record = outcome_record(
            decision.outcome,
            event_id=decision.event_id,
            source=decision.source,
            duplicate=decision.duplicate,
        )
        read_name, events[name] = codec.decode(codec.encode(schema, record))
        assert read_name == schema
    assert events["original"]["event_id"] == event_id(KEY)
    assert events["unstored"]["event_id"] == event_id(KEY, SOURCE)
    assert events["duplicate"]["event_id"] == event_id(KEY, REPEAT)
    assert events["duplicate"]["source"] == {"topic": REPEAT.topic, "partition": 5, "offset": 9}
    assert events["duplicate"]["duplicate"] is True
    same = {"event_id", "source", "duplicate"}
    assert {k: v for k, v in events["duplicate"].items() if k not in same} == {
        k: v for k, v in events["original"].items() if k not in same
    }
    assert events["original"]["received_at"] == INFO.received_at
    assert events["original"]["command_occurred_at"] == INFO.command_occurred_at


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2025, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC),
    ],
)
def test_epoch_milliseconds_are_exact_both_ways(moment: datetime) -> None:
    """Instants in whole milliseconds survive the trip to epoch milliseconds and back, far
    from the epoch too (integer arithmetic, no float)."""
    assert from_epoch_ms(epoch_ms(moment)) == moment


def test_epoch_milliseconds_drop_what_is_finer() -> None:
    """Microseconds are dropped (towards the past), as timestamp-millis keeps none."""
    moment = datetime(2025, 3, 4, 5, 6, 7, 123_999, tzinfo=UTC)
    assert epoch_ms(moment) == epoch_ms(moment.replace(microsecond=123_000))
    before = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert epoch_ms(before) == -1
    assert epoch_ms(datetime(2025, 3, 4, 5, 6, 7)) == epoch_ms(
        datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    )
    assert from_epoch_ms(epoch_ms(moment)) == moment - timedelta(microseconds=999)


@pytest.mark.parametrize(
    ("kind", "record", "problem"),
    [
        ("completed", {}, "without the field"),
        ("completed", stored_record(FAILED_OUTCOME), "without the field"),
        ("failed", {**stored_record(FAILED_OUTCOME), "errors": [5]}, "wrong shape"),
        ("failed", {**stored_record(FAILED_OUTCOME), "failed_at": "soon"}, "wrong shape"),
        ("refund", stored_record(COMPLETED_OUTCOME), "no outcome is of the kind"),
    ],
    ids=["empty", "other-kind", "bad-error", "bad-instant", "unknown-kind"],
)
def test_a_record_that_is_no_outcome_is_a_value_error(
    kind: str, record: dict[str, object], problem: str
) -> None:
    """A stored record that is not an outcome of its kind raises ValueError saying what is
    wrong, quoting none of its values."""
    with pytest.raises(ValueError, match=problem) as caught:
        outcome_from_record(kind, record)
    assert "corr-1" not in str(caught.value)
