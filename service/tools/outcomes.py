"""Reading every outcome event published so far (demo summary, tests, operators).

Read as a downstream consumer should: ``read_committed``, so events of a transaction that
is still open or was aborted (``PA_KAFKA__TRANSACTIONS``) are never counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.codec.avro import AvroCodec
from service.kafka.clients import partitions_of
from service.kafka.security import client_security
from service.settings import KafkaSettings


@dataclass
class OutcomeLog:
    """Outcome events keyed by kind, in the order read."""

    completed: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.completed) + len(self.failed)

    def originals(self) -> list[dict[str, Any]]:
        return [event for event in self.completed + self.failed if not event["duplicate"]]

    def duplicates(self) -> list[dict[str, Any]]:
        return [event for event in self.completed + self.failed if event["duplicate"]]


async def read_outcomes(settings: KafkaSettings, codec: AvroCodec) -> OutcomeLog:
    """Read both outcome topics from the beginning to their current end: the last stable
    offset, where the first transaction still open begins."""
    result = OutcomeLog()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        **client_security(settings),
    )
    topics = await partitions_of(settings, [settings.completed_topic, settings.failed_topic])
    partitions = [TopicPartition(t, number) for t, numbers in topics.items() for number in numbers]
    await consumer.start()
    try:
        if not partitions:
            return result
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                target = result.completed if tp.topic == settings.completed_topic else result.failed
                target.extend(codec.decode(message.value)[1] for message in messages)
            # The position, not the last record's offset: the offsets before the end may be
            # transaction markers and aborted records, which are never handed out.
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return result
    finally:
        await consumer.stop()


async def wait_for_outcomes(
    settings: KafkaSettings,
    codec: AvroCodec,
    expected_originals: int,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
) -> OutcomeLog:
    """Poll until ``expected_originals`` original outcomes exist (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = await read_outcomes(settings, codec)
        if len(outcomes.originals()) >= expected_originals or time.monotonic() >= deadline:
            return outcomes
        await asyncio.sleep(poll_s)
