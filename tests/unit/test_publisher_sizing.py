"""Outcome events that would not fit under the byte limit go out cut down, never not at all
(no broker: a recording fake producer)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from service.codec.avro import AvroCodec
from service.codec.outcome import outcome_record
from service.domain.command import account_ref
from service.domain.decisions import Publish
from service.domain.outcome import CommandInfo, Completed, ErrorDetail, Failed, SourceRef
from service.kafka import publisher as pub
from service.kafka.publisher import OutcomePublisher
from service.kafka.sizing import (
    RECORD_OVERHEAD_BYTES,
    TRUNCATED,
    cut,
    entries_marker,
    marker,
    marker_size,
    record_size,
)
from service.settings import KafkaSettings
from tests.fakes import RecordingProducer, Sent

ACCOUNT = "5123456789012345000"
REF = account_ref(ACCOUNT)
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
MIN_LIMIT = 16_384


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def info(**overrides: Any) -> CommandInfo:
    fields: dict[str, Any] = {
        "idempotency_key": "case-1-credit",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "account_ref": REF,
        "account_masked": "***************5000",
        "command_occurred_at": T0,
        "received_at": T0,
        "source": SourceRef("points-adjustments.requested.v1", 3, 4711),
        "metadata": {"ticket": "T-1"},
    }
    fields.update(overrides)
    return CommandInfo(**fields)


def completed(**overrides: Any) -> Publish:
    outcome = Completed(
        info=info(**overrides),
        adjustment_type_code="GOODWILL",
        points_requested=250,
        points_adjusted=250,
        attempts=1,
        completed_at=T0,
        pas_duration_ms=42,
        pas_correlation_id="mc-corr-9",
        service_version="0.1.0",
    )
    return Publish.original(outcome)


def failed(
    description: str = "bad command",
    errors: tuple[ErrorDetail, ...] = (),
    **overrides: Any,
) -> Publish:
    outcome = Failed(
        info=info(**overrides),
        reason_code="VALIDATION_FAILED",
        description=description,
        retryable=False,
        failed_at=T0,
        errors=errors,
        service_version="0.1.0",
    )
    return Publish.original(outcome)


def event_of(decision: Publish) -> dict[str, Any]:
    """The event of ``decision`` whole, as the publisher makes it before any cut."""
    return outcome_record(
        decision.outcome,
        event_id=decision.event_id,
        source=decision.source,
        duplicate=decision.duplicate,
    )


async def publish(
    codec: AvroCodec,
    decision: Publish,
    *,
    limit: int = 1_000_000,
    script: list[str] | None = None,
    topic_limits: dict[str, int] | None = None,
) -> tuple[RecordingProducer, Any]:
    """Publish one decision; return the producer and what the awaited future gave."""
    producer = RecordingProducer(list(script or []))
    publisher = OutcomePublisher(
        producer, codec, KafkaSettings(max_message_bytes=limit), topic_limits=topic_limits
    )
    delivery = await publisher.send(decision)
    return producer, await delivery


def decoded(codec: AvroCodec, sent: Sent) -> dict[str, Any]:
    return codec.decode(sent.value)[1]


# --- sizing ----------------------------------------------------------------------------------


def test_record_size_counts_key_value_headers_and_the_overhead() -> None:
    """A record's size is key + value + header names and values + the fixed allowance."""
    headers = [("event_type", b"completed"), ("é", b"12")]
    assert record_size(b"k" * 10, b"v" * 100, headers) == 10 + 100 + 19 + 4 + 512
    assert record_size(None, None) == RECORD_OVERHEAD_BYTES


def test_a_marker_names_the_size_and_digest_of_what_it_replaces() -> None:
    """The marker shows the byte count and the first 12 hex digits of SHA-256, and
    marker_size predicts its length without hashing."""
    data = "é".encode() * 307_200
    digest = hashlib.sha256(data).hexdigest()[:12]
    assert marker(data) == f"<cut 614400 bytes sha256:{digest}>"
    assert marker_size(len(data)) == len(marker(data))
    assert entries_marker(3, b"abc").startswith("<cut 3 entries, 3 bytes sha256:ba7816bf8f01>")


def test_cut_keeps_utf8_whole() -> None:
    """Text cut to a byte limit stays valid UTF-8 and ends in an ellipsis."""
    capped = cut("é" * 200, 256)
    assert len(capped) <= 256
    assert capped.decode("utf-8").endswith("…")
    assert cut("short", 256) == b"short"


# --- whole or cut down -----------------------------------------------------------------------


async def _measure(codec: AvroCodec, decision: Publish) -> int:
    producer, _ = await publish(codec, decision, limit=100_000_000)
    return producer.sent[0].size


async def test_an_event_exactly_at_the_limit_goes_out_unchanged(codec: AvroCodec) -> None:
    """A record whose size equals the limit is sent whole, without pa.truncated."""
    decision = completed(metadata={"note": "n" * 20_000})
    size = await _measure(codec, decision)
    producer, _ = await publish(codec, decision, limit=size)
    [sent] = producer.sent
    assert sent.size == size
    assert TRUNCATED not in sent.header
    assert decoded(codec, sent)["metadata"] == {"note": "n" * 20_000}


async def test_one_byte_over_the_limit_is_cut_down(codec: AvroCodec) -> None:
    """A record one byte over the limit goes out cut down, within the limit."""
    decision = completed(metadata={"note": "n" * 20_000})
    size = await _measure(codec, decision)
    producer, _ = await publish(codec, decision, limit=size - 1)
    [sent] = producer.sent
    assert sent.size <= size - 1
    assert sent.header[TRUNCATED] == b"metadata"
    note = "n" * 20_000
    assert decoded(codec, sent)["metadata"] == {"note": marker(note.encode())}


async def test_a_completed_event_with_1_mb_of_metadata_goes_out(codec: AvroCodec) -> None:
    """Under the default limit, 1 MB of metadata is replaced by its marker; everything else,
    identity first, travels unchanged."""
    big = "m" * 1_048_576
    decision = completed(metadata={"case": "C-9", "blob": big})
    producer, acked = await publish(codec, decision)
    [sent] = producer.sent
    assert acked == 0
    assert sent.size <= 1_000_000
    assert sent.topic == KafkaSettings().completed_topic
    assert sent.key == REF.encode()
    assert sent.header[TRUNCATED] == b"metadata"
    assert sent.header["event_type"] == b"completed"
    event = decoded(codec, sent)
    assert event["metadata"] == {"case": "C-9", "blob": marker(big.encode())}
    expected = {**event_of(decision), "metadata": event["metadata"]}
    for name in ("event_id", "idempotency_key", "account_ref", "account_masked", "correlation_id"):
        assert event[name] == expected[name]
    assert (event["points_requested"], event["points_adjusted"]) == (250, 250)
    assert event["source"] == event_of(decision)["source"]


async def test_a_failed_event_with_a_600_kb_correlation_id_goes_out(codec: AvroCodec) -> None:
    """A 600 KB correlation id no longer doubles the record through its header: the header
    copy is capped at 256 bytes, and the event, which then fits, keeps the id whole."""
    correlation = "c" * 614_400
    producer, _ = await publish(codec, failed(correlation_id=correlation))
    [sent] = producer.sent
    assert sent.topic == KafkaSettings().failed_topic
    assert sent.size <= 1_000_000
    assert TRUNCATED not in sent.header
    assert decoded(codec, sent)["correlation_id"] == correlation
    header = sent.header["correlation_id"]
    assert len(header) <= pub.CORRELATION_HEADER_BYTES
    assert header.decode("utf-8").endswith("…")


async def test_a_600_kb_correlation_id_is_cut_when_the_event_is_over(codec: AvroCodec) -> None:
    """Over the limit, the 600 KB correlation id is replaced by its marker and named in
    pa.truncated; the reason code stays."""
    correlation = "c" * 614_400
    producer, _ = await publish(codec, failed(correlation_id=correlation), limit=500_000)
    [sent] = producer.sent
    assert sent.size <= 500_000
    assert sent.header[TRUNCATED] == b"correlation_id"
    event = decoded(codec, sent)
    assert event["correlation_id"] == marker(correlation.encode())
    assert event["reason_code"] == "VALIDATION_FAILED"


async def test_the_fewest_and_largest_texts_are_cut_first(codec: AvroCodec) -> None:
    """With two large texts and room for one, only the larger is cut."""
    decision = failed(description="d" * 300_000, correlation_id="c" * 800_000)
    producer, _ = await publish(codec, decision)
    [sent] = producer.sent
    event = decoded(codec, sent)
    assert sent.header[TRUNCATED] == b"correlation_id"
    assert event["description"] == "d" * 300_000
    assert sent.size <= 1_000_000


async def test_the_correlation_header_is_capped_on_a_whole_event(codec: AvroCodec) -> None:
    """An event that fits keeps its full correlation id; only the header copy is capped,
    on a UTF-8 boundary, and nothing is marked truncated."""
    correlation = "é" * 1000
    producer, _ = await publish(codec, completed(correlation_id=correlation))
    [sent] = producer.sent
    assert TRUNCATED not in sent.header
    assert decoded(codec, sent)["correlation_id"] == correlation
    header = sent.header["correlation_id"].decode("utf-8")
    assert len(header.encode()) <= 256
    assert header == "é" * 126 + "…"


async def test_many_small_metadata_entries_are_collapsed(codec: AvroCodec) -> None:
    """When cutting texts is not enough, metadata becomes one entry naming how many entries
    and bytes it held, with their digest."""
    metadata = {f"k{i:05d}": "v" for i in range(5000)}
    producer, _ = await publish(codec, completed(metadata=metadata), limit=MIN_LIMIT)
    [sent] = producer.sent
    assert sent.size <= MIN_LIMIT
    assert sent.header[TRUNCATED] == b"metadata"
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    assert decoded(codec, sent)["metadata"] == {"pa.cut": entries_marker(5000, canonical)}


async def test_a_huge_failed_event_always_fits_the_smallest_limit(codec: AvroCodec) -> None:
    """Every field at its worst (huge texts, huge identity garbage, thousands of entries)
    still gives an event within 16 KiB that decodes; valid identity fields stay whole."""
    errors = tuple(
        ErrorDetail("points-adjuster", "INVALID", "e" * 50, False, f"f{i}") for i in range(3000)
    )
    decision = failed(
        description="d" * 900_000,
        errors=errors,
        idempotency_key="k" * 700_000,
        correlation_id="c" * 700_000,
        requested_by="r" * 700_000,
        account_masked="*" * 700_000,
        metadata={f"k{i}": "v" * 100 for i in range(20_000)},
    )
    producer, _ = await publish(codec, decision, limit=MIN_LIMIT)
    [sent] = producer.sent
    assert sent.size <= MIN_LIMIT
    event = decoded(codec, sent)
    names = sent.header[TRUNCATED].decode().split(",")
    assert names == [
        "idempotency_key",
        "correlation_id",
        "requested_by",
        "account_masked",
        "description",
        "errors",
        "metadata",
    ]
    assert event["idempotency_key"] == marker(b"k" * 700_000)
    assert event["event_id"] == decision.event_id
    assert event["account_ref"] == REF
    assert [e["reason_code"] for e in event["errors"]] == ["ERRORS_CUT"]
    assert event["errors"][0]["description"].startswith("<cut 3000 entries, ")
    assert list(event["metadata"]) == ["pa.cut"]


async def test_a_completed_event_always_goes_out_under_the_smallest_limit(
    codec: AvroCodec,
) -> None:
    """A completed event with a huge payload everywhere fits in 16 KiB with its points."""
    decision = completed(
        correlation_id="c" * 2_000_000,
        requested_by="r" * 2_000_000,
        metadata={("k" * 50_000) + str(i): "v" * 50_000 for i in range(20)},
    )
    producer, _ = await publish(codec, decision, limit=MIN_LIMIT)
    [sent] = producer.sent
    assert sent.size <= MIN_LIMIT
    event = decoded(codec, sent)
    assert (event["points_adjusted"], event["idempotency_key"]) == (250, "case-1-credit")


async def test_a_smaller_topic_limit_wins_over_the_setting(codec: AvroCodec) -> None:
    """A topic's known max.message.bytes below the setting is the limit used."""
    decision = completed(metadata={"blob": "b" * 100_000})
    topic = KafkaSettings().completed_topic
    producer, _ = await publish(codec, decision, topic_limits={topic: 65_536})
    [sent] = producer.sent
    assert sent.size <= 65_536
    assert sent.header[TRUNCATED] == b"metadata"


# --- refusals --------------------------------------------------------------------------------


async def test_a_broker_refusal_sends_the_minimal_form_once(codec: AvroCodec) -> None:
    """When the broker refuses the event as too large, the minimal form goes out and the
    returned future resolves with its acknowledgement."""
    decision = completed(metadata={"blob": "b" * 300_000}, correlation_id="corr-7")
    producer, acked = await publish(codec, decision, script=["broker"])
    first, second = producer.sent
    assert TRUNCATED not in first.header
    assert acked == 1
    assert second.header[TRUNCATED] == b"metadata"
    assert second.size < 2048
    assert decoded(codec, second)["correlation_id"] == "corr-7"


async def test_a_producer_refusal_sends_the_minimal_form(codec: AvroCodec) -> None:
    """aiokafka's own max_request_size refusal, raised by send(), also leads to the minimal
    form."""
    decision = failed(description="d" * 5000)
    producer, acked = await publish(codec, decision, script=["producer"])
    [sent] = producer.sent
    assert acked == 0
    assert sent.header[TRUNCATED] == b"description"


async def test_a_second_refusal_propagates(codec: AvroCodec) -> None:
    """When the minimal form is refused too, the error reaches the caller."""
    producer = RecordingProducer(["broker", "broker"])
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    delivery = await publisher.send(completed())
    with pytest.raises(MessageSizeTooLargeError):
        await delivery
    assert len(producer.sent) == 2


async def test_other_delivery_errors_are_not_retried(codec: AvroCodec) -> None:
    """A failure that is not about size propagates at once, without a second send."""
    producer = RecordingProducer(["timeout"])
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    delivery = await publisher.send(completed())
    with pytest.raises(KafkaTimeoutError):
        await delivery
    assert len(producer.sent) == 1


async def test_the_minimal_form_is_not_sent_twice(codec: AvroCodec) -> None:
    """An event that fits only in its minimal form is not sent again when refused."""
    producer = RecordingProducer(["broker"])
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    delivery = await publisher.send(failed(idempotency_key="k" * 2_000_000))
    with pytest.raises(MessageSizeTooLargeError):
        await delivery
    [sent] = producer.sent
    assert sent.header[TRUNCATED] == b"idempotency_key"


async def test_the_minimal_form_has_a_bound_whatever_the_event_holds(codec: AvroCodec) -> None:
    """With every identity text just under the guard (so kept), collections just under the
    collapse size and every other text huge, the minimal form stays under 12 KiB: the
    smallest allowed limit (16 KiB) always fits a completed event."""
    edge = "x" * pub.IDENTITY_GUARD_BYTES
    outcome = Completed(
        info=info(
            idempotency_key=edge,
            correlation_id="c" * 1_000_000,
            requested_by="r" * 1_000_000,
            account_ref=edge,
            account_masked=edge,
            source=SourceRef(edge, 1, 2**62),
            metadata={"k": "v" * 240},
        ),
        adjustment_type_code=edge,
        points_requested=2**62,
        points_adjusted=2**62,
        attempts=2**30,
        completed_at=T0,
        pas_duration_ms=2**62,
        pas_correlation_id="p" * 1_000_000,
        service_version=edge,
    )
    decision = Publish(outcome, edge, outcome.info.source, False, None)
    producer = RecordingProducer(["broker"])
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    await (await publisher.send(decision))
    minimal = producer.sent[-1]
    assert minimal.size < 12 * 1024
    assert decoded(codec, minimal)["idempotency_key"] == edge
