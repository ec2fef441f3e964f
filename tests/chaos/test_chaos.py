"""The chaos suite: exactly-once effects while PAS misbehaves, the service is SIGKILLed and
the broker restarts.

Real broker, the real sandbox over a socket with faults (503s with and without
Recoverable, hangs past the client timeout, apply-then-drop, token-bucket 429s), the
service as child processes. The oracle is the sandbox ledger plus the outcome topics and
the dead-letter topic. A small run is part of the normal test command;
``pytest tests/chaos --chaos-full`` (or ``make chaos``) runs 5,000 commands.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.kafka import LocalKafka
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.faults import FaultConfig
from service.codec.avro import AvroCodec
from service.settings import Settings
from service.tools.dlq.kafka import scan_dead_letters
from service.tools.generate import generate_commands
from service.tools.outcomes import read_outcomes
from service.tools.send import send_commands
from tests.chaos.oracle import (
    FAULTS,
    SERVICE_ENV,
    applications_per_key,
    replay_and_settle,
    terminal_ids_per_key,
    wait_until,
)
from tests.e2e.harness import ServiceProcess, Topology, secure_sandbox
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(1500)]


async def test_chaos_exactly_once(
    kafka_bootstrap: str,
    local_kafka: LocalKafka | None,
    tmp_path: Path,
    dev_keyset: DevKeySet,
    chaos_size: int,
) -> None:
    """Under faults, SIGKILLs and a broker restart: nothing lost, nothing applied twice."""
    if local_kafka is None and os.environ.get("CI") == "true":
        pytest.fail("the chaos suite restarts the broker: it needs the broker it starts itself")
    rng = random.Random(2026)
    codec = AvroCodec.from_directory()
    topology = Topology(kafka_bootstrap)
    kafka = topology.kafka
    await create_topics(kafka_bootstrap, topology.topics(3))
    batch = generate_commands(
        chaos_size,
        duplicate_share=0.03,
        conflict_share=0.02,
        invalid_share=0.01,
        accounts=max(chaos_size // 10, 20),
        seed=99,
    )
    undecodable = [b"junk-%d" % n for n in range(max(chaos_size // 100, 3))]
    first_of_key: dict[str, dict[str, Any]] = {}
    for command in batch.commands:
        first_of_key.setdefault(command["idempotency_key"], command)
    valid_keys = set(first_of_key) - batch.invalid_keys
    extra = {
        **SERVICE_ENV,
        "PA_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "PA_KAFKA__REVIEW_TOPIC": kafka.review_topic,
    }
    kills = 0
    restarts_after_crash = 0
    config = secure_sandbox(dev_keyset, latency_ms=5, faults=FaultConfig.from_dict(FAULTS))
    async with run_sandbox(config) as sandbox:

        def start_service() -> ServiceProcess:
            return ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset, **extra)

        service = start_service()
        await service.start()
        sent = asyncio.create_task(
            send_commands(kafka, batch.commands, codec=codec, raw_values=undecodable)
        )
        # Three SIGKILLs at random moments, the broker restarted after the second.
        for round_number in range(3):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            await service.kill()
            kills += 1
            if round_number == 1 and local_kafka is not None:
                await asyncio.to_thread(local_kafka.restart)
            service = start_service()
            await service.start(ready_timeout_s=120)
        await sent

        async def settled() -> bool:
            nonlocal service, restarts_after_crash
            if service.process is not None and service.process.returncode is not None:
                restarts_after_crash += 1  # a crash (e.g. on the broker restart): start again
                service = start_service()
                await service.start(ready_timeout_s=120)
            outcomes = await read_outcomes(kafka, codec)
            decided = {e["idempotency_key"] for e in outcomes.originals()}
            return decided >= set(first_of_key)

        assert await wait_until(settled, 600), service.log_tail()

        # The faults stop; what was retryable is replayed from the dead-letter topic.
        sandbox.faults.replace(FaultConfig())
        settings = Settings(
            kafka=kafka,
            idempotency={"sqlite_path": tmp_path / "idempotency.sqlite3"},  # the service's store
        )
        report, outcomes = await replay_and_settle(settings, codec, valid_keys, service.log_tail)
        assert await service.terminate() == 0, service.log_tail()
        ledger = sandbox.ledger.entries()
        fault_counts = sandbox.faults.counts()
    letters = [letter async for letter in scan_dead_letters(kafka, kafka.dead_letter_topic)]

    # The oracle.
    decided = terminal_ids_per_key(outcomes)
    applied_per_key = applications_per_key(ledger, first_of_key)
    answered = {e["idempotency_key"] for e in outcomes.originals()}
    lost = [key for key in first_of_key if key not in answered]
    applied_twice = [key for key, n in applied_per_key.items() if n > 1]
    not_exactly_one = [key for key in valid_keys if len(decided.get(key, ())) != 1]
    dead_values = {letter.value for letter in letters}
    missing_from_dlt = [value for value in undecodable if value not in dead_values]
    completed = {e["idempotency_key"] for e in outcomes.completed if not e["duplicate"]}
    unknown = [
        e for e in outcomes.failed if not e["duplicate"] and e["reason_code"] == "OUTCOME_UNKNOWN"
    ]
    conflicts = [e for e in outcomes.failed if e["reason_code"] == "IDEMPOTENCY_CONFLICT"]
    applied_without_completion = [
        key for key in applied_per_key if key in valid_keys and key not in completed
    ]
    print(
        f"\nchaos: {len(batch.commands)} commands ({len(first_of_key)} keys,"
        f" {batch.duplicates} repeats, {batch.conflicts} conflicting, "
        f"{len(batch.invalid_keys)} invalid) + {len(undecodable)} undecodable;"
        f" {kills} SIGKILLs, broker restarted {'once' if local_kafka else 'never'},"
        f" {restarts_after_crash} restarts after a crash"
        f"\n  sandbox faults injected: {dict(sorted(fault_counts.items()))}"
        f"\n  replayed from the DLT: {report.tally}"
        f"\n  commands lost: {len(lost)}"
        f"\n  adjustments applied twice: {len(applied_twice)}"
        f"\n  valid commands without exactly one terminal outcome: {len(not_exactly_one)}"
        f"\n  undecodable records missing from the DLT: {len(missing_from_dlt)}"
        f"\n  completed: {len(completed)}, OUTCOME_UNKNOWN: {len(unknown)},"
        f" conflicts refused: {len(conflicts)}, ledger entries: {len(ledger)}"
    )
    assert lost == []
    assert applied_twice == []
    assert not_exactly_one == []
    assert missing_from_dlt == []
    assert applied_without_completion == []
    assert all(n == 1 for n in applied_per_key.values())
    assert len(conflicts) >= batch.conflicts
