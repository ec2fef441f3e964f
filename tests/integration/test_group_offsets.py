"""``committed_offsets``: the consumer group's committed offsets, read from the session's real
broker (and a clear StartupError when there is no broker). The broker's refusals that the
real broker cannot be made to produce on demand are played by a fake admin client."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CoordinatorLoadInProgressError, GroupAuthorizationFailedError
from aiokafka.structs import OffsetAndMetadata

from pa_devkit.localinfra.broker_config import free_port
from service.errors import StartupError
from service.kafka.groups import committed_offsets
from service.settings import KafkaSettings
from tests.kafka_support import create_topics


def settings_for(bootstrap: str, topic: str, group: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap, command_topic=topic, group_id=group, startup_timeout_s=30.0
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` as the service's consumer does (manual commit)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition in range(partitions):
            for i in range(per_partition):
                await producer.send_and_wait(topic, f"r-{i}".encode(), partition=partition)
    finally:
        await producer.stop()


@pytest.mark.kafka
async def test_a_fresh_group_has_no_committed_offsets(kafka_bootstrap: str) -> None:
    """A group that never committed gives an empty answer on an existing topic."""
    topic = unique("continuity-fresh")
    await create_topics(kafka_bootstrap, {topic: 3})
    offsets = await committed_offsets(settings_for(kafka_bootstrap, topic, unique("group")))
    assert offsets == {}


@pytest.mark.kafka
async def test_committed_offsets_are_returned_by_partition(kafka_bootstrap: str) -> None:
    """After a consumer committed offsets on two of three partitions, those two come back, by
    partition number; the uncommitted partition is left out."""
    topic = unique("continuity-committed")
    group = unique("group")
    await create_topics(kafka_bootstrap, {topic: 3})
    await produce(kafka_bootstrap, topic, partitions=3, per_partition=4)
    await commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 2): 3})
    offsets = await committed_offsets(settings_for(kafka_bootstrap, topic, group))
    assert offsets == {0: 4, 2: 3}


@pytest.mark.kafka
async def test_offsets_of_other_topics_and_groups_are_not_counted(kafka_bootstrap: str) -> None:
    """Only the command topic of the configured group counts: another topic's commits of the
    same group, and another group's commits on the command topic, give an empty answer."""
    topic = unique("continuity-command")
    other_topic = unique("continuity-other")
    group = unique("group")
    await create_topics(kafka_bootstrap, {topic: 2, other_topic: 2})
    await commit(kafka_bootstrap, group, {TopicPartition(other_topic, 1): 9})
    await commit(kafka_bootstrap, unique("another-group"), {TopicPartition(topic, 0): 5})
    assert await committed_offsets(settings_for(kafka_bootstrap, topic, group)) == {}


@pytest.mark.kafka
async def test_a_missing_topic_has_no_offsets_and_is_not_created(kafka_bootstrap: str) -> None:
    """Asking about a topic that does not exist gives an empty answer and does not make the
    broker auto-create it."""
    topic = unique("continuity-missing")
    settings = settings_for(kafka_bootstrap, topic, unique("group"))
    assert await committed_offsets(settings) == {}
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        assert topic not in await consumer.topics()
    finally:
        await consumer.stop()


async def test_no_broker_is_a_startup_error_naming_the_setting() -> None:
    """With nothing listening at the bootstrap address, committed_offsets raises StartupError
    naming the group, the topic and PA_KAFKA__BOOTSTRAP_SERVERS, well within the timeout."""
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    settings = KafkaSettings(
        bootstrap_servers=address, group_id="g-none", command_topic="t-none", startup_timeout_s=5
    )
    started = time.monotonic()
    with pytest.raises(StartupError) as caught:
        await committed_offsets(settings)
    assert time.monotonic() - started < 10
    assert caught.value.setting == "PA_KAFKA__BOOTSTRAP_SERVERS"
    message = str(caught.value)
    assert address in message
    assert "g-none" in message
    assert "t-none" in message


# -- refusals, played by a fake admin client -------------------------------------------------

Answer = dict[TopicPartition, OffsetAndMetadata] | Exception


class FakeAdmin:
    """Answers as AIOKafkaAdminClient does for topic "t" of two partitions; each call of
    list_consumer_group_offsets gives the next of ``answers`` (the last one repeats)."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.asked = 0
        self.closed = False

    def __call__(self, **kwargs: Any) -> FakeAdmin:
        return self

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True

    async def list_topics(self) -> list[str]:
        return ["t"]

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": "t", "error_code": 0, "partitions": [{"partition": 0}, {"partition": 1}]}]

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


FULL: Answer = {
    TopicPartition("t", 0): OffsetAndMetadata(12, ""),
    TopicPartition("t", 1): OffsetAndMetadata(-1, ""),
}
REFUSED: Answer = {}  # what aiokafka makes of an answer with only a group-level error code
FAKE_SETTINGS = KafkaSettings(command_topic="t", group_id="g", startup_timeout_s=1.5)


async def test_an_answer_refused_as_a_whole_is_asked_again_not_taken_as_empty() -> None:
    """An answer without the partitions asked for (the coordinator refused the request, which
    aiokafka turns into an empty answer) is not "no offsets": it is asked again."""
    admin = FakeAdmin([REFUSED, FULL])
    assert await committed_offsets(FAKE_SETTINGS, admin_client=admin) == {0: 12}
    assert admin.asked == 2
    assert admin.closed


async def test_a_retriable_kafka_error_is_asked_again() -> None:
    """A retriable error (the coordinator still loading) is retried until an answer comes."""
    admin = FakeAdmin([CoordinatorLoadInProgressError(), FULL])
    assert await committed_offsets(FAKE_SETTINGS, admin_client=admin) == {0: 12}
    assert admin.asked == 2


async def test_refusals_until_the_timeout_are_a_startup_error() -> None:
    """When the broker keeps refusing until startup_timeout_s, StartupError says so and why."""
    admin = FakeAdmin([REFUSED])
    with pytest.raises(StartupError, match=r"no answer within 1\.5 s") as caught:
        await committed_offsets(FAKE_SETTINGS, admin_client=admin)
    assert "without partitions [0, 1]" in str(caught.value)
    assert admin.closed


async def test_a_non_retriable_kafka_error_is_a_startup_error_at_once() -> None:
    """A refusal that will not change (not authorised for the group) fails at once."""
    admin = FakeAdmin([GroupAuthorizationFailedError()])
    started = time.monotonic()
    with pytest.raises(StartupError, match="refused to give the committed offsets"):
        await committed_offsets(FAKE_SETTINGS, admin_client=admin)
    assert time.monotonic() - started < 1.0
    assert admin.asked == 1
