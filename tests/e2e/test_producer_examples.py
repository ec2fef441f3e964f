"""The producer examples of docs/producers.md, run as other teams would run them, against the
real broker, the real service and (for the Confluent framing) the real schema registry: every
command they publish is applied and answered by a completed event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.jars import resolve_cache_dir
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from service.domain.command import account_ref
from tests.e2e.harness import ServiceProcess, Topology, secure_sandbox, wait_for_originals
from tests.kafka_support import create_topics
from tests.registry_support import unique_name

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PYTHON_EXAMPLE = ROOT / "examples" / "python" / "produce_command.py"
JAVA_EXAMPLE = ROOT / "examples" / "java"
SCHEMAS = ROOT / "schemas"
MAVEN_BUILD_TIMEOUT_S = 600


@dataclass
class RunningService:
    topology: Topology
    service: ServiceProcess


@contextlib.asynccontextmanager
async def _service(
    bootstrap: str, workdir: Path, keyset: DevKeySet, **env: str
) -> AsyncIterator[RunningService]:
    """The service on topics of its own, applying through the sandbox."""
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(2))
    async with run_sandbox(secure_sandbox(keyset)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, workdir, keyset, **env)
        await service.start()
        try:
            yield RunningService(topology, service)
        finally:
            assert await service.terminate() == 0, service.log_tail()


@pytest.fixture
async def running_service(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> AsyncIterator[RunningService]:
    """The service with its default framing of outcomes (single-object), no registry."""
    async with _service(kafka_bootstrap, tmp_path, dev_keyset) as running:
        yield running


@pytest.fixture
async def confluent_service(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path, dev_keyset: DevKeySet
) -> AsyncIterator[RunningService]:
    """The service with a registry, publishing outcomes in the Confluent wire format."""
    async with _service(
        kafka_bootstrap,
        tmp_path,
        dev_keyset,
        PA_SCHEMA_REGISTRY__URL=registry_url,
        PA_KAFKA__OUTCOME_FRAMING="confluent",
    ) as running:
        yield running


@pytest.fixture(scope="session")
def java_example(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Java example compiled with Maven (its repository cached under the jar cache):
    the command line that runs it."""
    found = {tool: shutil.which(tool) for tool in ("mvn", "java")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        message = f"the Java example needs {' and '.join(missing)} on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    project = tmp_path_factory.mktemp("java-example") / "produce-command"
    shutil.copytree(JAVA_EXAMPLE, project, ignore=shutil.ignore_patterns("target"))
    repository = resolve_cache_dir() / "maven-repo"
    build = subprocess.run(
        [
            str(found["mvn"]),
            "-q",
            "-B",
            "-Dstyle.color=never",
            f"-Dmaven.repo.local={repository}",
            "package",
            "dependency:build-classpath",
            "-Dmdep.outputFile=target/classpath.txt",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=MAVEN_BUILD_TIMEOUT_S,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    classpath = (project / "target" / "classpath.txt").read_text(encoding="utf-8").strip()
    return [
        "java",
        "-cp",
        f"{project / 'target' / 'classes'}:{classpath}",
        "example.ProduceCommand",
    ]


def _run(command: list[str]) -> list[str]:
    """Run an example; the idempotency keys it printed, one per command sent."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    keys = result.stdout.split()
    assert keys, result.stderr
    return keys


async def _assert_completed(running: RunningService, keys: list[str]) -> None:
    outcomes = await wait_for_originals(
        running.topology.kafka, AvroCodec.from_directory(), len(keys), 90
    )
    completed = {event["idempotency_key"]: event for event in outcomes.completed}
    assert set(completed) == set(keys), (outcomes.failed, running.service.log_tail())
    assert all(event["points_adjusted"] == 150 for event in completed.values())
    assert not outcomes.failed


async def test_python_example_single_object(running_service: RunningService) -> None:
    keys = _run(
        [
            sys.executable,
            str(PYTHON_EXAMPLE),
            "--bootstrap-servers",
            running_service.topology.bootstrap,
            "--topic",
            running_service.topology.kafka.command_topic,
            "--framing",
            "single-object",
            "--points",
            "150",
            "--count",
            "3",
        ]
    )
    assert len(keys) == 3
    await _assert_completed(running_service, keys)


@pytest.mark.parametrize("version", [1, 2])
async def test_java_example_single_object_with_each_released_schema(
    running_service: RunningService, java_example: list[str], version: int
) -> None:
    schema = SCHEMAS / "released" / f"points_adjustment_requested.v{version}.avsc"
    keys = _run(
        [
            *java_example,
            "-bootstrap-servers",
            running_service.topology.bootstrap,
            "-topic",
            running_service.topology.kafka.command_topic,
            "-schema",
            str(schema),
            "-points",
            "150",
            "-count",
            "2",
        ]
    )
    assert len(keys) == 2
    await _assert_completed(running_service, keys)


def _read_completed_with_confluent(
    topic: str, bootstrap: str, registry_url: str, expected: int, timeout_s: float = 90
) -> dict[str, dict[str, Any]]:
    """Completed events read as another team would: confluent-kafka's consumer and its
    AvroDeserializer fetching the writer schema from the registry by the id in each record."""
    registry = SchemaRegistryClient({"url": registry_url})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("example-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    events: dict[str, dict[str, Any]] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(events) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            assert value[:1] == b"\x00"  # the Confluent wire format
            event = deserialize(value, SerializationContext(topic, MessageField.VALUE))
            assert isinstance(event, dict)
            events[str(event["idempotency_key"])] = event
    finally:
        consumer.close()
        registry.close()
    return events


@pytest.mark.registry
async def test_python_example_with_confluents_serializer_and_deserializer(
    confluent_service: RunningService, registry_url: str
) -> None:
    topology = confluent_service.topology
    keys = _run(
        [
            sys.executable,
            str(PYTHON_EXAMPLE),
            "--bootstrap-servers",
            topology.bootstrap,
            "--topic",
            topology.kafka.command_topic,
            "--registry-url",
            registry_url,
            "--points",
            "150",
            "--count",
            "3",
        ]
    )
    events = await asyncio.to_thread(
        _read_completed_with_confluent,
        topology.kafka.completed_topic,
        topology.bootstrap,
        registry_url,
        len(keys),
    )
    assert set(events) == set(keys), confluent_service.service.log_tail()
    assert all(event["points_adjusted"] == 150 for event in events.values())
    assert all(event["account_ref"] == account_ref("5500000000000004") for event in events.values())


@pytest.mark.registry
async def test_java_example_with_the_confluent_framing_by_hand(
    confluent_service: RunningService, registry_url: str, java_example: list[str]
) -> None:
    topology = confluent_service.topology
    keys = _run(
        [
            *java_example,
            "-bootstrap-servers",
            topology.bootstrap,
            "-topic",
            topology.kafka.command_topic,
            "-schema",
            str(SCHEMAS / "points_adjustment_requested.avsc"),
            "-framing",
            "confluent",
            "-registry-url",
            registry_url,
            "-points",
            "150",
            "-count",
            "2",
        ]
    )
    events = await asyncio.to_thread(
        _read_completed_with_confluent,
        topology.kafka.completed_topic,
        topology.bootstrap,
        registry_url,
        len(keys),
    )
    assert set(events) == set(keys), confluent_service.service.log_tail()
