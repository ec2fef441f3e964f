"""Records too large for a topic, against the real broker: outcome events and dead letters
are acknowledged cut down instead of stopping the service."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import OutOfOrderSequenceNumber, TopicAlreadyExistsError

from service.codec.avro import COMPLETED, AvroCodec
from service.domain.command import account_ref
from service.domain.decisions import Publish
from service.domain.outcome import CommandInfo, Completed, SourceRef
from service.kafka.clients import open_producer
from service.kafka.deadletter import DeadLetterPublisher, Failure, parse_headers
from service.kafka.publisher import OutcomePublisher
from service.kafka.sizing import TRUNCATED, marker, record_size
from service.settings import KafkaSettings
from tests.kafka_support import create_topics

pytestmark = pytest.mark.kafka

SMALL_TOPIC_BYTES = 65_536
REF = account_ref("5123456789012345000")
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
FAILURE = Failure("UndecodableRecordError", "CORRUPT_AVRO", "3 trailing bytes", 1, 0, 0)


@pytest.fixture
async def settings(kafka_bootstrap: str) -> KafkaSettings:
    """Fresh topics: completed and failed limited to 64 KiB, dead-letter and review with the
    broker's default limit (about 1 MiB)."""
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        completed_topic=f"limits-{run}.completed",
        failed_topic=f"limits-{run}.failed",
        dead_letter_topic=f"limits-{run}.dlt",
        review_topic=f"limits-{run}.review",
    )
    await _create_small_topics(kafka_bootstrap, [kafka.completed_topic, kafka.failed_topic])
    await create_topics(
        kafka_bootstrap,
        {
            kafka.completed_topic: 1,
            kafka.failed_topic: 1,
            kafka.dead_letter_topic: 1,
            kafka.review_topic: 1,
        },
    )
    return kafka


async def _create_small_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        config = {"max.message.bytes": str(SMALL_TOPIC_BYTES)}
        response = await admin.create_topics(
            [NewTopic(name, 1, 1, topic_configs=config) for name in names]
        )
        errors = [
            e for e in response.topic_errors if e[1] not in (0, TopicAlreadyExistsError.errno)
        ]
        assert not errors, errors
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of partition 0 of ``topic``."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[Any] = []
        while await consumer.position(tp) < end:
            for batch in (await consumer.getmany(tp, timeout_ms=1000)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _event_of_300_kb() -> Publish:
    info = CommandInfo(
        idempotency_key="case-300kb",
        correlation_id="corr-300kb",
        requested_by="crm",
        account_ref=REF,
        account_masked="***************5000",
        command_occurred_at=T0,
        received_at=T0,
        source=SourceRef("points-adjustments.requested.v1", 0, 7),
        metadata={"case": "C-1", "attachment": "a" * 300_000},
    )
    outcome = Completed(
        info=info,
        adjustment_type_code="GOODWILL",
        points_requested=250,
        points_adjusted=250,
        attempts=1,
        completed_at=T0,
        pas_duration_ms=40,
        pas_correlation_id="mc-1",
        service_version="0.1.0",
    )
    return Publish.original(outcome)


def _headers(record: Any) -> dict[str, bytes]:
    return {name: bytes(value) for name, value in record.headers}


async def test_an_event_over_a_known_topic_limit_is_acknowledged_cut_down(
    settings: KafkaSettings,
) -> None:
    """With the service's own (idempotent) producer and the topic's 64 KiB limit known, a
    300 KB event is acknowledged cut down, and reads back as a decodable event."""
    codec = AvroCodec.from_directory()
    decision = _event_of_300_kb()
    async with open_producer(settings) as producer:
        publisher = OutcomePublisher(
            producer, codec, settings, topic_limits={settings.completed_topic: SMALL_TOPIC_BYTES}
        )
        metadata = await (await publisher.send(decision))
    assert metadata.topic == settings.completed_topic
    [record] = await _read_all(settings.bootstrap_servers, settings.completed_topic)
    headers = _headers(record)
    assert headers[TRUNCATED] == b"metadata"
    assert record_size(record.key, record.value, headers.items()) <= SMALL_TOPIC_BYTES
    name, event = codec.decode(record.value)
    assert name == COMPLETED
    assert event["metadata"] == {"case": "C-1", "attachment": marker(b"a" * 300_000)}
    assert (event["idempotency_key"], event["points_adjusted"]) == ("case-300kb", 250)


async def test_a_broker_refusal_is_answered_with_the_minimal_form(
    settings: KafkaSettings,
) -> None:
    """Not knowing the topic's limit, the publisher (max_message_bytes 1,000,000) sends a
    300 KB event whole; the broker refuses it and the minimal form is acknowledged instead
    (a producer without idempotence: see the next test)."""
    codec = AvroCodec.from_directory()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        publisher = OutcomePublisher(producer, codec, settings)
        metadata = await (await publisher.send(_event_of_300_kb()))
    finally:
        await producer.stop()
    assert metadata.topic == settings.completed_topic
    [record] = await _read_all(settings.bootstrap_servers, settings.completed_topic)
    assert _headers(record)[TRUNCATED] == b"metadata"
    _, event = codec.decode(record.value)
    assert event["correlation_id"] == "corr-300kb"
    assert list(event["metadata"]) == ["pa.cut"]


async def test_aiokafka_cannot_resend_on_an_idempotent_producer_after_a_refusal(
    settings: KafkaSettings,
) -> None:
    """aiokafka 0.14 does not rewind a partition's sequence after the broker refused a
    batch, so once the idempotent producer has written to the partition, the minimal form
    and every later record to it fail with OutOfOrderSequenceNumber (why the publishers must
    be given the topics' limits; when this test fails, aiokafka was fixed)."""
    codec = AvroCodec.from_directory()
    small = _event_of_300_kb()
    without_metadata = replace(small.outcome.info, metadata={})
    small = replace(small, outcome=replace(small.outcome, info=without_metadata))
    async with open_producer(settings) as producer:
        publisher = OutcomePublisher(producer, codec, settings)
        await (await publisher.send(small))
        delivery = await publisher.send(_event_of_300_kb())
        with pytest.raises(OutOfOrderSequenceNumber):
            await delivery
        with pytest.raises(OutOfOrderSequenceNumber):
            await (await publisher.send(small))
    assert len(await _read_all(settings.bootstrap_servers, settings.completed_topic)) == 1


async def test_a_dead_letter_of_a_900_kb_value_is_acknowledged_whole(
    settings: KafkaSettings,
) -> None:
    """A 900 KB record fits a default topic with its metadata: it is copied byte for byte."""
    value = b"\xc3\x01" + bytes(range(256)) * 3515
    async with open_producer(settings) as producer:
        publisher = DeadLetterPublisher(producer, settings, settings.group_id, "0.1.0")
        delivery = await publisher.send(
            topic=settings.command_topic,
            partition=0,
            offset=11,
            timestamp_ms=0,
            key=b"acct-1",
            value=value,
            headers=[("traceparent", b"00-abc")],
            failure=FAILURE,
        )
        await delivery
    [record] = await _read_all(settings.bootstrap_servers, settings.dead_letter_topic)
    assert (record.key, record.value) == (b"acct-1", value)
    meta = parse_headers(record.headers)
    assert meta.truncated == ()
    assert (meta.reason, meta.original_offset) == ("CORRUPT_AVRO", 11)


async def test_a_dead_letter_just_under_the_brokers_limit_is_acknowledged_cut_down(
    settings: KafkaSettings,
) -> None:
    """A record that only just fitted its own topic no longer fits with the dead-letter
    headers: it is acknowledged with its value described by length and SHA-256."""
    value = b"v" * 1_040_000
    async with open_producer(settings) as producer:
        publisher = DeadLetterPublisher(producer, settings, settings.group_id, "0.1.0")
        delivery = await publisher.send(
            topic=settings.command_topic,
            partition=0,
            offset=12,
            timestamp_ms=0,
            key=None,
            value=value,
            headers=[],
            failure=FAILURE,
            target="review",
        )
        await delivery
    [record] = await _read_all(settings.bootstrap_servers, settings.review_topic)
    assert (record.key, record.value) == (None, b"")
    meta = parse_headers(record.headers)
    assert meta.value_cut
    assert meta.original_value_bytes == 1_040_000


async def test_each_topics_message_limit_is_read_from_the_broker(settings: KafkaSettings) -> None:
    """topic_message_limits reads the limit the broker applies to each topic: the 64 KiB set
    on the small topics, the broker's default on the others, nothing for a missing topic."""
    from service.kafka.clients import topic_message_limits

    names = [settings.completed_topic, settings.dead_letter_topic, "no-such-topic-here"]
    limits = await topic_message_limits(settings, names)
    assert limits[settings.completed_topic] == SMALL_TOPIC_BYTES
    assert limits[settings.dead_letter_topic] > 1_000_000
    assert "no-such-topic-here" not in limits
