"""End to end: commands of every schema version and framing, and a registry outage.

A real broker, the real sandbox, the service as a child process and a real schema registry
(Apicurio Registry, Confluent-compatible API; ``tests/registry_support.py``). Commands are
written as other teams' producers write them: schema v1 and v2, single-object (standard and
Apache avro-python/goavro fingerprints) and Confluent-framed with the registry's ids, and a
version this build does not ship (v3), registered under the command subject. Each is
processed once; outcome events go out Confluent-framed under ids the service registered.

The outage test stops answering (SIGSTOP) a registry of its own while commands whose
schema id the service has not cached arrive: their partition waits, nothing is
dead-lettered, readiness and the metrics say why, and once the registry answers again every
command is processed once.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastavro
import httpx
import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.codec.fingerprints import Style, fingerprint
from service.codec.framing import confluent_header, single_object_header
from service.codec.released import released_schemas
from service.kafka.clients import open_producer
from service.settings import KafkaSettings
from service.tools.send import command_key
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    ledger_per_correlation,
    metric_value,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics
from tests.registry_support import own_registry, registry_request

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

OCCURRED = datetime(2026, 11, 30, 4, 0, 0, tzinfo=UTC)

Encoder = Callable[[dict[str, Any]], bytes]


def released(version: int) -> dict[str, Any]:
    return next(
        s.raw
        for s in released_schemas()
        if (s.stem, s.version) == ("points_adjustment_requested", version)
    )


def v3() -> dict[str, Any]:
    """A version this build does not ship: v2 plus a field with a default."""
    schema = copy.deepcopy(released(2))
    schema["fields"].append({"name": "priority", "type": "int", "default": 0})
    return schema


def avro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


def single_object(schema: dict[str, Any], style: Style = "standard") -> Encoder:
    return lambda record: (
        single_object_header(fingerprint(schema, style)) + avro_body(schema, record)
    )


def confluent(schema: dict[str, Any], schema_id: int) -> Encoder:
    return lambda record: confluent_header(schema_id) + avro_body(schema, record)


def command(n: int, tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": f"{tag}-{n}",
        "bank_account_number": f"51234567890{n % 7:04d}000",
        "points_to_adjust": 10 + n,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": f"corr-{tag}-{n}",
        "requested_by": "other-team",
        "occurred_at": OCCURRED,
        "metadata": {},
        **extra,
    }


async def produce(kafka: KafkaSettings, records: list[tuple[dict[str, Any], Encoder]]) -> None:
    """Send each command as its encoder frames it, keyed by account as producers are told."""
    async with open_producer(kafka) as producer:
        futures = [
            await producer.send(kafka.command_topic, value=encode(cmd), key=command_key(cmd))
            for cmd, encode in records
        ]
        for future in futures:
            await future


def register(registry_url: str, subject: str, schema: dict[str, Any]) -> int:
    response = registry_request(
        registry_url,
        "POST",
        f"/subjects/{quote(subject, safe='')}/versions",
        {"schema": json.dumps(schema)},
    )
    response.raise_for_status()
    schema_id: int = response.json()["id"]
    return schema_id


def latest_id(registry_url: str, subject: str) -> int:
    response = registry_request(
        registry_url, "GET", f"/subjects/{quote(subject, safe='')}/versions/latest"
    )
    response.raise_for_status()
    schema_id: int = response.json()["id"]
    return schema_id


async def readyz(service: ServiceProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{service.metrics_port}/readyz")
        body: dict[str, Any] = response.json()
        return body


async def test_every_version_and_framing_of_a_command_is_processed_once(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """v1 and v2 single-object (standard, avro-python and goavro fingerprints), v1 and v2
    Confluent-framed, and v3 (unshipped, registered) single-object and Confluent-framed: each
    command one completed outcome, applied once; a Confluent id the
    registry does not have is dead-lettered as UNKNOWN_SCHEMA_ID; outcomes are
    Confluent-framed with the ids the service registered under the outcome subjects."""
    topology = Topology(kafka_bootstrap)
    kafka = topology.kafka
    await create_topics(kafka_bootstrap, topology.topics(2))
    subject = f"{kafka.command_topic}-value"
    v1_id = register(registry_url, subject, released(1))
    v2_id = register(registry_url, subject, released(2))
    v3_id = register(registry_url, subject, v3())
    ways: dict[str, tuple[Encoder, dict[str, Any]]] = {
        "v1-single": (single_object(released(1)), {}),
        "v1-avro-python": (single_object(released(1), "avro-python"), {}),
        "v2-single": (single_object(released(2)), {"channel": "web"}),
        "v2-goavro": (single_object(released(2), "goavro"), {"channel": "batch"}),
        "v1-confluent": (confluent(released(1), v1_id), {}),
        "v2-confluent": (confluent(released(2), v2_id), {"channel": "call-centre"}),
        "v3-single": (single_object(v3()), {"channel": "web", "priority": 2}),
        "v3-confluent": (confluent(v3(), v3_id), {"channel": "web", "priority": 1}),
    }
    records = [
        (command(n, tag, **extra), encode)
        for tag, (encode, extra) in ways.items()
        for n in range(5)
    ]
    unknown_id = max(v1_id, v2_id, v3_id) + 1000
    stray = command(99, "unknown-id")
    records.append((stray, confluent(released(2), unknown_id)))
    expected = {cmd["idempotency_key"] for cmd, _ in records} - {stray["idempotency_key"]}
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            tmp_path,
            dev_keyset,
            PA_SCHEMA_REGISTRY__URL=registry_url,
            PA_KAFKA__OUTCOME_FRAMING="confluent",
        )
        await service.start()
        try:
            await produce(kafka, records)
            reader = AvroCodec.from_directory().with_schema_ids(
                {
                    COMPLETED: latest_id(registry_url, f"{kafka.completed_topic}-value"),
                    FAILED: latest_id(registry_url, f"{kafka.failed_topic}-value"),
                }
            )
            outcomes = await wait_for_originals(kafka, reader, len(expected), 120)
            await asyncio.sleep(1)  # a straggling extra outcome (there must be none)
            outcomes = await wait_for_originals(kafka, reader, len(expected), 5)
            metrics = await service.metrics()
        finally:
            exit_code = await service.terminate()
        ledger = sandbox.ledger.entries()

    assert exit_code == 0, service.log_tail()
    per_key = originals_per_key(outcomes)
    assert set(per_key) == expected, service.log_tail()
    assert all(count == 1 for count in per_key.values())
    assert {e["idempotency_key"] for e in outcomes.completed} == expected
    applied = ledger_per_correlation(ledger)
    assert set(applied) == {f"corr-{key}" for key in expected}
    assert max(applied.values()) == 1
    assert (
        metric_value(
            metrics, "points_adjuster_undecodable_records_total", reason="UNKNOWN_SCHEMA_ID"
        )
        == 1
    )
    log = service.log_path.read_text(encoding="utf-8")
    assert log.count("registry.schema_registered") == 2  # the two outcome schemas
    assert "registry.subject_read" in log  # the v3 fingerprint was looked for


async def test_a_registry_outage_pauses_the_partition_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Registry frozen (SIGSTOP) while commands with an id not cached yet arrive: their
    partition waits (paused, /readyz records.registry, faults{part=registry} rising), none is
    dead-lettered, commands with a cached id on the other partition go through; once it
    answers again every command gets one outcome and is applied once."""
    topology = Topology(kafka_bootstrap)
    kafka = topology.kafka
    await create_topics(kafka_bootstrap, topology.topics(2))
    with own_registry() as registry:
        subject = f"{kafka.command_topic}-value"
        cached_id = register(registry.url, subject, released(2))
        async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
            service = ServiceProcess(
                topology,
                sandbox.base_url,
                tmp_path,
                dev_keyset,
                PA_SCHEMA_REGISTRY__URL=registry.url,
                PA_SCHEMA_REGISTRY__TIMEOUT_S="1",
                PA_SCHEMA_REGISTRY__MAX_RETRIES="0",
                PA_PROCESSING__FAULT_BACKOFF_MAX_S="2",
            )
            await service.start()
            try:
                codec = AvroCodec.from_directory()
                warm = [(command(n, "warm"), confluent(released(2), cached_id)) for n in range(6)]
                await produce(kafka, warm)
                await wait_for_originals(kafka, codec, len(warm), 60)
                uncached_id = register(registry.url, subject, released(1))
                registry.pause()
                try:
                    during = [
                        (command(n, "during"), confluent(released(1), uncached_id))
                        for n in range(8)
                    ] + [
                        (command(n, "cached"), confluent(released(2), cached_id)) for n in range(8)
                    ]
                    await produce(kafka, during)
                    reasons, metrics = await observe_outage(service)
                    held = await wait_for_originals(kafka, codec, 100, 3)
                finally:
                    registry.resume()
                every = warm + during
                outcomes = await wait_for_originals(kafka, codec, len(every), 90)
                await asyncio.sleep(1)
                outcomes = await wait_for_originals(kafka, codec, len(every), 5)
                after = await service.metrics()
            finally:
                exit_code = await service.terminate()
            ledger = sandbox.ledger.entries()

    assert exit_code == 0, service.log_tail()
    assert "records.registry" in reasons, reasons
    assert "RegistryUnavailable" in reasons["records.registry"]
    assert metric_value(metrics, "points_adjuster_faults_total", part="registry") >= 1
    assert metric_value(metrics, "points_adjuster_partitions_paused") >= 1
    waiting = {e["idempotency_key"] for e in held.originals()} & {
        cmd["idempotency_key"] for cmd, _ in during[:8]
    }
    assert not waiting, f"processed while the registry was frozen: {waiting}"
    per_key = originals_per_key(outcomes)
    assert set(per_key) == {cmd["idempotency_key"] for cmd, _ in every}, service.log_tail()
    assert all(count == 1 for count in per_key.values())
    assert max(ledger_per_correlation(ledger).values()) == 1
    assert len(ledger) == len(every)
    assert (
        sum(
            value
            for line in after.splitlines()
            if line.startswith("points_adjuster_dead_letters_total{")
            for value in [float(line.rpartition(" ")[2])]
        )
        == 0
    )
    assert "record.recovered" in service.log_path.read_text(encoding="utf-8")


async def observe_outage(service: ServiceProcess) -> tuple[dict[str, str], str]:
    """Wait (at most 30 s) until /readyz names records.registry; its reasons and /metrics."""
    deadline = time.monotonic() + 30
    reasons: dict[str, str] = {}
    while time.monotonic() < deadline:
        body = await readyz(service)
        reasons = body.get("reasons", {})
        if "records.registry" in reasons:
            return reasons, await service.metrics()
        await asyncio.sleep(0.3)
    return reasons, await service.metrics()
