"""aiokafka against the real broker of the session (see tests/kafka_support.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from pa_devkit.localinfra.kafka import LocalKafka
from tests.kafka_support import create_topics

pytestmark = pytest.mark.kafka

PARTITIONS = 3
MESSAGES = 50
# Ten account-like keys; murmur2 spreads them over all three partitions (asserted below).
KEYS = [f"account-{n:04d}".encode() for n in range(10)]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def _produce(
    bootstrap: str, topic: str, numbers: range
) -> list[tuple[bytes, bytes, int, int]]:
    """Send one keyed message per number, idempotently; (key, value, partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        pending = []
        for n in numbers:
            key, value = KEYS[n % len(KEYS)], f"adjustment-{n:03d}".encode()
            pending.append((key, value, await producer.send(topic, value=value, key=key)))
        results = []
        for key, value, future in pending:
            metadata = await future
            results.append((key, value, metadata.partition, metadata.offset))
        return results
    finally:
        await producer.stop()


async def _consume(consumer: AIOKafkaConsumer, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(60):
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    return records


async def test_keyed_messages_round_trip_through_a_manual_commit_group(
    kafka_bootstrap: str,
) -> None:
    """Fifty keyed messages sent with acks=all and idempotence to a 3-partition topic all come
    back through a manual-commit group, each key on one stable partition, and the commit
    records each partition's end offset."""
    topic, group = _unique("it-roundtrip"), _unique("it-group")
    await create_topics(kafka_bootstrap, {topic: PARTITIONS})

    sent = await _produce(kafka_bootstrap, topic, range(MESSAGES))

    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for key, _value, partition, _offset in sent:
        partitions_of_key[key].add(partition)
    assert all(len(found) == 1 for found in partitions_of_key.values()), partitions_of_key
    assert {key: found.pop() for key, found in partitions_of_key.items()} == {
        key: _java_partition(key, PARTITIONS) for key in KEYS
    }
    per_partition: dict[int, int] = defaultdict(int)
    for _key, _value, partition, _offset in sent:
        per_partition[partition] += 1
    assert set(per_partition) == set(range(PARTITIONS)), "the keys must cover every partition"

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        records = await _consume(consumer, MESSAGES)
        await consumer.commit()
        committed = {
            p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)
        }
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()

    assert len(records) == MESSAGES
    produced = {(key, value, partition, offset) for key, value, partition, offset in sent}
    consumed = {(r.key, r.value, r.partition, r.offset) for r in records}
    assert consumed == produced
    for partition in range(PARTITIONS):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(per_partition[partition])), "contiguous, in order"
    assert committed == dict(per_partition)
    assert {tp.partition: offset for tp, offset in ends.items()} == dict(per_partition)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        await admin.start()
        stored = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert {tp.partition: meta.offset for tp, meta in stored.items()} == dict(per_partition)


async def test_committed_offsets_and_messages_survive_a_broker_restart(
    kafka_bootstrap: str, local_kafka: LocalKafka | None
) -> None:
    """After LocalKafka.restart() on the same port a group resumes from its committed offsets
    and the broker takes new messages."""
    if local_kafka is None:
        pytest.skip("the session's broker was not started by this test run: cannot restart it")
    topic, group = _unique("it-restart"), _unique("it-group")
    await create_topics(kafka_bootstrap, {topic: PARTITIONS})
    await _produce(kafka_bootstrap, topic, range(12))

    def make_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first = make_consumer()
    await first.start()
    try:
        assert len(await _consume(first, 12)) == 12
        await first.commit()
    finally:
        await first.stop()

    await asyncio.to_thread(local_kafka.restart)
    assert local_kafka.bootstrap_servers == kafka_bootstrap

    await _produce(kafka_bootstrap, topic, range(12, 18))
    second = make_consumer()
    await second.start()
    try:
        after_restart = await _consume(second, 6)
        late = await second.getmany(timeout_ms=1000)
    finally:
        await second.stop()
    assert sorted(r.value for r in after_restart) == [
        f"adjustment-{n:03d}".encode() for n in range(12, 18)
    ], "only the messages sent after the commit are delivered"
    assert not any(late.values()), "nothing committed before the restart comes back"
