"""Static membership (``PA_KAFKA__GROUP_INSTANCE_ID``) against the session's real broker.

The Helm chart gives each pod its name as the group instance id. What that buys is seen from
the broker: a static member that stops does not leave its group (no LeaveGroup), so the pod
that replaces it under the same name takes its partitions back without a rebalance, while a
dynamic member's group is empty as soon as it stops. DescribeGroups (up to v3 in aiokafka)
does not report instance ids, so the membership shows in the group's state and members.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.kafka.clients import open_consumer
from service.settings import KafkaSettings
from tests.kafka_support import create_topics


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for number, value in enumerate(values):
            await producer.send_and_wait(topic, value, partition=number % 2)
    finally:
        await producer.stop()


async def consume(consumer: AIOKafkaConsumer, topic: str, count: int) -> list[bytes]:
    """Subscribe, read ``count`` records (within 30 s) and commit what was read."""
    consumer.subscribe([topic])
    values: list[bytes] = []
    async with asyncio.timeout(30):
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=500)
            values.extend(record.value for records in batches.values() for record in records)
    await consumer.commit()
    return values


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """The group's state and its number of members, as the broker describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.groups
    _error_code, _group, state, _protocol_type, _protocol, members, *_ = described
    return state, len(members)


@pytest.mark.kafka
async def test_a_static_member_consumes_and_its_successor_takes_over_without_leaving(
    kafka_bootstrap: str,
) -> None:
    """A consumer with a group instance id joins and consumes; stopped, it stays a member of
    its group, and a new consumer under the same id resumes from the committed offsets."""
    topic = unique("static-membership")
    await create_topics(kafka_bootstrap, {topic: 2})
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        command_topic=topic,
        group_id=unique("group"),
        group_instance_id="points-adjuster-0",
        startup_timeout_s=30.0,
    )
    await produce(kafka_bootstrap, topic, [b"a", b"b", b"c", b"d"])
    async with open_consumer(settings) as consumer:
        assert sorted(await consume(consumer, topic, 4)) == [b"a", b"b", b"c", b"d"]
    assert await group_state(kafka_bootstrap, settings.group_id) == ("Stable", 1)

    await produce(kafka_bootstrap, topic, [b"e", b"f"])
    async with open_consumer(settings) as successor:
        assert sorted(await consume(successor, topic, 2)) == [b"e", b"f"]
    assert await group_state(kafka_bootstrap, settings.group_id) == ("Stable", 1)


@pytest.mark.kafka
async def test_a_tool_reading_with_its_own_group_is_a_dynamic_member(
    kafka_bootstrap: str,
) -> None:
    """A consumer opened with a group of its own (as ``dlq replay`` does) ignores the instance
    id: it leaves its group when it stops, so the group is empty afterwards."""
    topic = unique("static-membership-tool")
    await create_topics(kafka_bootstrap, {topic: 2})
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        command_topic=topic,
        group_instance_id="points-adjuster-0",
        startup_timeout_s=30.0,
    )
    tool_group = unique("tool-group")
    await produce(kafka_bootstrap, topic, [b"a", b"b"])
    async with open_consumer(settings, group_id=tool_group) as consumer:
        assert sorted(await consume(consumer, topic, 2)) == [b"a", b"b"]
    assert await group_state(kafka_bootstrap, tool_group) == ("Empty", 0)


class Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Counts what a member is told to give up, and what it is given."""

    def __init__(self) -> None:
        self.revoked: list[set[TopicPartition]] = []
        self.assigned: list[set[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            self.revoked.append(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


async def wait_assigned(consumer: AIOKafkaConsumer, timeout_s: float = 30.0) -> set[TopicPartition]:
    async with asyncio.timeout(timeout_s):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
    return set(consumer.assignment())


@pytest.mark.kafka
async def test_a_restart_within_the_session_timeout_keeps_every_assignment(
    kafka_bootstrap: str,
) -> None:
    """Two static members (pods 0 and 1) share four partitions. Pod 0 stops and a successor
    under its name starts within the session timeout: it gets pod 0's partitions back, and
    pod 1 is never asked to give up any of its own: a rolling restart is not a rebalance."""
    topic = unique("static-restart")
    await create_topics(kafka_bootstrap, {topic: 4})
    group = unique("group")

    def member(name: str) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            command_topic=topic,
            group_id=group,
            group_instance_id=name,
            session_timeout_ms=30_000,
            startup_timeout_s=30.0,
        )

    steady = Revocations()
    async with open_consumer(member("points-adjuster-1")) as pod1:
        pod1.subscribe([topic], listener=steady)
        async with open_consumer(member("points-adjuster-0")) as pod0:
            pod0.subscribe([topic])
            async with asyncio.timeout(60):
                while True:  # both members in, the four partitions split between them
                    await asyncio.gather(pod0.getmany(timeout_ms=200), pod1.getmany(timeout_ms=200))
                    first, second = set(pod0.assignment()), set(pod1.assignment())
                    if first and second and len(first | second) == 4:
                        break
        revoked_before_restart = len(steady.revoked)
        async with open_consumer(member("points-adjuster-0")) as successor:
            successor.subscribe([topic])
            taken_back = await wait_assigned(successor)
            for _ in range(10):  # give a rebalance, were there one, time to reach pod 1
                await asyncio.gather(
                    successor.getmany(timeout_ms=200), pod1.getmany(timeout_ms=200)
                )
            assert taken_back == first
            assert set(pod1.assignment()) == second
            assert len(steady.revoked) == revoked_before_restart
        assert await group_state(kafka_bootstrap, group) == ("Stable", 2)
