"""The service's transactional producer (``open_transactions``) against the session's real
Kafka 4.x broker: what the runner relies on when it commits outcomes and offsets together and
replaces the producer after a failure.

- a transaction's records and the group's offset become visible together;
- ``renew`` after a failure ends the open transaction: its records are never seen by
  ``read_committed`` readers and its offset is never committed, and the new producer's
  transactions go through;
- a restarted instance (the same group instance id, so the same transactional id) fences its
  predecessor and aborts its open transaction before it returns from its start.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from service.kafka.clients import open_transactions
from service.settings import KafkaSettings
from tests.integration.test_kafka_transactions import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    eventually,
    group_offsets,
    values_seen,
)
from tests.kafka_support import create_topics

pytestmark = pytest.mark.kafka


def settings(bootstrap: str, instance: str | None = None) -> tuple[KafkaSettings, str, str]:
    """Settings with a topic and a group of their own; also the topic and the group."""
    suffix = uuid.uuid4().hex[:8]
    group, topic = f"pa-{suffix}", f"outcomes-{suffix}"
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        group_id=group,
        group_instance_id=instance,
        transaction_timeout_ms=10_000,
    )
    return kafka, topic, group


async def test_records_and_offsets_commit_together_and_a_renewal_aborts_the_open_one(
    kafka_bootstrap: str,
) -> None:
    """A committed transaction shows its record and commits the group's offset. A second one
    is left open, as a failure would leave it; after ``renew`` its record is never visible to
    ``read_committed`` readers, its offset never committed, and the new producer's
    transaction goes through."""
    kafka, topic, group = settings(kafka_bootstrap)
    await create_topics(kafka_bootstrap, {topic: 1, f"{topic}-commands": 1})
    commands = TopicPartition(f"{topic}-commands", 0)
    outcomes = TopicPartition(topic, 0)
    async with open_transactions(kafka) as transactions:
        await transactions.begin()
        await (await transactions.send(topic, value=b"first", partition=0))
        await transactions.send_offsets({commands: 1})
        await transactions.commit()

        await transactions.begin()
        await (await transactions.send(topic, value=b"abandoned", partition=0))
        await transactions.send_offsets({commands: 2})
        await transactions.renew()  # the runner's answer to any failure

        await transactions.begin()
        await (await transactions.send(topic, value=b"again", partition=0))
        await transactions.send_offsets({commands: 3})
        await transactions.commit()
        assert transactions.generation == 2

    wanted = [b"first", b"again"]
    assert await eventually(lambda: values_seen(kafka_bootstrap, outcomes, READ_COMMITTED), wanted)
    assert b"abandoned" in await values_seen(kafka_bootstrap, outcomes, READ_UNCOMMITTED)
    assert await group_offsets(kafka_bootstrap, group) == {commands: 3}


async def test_a_restarted_instance_fences_its_predecessor_and_aborts_its_transaction(
    kafka_bootstrap: str,
) -> None:
    """The same group instance id, so the same transactional id: when the successor has
    started, the predecessor's open transaction is aborted (its record never visible, its
    offset never committed) and the predecessor is fenced."""
    kafka, topic, group = settings(kafka_bootstrap, instance="points-adjuster-0")
    await create_topics(kafka_bootstrap, {topic: 1, f"{topic}-commands": 1})
    commands = TopicPartition(f"{topic}-commands", 0)
    outcomes = TopicPartition(topic, 0)
    async with open_transactions(kafka) as predecessor:
        await predecessor.begin()
        await (await predecessor.send(topic, value=b"zombie", partition=0))
        await predecessor.send_offsets({commands: 5})
        async with open_transactions(kafka) as successor:
            await successor.begin()
            await (await successor.send(topic, value=b"successor", partition=0))
            await successor.send_offsets({commands: 1})
            await successor.commit()
            with pytest.raises(ProducerFenced):
                await predecessor.commit()

    wanted = [b"successor"]
    assert await eventually(lambda: values_seen(kafka_bootstrap, outcomes, READ_COMMITTED), wanted)
    assert await group_offsets(kafka_bootstrap, group) == {commands: 1}
