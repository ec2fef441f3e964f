"""Pytest fixtures and helpers for tests that need a real Kafka broker.

Register from ``tests/conftest.py``::

    pytest_plugins = ["tests.kafka_support"]

Fixtures (session scope, so one broker serves the whole run):

``kafka_bootstrap``
    ``"host:port"`` of a broker, found in this order:
    1. ``$KAFKA_BOOTSTRAP_SERVERS``, when set: a broker someone else runs;
    2. a testcontainers ``KafkaContainer`` (image ``$KAFKA_TEST_IMAGE``), when a Docker engine
       answers a ping;
    3. a ``LocalKafka`` on a free port, started here from the cached jars and stopped at the end.
    When none works the tests that use it are skipped with the reasons, or fail when
    ``$CI`` is ``true``.
``local_kafka``
    The ``LocalKafka`` started in case 3 (for tests that restart the broker), else ``None``.
``kafka_under_test``
    Both of the above plus where the broker came from.

Helper: ``await create_topics(bootstrap, {"topic": partitions})`` creates topics (existing
ones with the same partition count are fine) and waits until every partition has a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.kafka import LocalKafka
from tests.service_support import Container, ExternalService

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
IMAGE_ENV = "KAFKA_TEST_IMAGE"
DEFAULT_IMAGE = "confluentinc/cp-kafka:8.1.0"  # Confluent Platform 8.1 ships Apache Kafka 4.1
KAFKA = ExternalService(
    "Kafka broker", BOOTSTRAP_ENV, env_example="=host:port", errors=LocalKafkaError
)


@dataclass(frozen=True)
class KafkaUnderTest:
    """The broker the test session talks to."""

    bootstrap_servers: str
    source: Literal["env", "container", "local"]
    local: LocalKafka | None = None


@pytest.fixture(scope="session")
def kafka_under_test() -> Iterator[KafkaUnderTest]:
    """Find or start one broker for the session; stop at the end whatever was started here."""
    yield from KAFKA.find_or_start(
        from_env=lambda servers: KafkaUnderTest(servers, "env"),
        container=Container(_kafka_container, _container_under_test),
        local=lambda: LocalKafka(port=0),
        from_local=lambda broker: KafkaUnderTest(broker.bootstrap_servers, "local", broker),
        local_label="local broker",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_under_test: KafkaUnderTest) -> str:
    """``host:port`` of the session's broker."""
    return kafka_under_test.bootstrap_servers


@pytest.fixture(scope="session")
def local_kafka(kafka_under_test: KafkaUnderTest) -> LocalKafka | None:
    """The broker this session started itself (it can be restarted), else None."""
    return kafka_under_test.local


@contextlib.contextmanager
def own_broker(**options: Any) -> Iterator[LocalKafka]:
    """A local broker of the caller's own (one a test may stop, start again or configure),
    on a free port, stopped at the end; when it cannot start, the test fails under CI and
    is skipped with the reason elsewhere."""
    label = "local broker (make kafka-jars fetches it)"
    with KAFKA.started(LocalKafka(port=0, **options), label) as broker:
        yield broker


def _kafka_container() -> Any:
    from testcontainers.community.kafka import KafkaContainer

    return KafkaContainer(os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)).with_kraft()


def _container_under_test(container: Any) -> KafkaUnderTest:
    return KafkaUnderTest(str(container.get_bootstrap_server()), "container")


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create ``{name: partitions}`` and wait until every partition has a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name, partitions in topics.items()]
        )
        failures = [
            f"{error[0]}: error {error[1]} {error[2] if len(error) > 2 else ''}".strip()
            for error in response.topic_errors
            if error[1] not in (0, TopicAlreadyExistsError.errno)
        ]
        if failures:
            raise RuntimeError("creating topics failed: " + "; ".join(failures))
        await _wait_for_leaders(admin, topics, timeout_s)
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topics: Mapping[str, int], timeout_s: float
) -> None:
    state: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                described = await admin.describe_topics(list(topics))
                state = {
                    topic["topic"]: _partition_state(topic, topics[topic["topic"]])
                    for topic in described
                }
                if len(state) == len(topics) and all(s == "ready" for s in state.values()):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise RuntimeError(f"topics not ready after {timeout_s} s: {state}") from None


def _partition_state(topic: dict[str, Any], expected: int) -> str:
    if topic["error_code"]:
        return f"error {topic['error_code']}"
    partitions = topic["partitions"]
    if len(partitions) != expected:
        return f"{len(partitions)} partitions, {expected} asked for"
    if any(partition["leader"] < 0 for partition in partitions):
        return "partitions without a leader"
    return "ready"
