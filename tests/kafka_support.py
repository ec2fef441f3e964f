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
import gc
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.kafka import LocalKafka

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
IMAGE_ENV = "KAFKA_TEST_IMAGE"
DEFAULT_IMAGE = "confluentinc/cp-kafka:8.1.0"  # Confluent Platform 8.1 ships Apache Kafka 4.1


@dataclass(frozen=True)
class KafkaUnderTest:
    """The broker the test session talks to."""

    bootstrap_servers: str
    source: Literal["env", "container", "local"]
    local: LocalKafka | None = None


@pytest.fixture(scope="session")
def kafka_under_test() -> Iterator[KafkaUnderTest]:
    """Find or start one broker for the session; stop at the end whatever was started here."""
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        yield KafkaUnderTest(configured, "env")
        return
    reasons: list[str] = []
    container = _start_container(reasons)
    if container is not None:
        try:
            yield KafkaUnderTest(str(container.get_bootstrap_server()), "container")
        finally:
            container.stop()
        return
    broker = LocalKafka(port=0)
    failure: LocalKafkaError | None = None
    try:
        broker.start()
    except LocalKafkaError as exc:
        failure = exc
    if failure is not None:  # outside the except block: no chained traceback in the report
        _unavailable([*reasons, f"local broker: {failure}"])
    try:
        yield KafkaUnderTest(broker.bootstrap_servers, "local", broker)
    finally:
        broker.stop()


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
    broker = LocalKafka(port=0, **options)
    failure: LocalKafkaError | None = None
    try:
        broker.start()
    except LocalKafkaError as exc:
        failure = exc
    if failure is not None:  # outside the except block: no chained traceback in the report
        _unavailable([f"local broker (make kafka-jars fetches it): {failure}"])
    try:
        yield broker
    finally:
        broker.stop()


def _unavailable(reasons: list[str]) -> NoReturn:
    header = f"no Kafka broker for the tests (set {BOOTSTRAP_ENV}=host:port to use a running one):"
    message = "\n- ".join([header, *reasons])
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping, else why not."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return "no Docker engine (no DOCKER_HOST, no /var/run/docker.sock)"
    reason: str | None = None
    # A failed connection leaves an unclosed socket behind; collect it here, quietly, rather
    # than let its ResourceWarning surface in some later test as an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure means "no usable engine"
            reason = f"no Docker engine answers ({type(exc).__name__}: {exc})"
        gc.collect()
    return reason


def _start_container(reasons: list[str]) -> Any | None:
    """A started testcontainers KafkaContainer, or None with the reason appended."""
    reason = _docker_unavailable_reason()
    if reason is not None:
        reasons.append(f"testcontainers: {reason}")
        return None
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError as exc:
        reasons.append(f"testcontainers: not importable ({exc})")
        return None
    container = KafkaContainer(os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)).with_kraft()
    try:
        container.start()
    except Exception as exc:  # image pull or container start failed: fall back
        reasons.append(f"testcontainers: the container did not start ({exc})")
        with contextlib.suppress(Exception):
            container.stop()
        return None
    return container


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
