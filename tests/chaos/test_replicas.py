"""The multi-replica kill test: service replicas in one consumer group share one idempotency
store (PostgreSQL, or Redis) while PAS misbehaves; one replica is SIGKILLed mid-stream and a
new one joins the group. A credit still lands exactly once, and under a reused key the first
command written wins.

Real broker with a 12-partition command topic, the sandbox over a socket with the chaos
suite's faults (tests/chaos/oracle.py), the service as three child processes and then a
fourth. The oracle is the sandbox ledger plus the outcome and dead-letter topics, as in
tests/chaos/test_chaos.py. The normal test command runs 300 commands per store;
``--chaos-full`` (``make chaos``) runs 3,000.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pa_devkit.keys import DevKeySet
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
    ledger_entries_per_key,
    replay_and_settle,
    terminal_ids_per_key,
    wait_until,
)
from tests.e2e.harness import ServiceProcess, Topology, metric_value, secure_sandbox
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(1500)]

PARTITIONS = 12
REPLICAS = 3
SMALL = 300
FULL = 3000
JOIN_DELAY_S = 3.0
"""How long after the SIGKILL the fourth replica is started."""


@dataclass(frozen=True)
class SharedStore:
    """The idempotency store every replica and the replay tool open."""

    kind: str
    env: dict[str, str]
    """The PA_IDEMPOTENCY__* variables of the replicas."""
    settings: dict[str, Any]
    """The same as ``Settings(idempotency=...)``, for the replay tool."""

    @classmethod
    def postgres(cls, dsn: str) -> SharedStore:
        return cls("postgresql", {"PA_IDEMPOTENCY__DSN": dsn}, {"dsn": dsn})

    @classmethod
    def redis(cls, url: str) -> SharedStore:
        prefix = f"pa-replicas-{uuid.uuid4().hex[:8]}"  # the session's server is shared
        env = {"PA_IDEMPOTENCY__DSN": url, "PA_IDEMPOTENCY__REDIS_PREFIX": prefix}
        return cls("redis", env, {"dsn": url, "redis_prefix": prefix})


@dataclass(frozen=True)
class Victim:
    """The replica SIGKILLed, as its metrics showed it just before."""

    name: str
    partitions: int
    in_flight: int
    consumed: int
    answered_share: float


@pytest.fixture
def replica_size(request: pytest.FixtureRequest) -> int:
    """How many commands the replica test sends."""
    return FULL if request.config.getoption("--chaos-full") else SMALL


@pytest.mark.postgres
async def test_replicas_sharing_postgres(
    kafka_bootstrap: str,
    tmp_path: Path,
    dev_keyset: DevKeySet,
    replica_size: int,
    fresh_postgres_dsn: str,
) -> None:
    """Replicas sharing PostgreSQL, one SIGKILLed and one added: nothing lost, nothing twice,
    the first command under a key wins."""
    store = SharedStore.postgres(fresh_postgres_dsn)
    await run_scenario(kafka_bootstrap, tmp_path, dev_keyset, replica_size, store)


@pytest.mark.redis
async def test_replicas_sharing_redis(
    kafka_bootstrap: str,
    tmp_path: Path,
    dev_keyset: DevKeySet,
    replica_size: int,
    redis_url: str,
) -> None:
    """Replicas sharing Redis, one SIGKILLed and one added: nothing lost, nothing twice, the
    first command under a key wins."""
    store = SharedStore.redis(redis_url)
    await run_scenario(kafka_bootstrap, tmp_path, dev_keyset, replica_size, store)


class Replicas:
    """The service processes of one consumer group, named replica-1, replica-2, ..."""

    def __init__(
        self, topology: Topology, pas_url: str, workdir: Path, keyset: DevKeySet, **extra: str
    ) -> None:
        self._topology = topology
        self._pas_url = pas_url
        self._workdir = workdir
        self._keyset = keyset
        self._extra = extra
        self.members: dict[str, ServiceProcess] = {}
        self.killed: set[str] = set()

    def add(self) -> tuple[str, ServiceProcess]:
        """A new replica (not yet started) with its own work directory and metrics port."""
        name = f"replica-{len(self.members) + 1}"
        workdir = self._workdir / name
        workdir.mkdir()
        service = ServiceProcess(
            self._topology, self._pas_url, workdir, self._keyset, **self._extra
        )
        service.env.pop("PA_KAFKA__GROUP_INSTANCE_ID", None)  # dynamic members: never fenced
        self.members[name] = service
        return name, service

    def live(self) -> dict[str, ServiceProcess]:
        return {
            name: service
            for name, service in self.members.items()
            if service.process is not None and service.process.returncode is None
        }

    def exited_by_themselves(self) -> dict[str, int | None]:
        """Replicas that ended without being killed: their exit codes."""
        return {
            name: service.process.returncode if service.process is not None else None
            for name, service in self.members.items()
            if name not in self.killed and name not in self.live()
        }

    async def consumed(self) -> dict[str, int]:
        """Command records each live replica has read so far."""
        found: dict[str, int] = {}
        for name, service in self.live().items():
            text = await service.metrics()
            found[name] = int(
                metric_value(text, "points_adjuster_records_consumed_total", topic=self._topic())
            )
        return found

    async def kill_busiest(self, answered_share: float) -> Victim:
        """SIGKILL the live replica with the most commands in flight (then partitions)."""
        stats: dict[str, tuple[int, int, int]] = {}
        for name, service in self.live().items():
            text = await service.metrics()
            in_flight = int(metric_value(text, "points_adjuster_commands_in_flight"))
            partitions = int(metric_value(text, "points_adjuster_assigned_partitions"))
            consumed = int(
                metric_value(text, "points_adjuster_records_consumed_total", topic=self._topic())
            )
            stats[name] = (in_flight, partitions, consumed)
        name = max(stats, key=lambda n: stats[n])
        await self.members[name].kill()
        self.killed.add(name)
        in_flight, partitions, consumed = stats[name]
        return Victim(name, partitions, in_flight, consumed, answered_share)

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {name} ({service.log_path})\n{service.log_tail(lines)}"
            for name, service in self.members.items()
        )

    def _topic(self) -> str:
        return self._topology.kafka.command_topic


async def run_scenario(
    bootstrap: str, tmp_path: Path, keyset: DevKeySet, size: int, store: SharedStore
) -> None:
    began = time.monotonic()
    rng = random.Random(2027)
    codec = AvroCodec.from_directory()
    topology = Topology(bootstrap)
    kafka = topology.kafka
    await create_topics(bootstrap, topology.topics(PARTITIONS))
    batch = generate_commands(
        size,
        duplicate_share=0.03,
        conflict_share=0.04,
        invalid_share=0.01,
        accounts=max(size // 10, 2 * PARTITIONS),
        seed=99,
    )
    undecodable = [b"junk-%d" % n for n in range(max(size // 100, 3))]
    # Commands under one key share an account, so a partition: send order is read order.
    first_of_key: dict[str, dict[str, Any]] = {}
    for command in batch.commands:
        first_of_key.setdefault(command["idempotency_key"], command)
    valid_keys = set(first_of_key) - batch.invalid_keys
    config = secure_sandbox(keyset, latency_ms=5, faults=FaultConfig.from_dict(FAULTS))
    async with run_sandbox(config) as sandbox:
        replicas = Replicas(
            topology, sandbox.base_url, tmp_path, keyset, **SERVICE_ENV, **store.env
        )
        first = [replicas.add()[1] for _ in range(REPLICAS)]
        await asyncio.gather(*(service.start(ready_timeout_s=120) for service in first))
        sent = asyncio.create_task(
            send_commands(kafka, batch.commands, codec=codec, raw_values=undecodable)
        )

        async def answered_share() -> float:
            outcomes = await read_outcomes(kafka, codec)
            answered = {e["idempotency_key"] for e in outcomes.originals()}
            return len(answered) / len(first_of_key)

        # Mid-stream: once 20-40 % of the keys are answered, the busiest replica dies.
        kill_at = rng.uniform(0.2, 0.4)

        async def under_way() -> bool:
            return await answered_share() >= kill_at

        assert await wait_until(under_way, 300, poll_s=0.2), replicas.log_tails()
        victim = await replicas.kill_busiest(await answered_share())
        await asyncio.sleep(JOIN_DELAY_S)
        joined, newcomer = replicas.add()
        await newcomer.start(ready_timeout_s=120)
        await sent

        async def settled() -> bool:
            outcomes = await read_outcomes(kafka, codec)
            return {e["idempotency_key"] for e in outcomes.originals()} >= set(first_of_key)

        assert await wait_until(settled, 600), replicas.log_tails()

        # The faults stop; what was retryable is replayed from the dead-letter topic.
        sandbox.faults.replace(FaultConfig())
        settings = Settings(kafka=kafka, idempotency=store.settings)  # the replicas' store
        report, outcomes = await replay_and_settle(settings, codec, valid_keys, replicas.log_tails)
        consumed = await replicas.consumed()
        crashed = replicas.exited_by_themselves()
        exit_codes = {name: await service.terminate() for name, service in replicas.live().items()}
        ledger = sandbox.ledger.entries()
        fault_counts = sandbox.faults.counts()
    letters = [letter async for letter in scan_dead_letters(kafka, kafka.dead_letter_topic)]

    # The oracle: the checks of test_chaos.py ...
    decided = terminal_ids_per_key(outcomes)
    entries_per_key = ledger_entries_per_key(ledger, first_of_key)
    applied_per_key = Counter({key: len(found) for key, found in entries_per_key.items()})
    answered = {e["idempotency_key"] for e in outcomes.originals()}
    lost = [key for key in first_of_key if key not in answered]
    applied_twice = [key for key, n in applied_per_key.items() if n > 1]
    applied_unowned = [key for key in applied_per_key if key not in first_of_key]
    not_exactly_one = [key for key in valid_keys if len(decided.get(key, ())) != 1]
    dead_values = Counter(letter.value for letter in letters)
    missing_from_dlt = [value for value in undecodable if value not in dead_values]
    completed = {e["idempotency_key"] for e in outcomes.completed if not e["duplicate"]}
    unknown = [
        e for e in outcomes.failed if not e["duplicate"] and e["reason_code"] == "OUTCOME_UNKNOWN"
    ]
    conflicts = [e for e in outcomes.failed if e["reason_code"] == "IDEMPOTENCY_CONFLICT"]
    applied_without_completion = [
        key for key in applied_per_key if key in valid_keys and key not in completed
    ]
    # ... and first written wins: what completed (every event, repeats included) and what
    # the ledger holds is the first command sent under the key, never a later reuse of it.
    first_points = {key: command["points_to_adjust"] for key, command in first_of_key.items()}
    not_first_events = [
        e["idempotency_key"]
        for e in outcomes.completed
        if e["points_requested"] != first_points.get(e["idempotency_key"])
    ]
    not_first_entries = [
        key
        for key, found in entries_per_key.items()
        if key in first_of_key
        for entry in found
        if (entry.points_adjusted, entry.correlation_id)
        != (first_of_key[key]["points_to_adjust"], first_of_key[key]["correlation_id"])
    ]
    print(
        f"\nreplicas ({store.kind}): {len(batch.commands)} commands ({len(first_of_key)} keys,"
        f" {batch.duplicates} repeats, {batch.conflicts} conflicting, "
        f"{len(batch.invalid_keys)} invalid) + {len(undecodable)} undecodable;"
        f" {PARTITIONS} partitions, {REPLICAS} replicas, 1 SIGKILL ({victim.name}:"
        f" {victim.partitions} partitions, {victim.in_flight} commands in flight,"
        f" {victim.consumed} records consumed,"
        f" {victim.answered_share:.0%} of the keys answered), {joined} started"
        f" {JOIN_DELAY_S:g} s later; replicas that exited by themselves: {crashed or 'none'}"
        f"\n  records consumed per live replica: {consumed}"
        f"\n  sandbox faults injected: {dict(sorted(fault_counts.items()))}"
        f"\n  replayed from the DLT: {report.tally}"
        f"\n  commands lost: {len(lost)}"
        f"\n  adjustments applied twice: {len(applied_twice)}"
        f"\n  valid commands without exactly one terminal outcome: {len(not_exactly_one)}"
        f"\n  undecodable records missing from the DLT: {len(missing_from_dlt)}"
        f" (dead letters: {len(letters)}, the undecodable records' copies among them:"
        f" {sum(dead_values[value] for value in undecodable)})"
        f"\n  not the first command's points: {len(not_first_events)} completed events,"
        f" {len(not_first_entries)} ledger entries"
        f"\n  completed: {len(completed)}, OUTCOME_UNKNOWN: {len(unknown)},"
        f" conflicts refused: {len(conflicts)}, ledger entries: {len(ledger)}"
        f"\n  duration: {time.monotonic() - began:.0f} s"
    )
    assert lost == []
    assert applied_twice == []
    assert applied_unowned == []
    assert not_exactly_one == []
    assert missing_from_dlt == []
    assert applied_without_completion == []
    assert not_first_events == []
    assert not_first_entries == []
    assert len(conflicts) >= batch.conflicts
    assert crashed == {}, replicas.log_tails()
    assert all(code == 0 for code in exit_codes.values()), (exit_codes, replicas.log_tails())
