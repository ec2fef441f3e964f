"""The command runner under faults of its own infrastructure, over fakes of the consumer, the
producer and the store: faults pause the partition and are retried, never the end of the run,
and a decision already taken is never taken twice."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.app import command_decoder
from service.codec.avro import COMMAND, AvroCodec
from service.domain.processor import Processor
from service.domain.store import (
    OwnershipLostError,
    State,
    StoreLostError,
    StoreUnavailableError,
)
from service.health import Health
from service.idempotency.memory import MemoryStore
from service.kafka.runner import CommandRunner, fault_part
from service.metrics import Metrics
from tests.fakes import ScriptedPas
from tests.unit.runner_fakes import (
    TP,
    FakeConsumer,
    FakeDeadLetters,
    FakeOutcomes,
    Message,
    serve,
    wait_until,
    wire,
)
from tests.unit.test_processor import APPLIED, CONFIG, completed_elsewhere, raw_command


class FailingStore(MemoryStore):
    """A MemoryStore whose chosen method fails on its first ``failures`` calls."""

    def __init__(self, method: str, failures: int, error: Callable[[], Exception]) -> None:
        super().__init__()
        self.method = method
        self.failures = failures
        self.error = error
        self.on_fail: Callable[[], None] | None = None

    def _maybe_fail(self, method: str) -> None:
        if method == self.method and self.failures:
            self.failures -= 1
            if self.on_fail is not None:
                self.on_fail()
            raise self.error()

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("claim")
        return await super().claim(*args, **kwargs)

    async def finish(self, key: str, **kwargs: Any) -> None:
        self._maybe_fail("finish")
        await super().finish(key, **kwargs)


pytestmark = pytest.mark.usefixtures("quick_faults")


@dataclass
class Rig:
    runner: CommandRunner
    consumer: FakeConsumer
    publisher: FakeOutcomes
    dead_letters: FakeDeadLetters
    pas: ScriptedPas
    store: MemoryStore
    health: Health
    metrics: Metrics
    stop: asyncio.Event
    ready_seen: list[bool] = field(default_factory=list)


def rig(store: MemoryStore, publish_failures: int = 0, commands: int = 1) -> Rig:
    codec = AvroCodec.from_directory()
    pas = ScriptedPas()
    processor = Processor(
        decode=command_decoder(codec),
        store=store,
        pas=pas,
        history=None,
        config=replace(CONFIG, reconcile=False),
        clock=lambda: datetime.now(UTC),
    )
    messages = [
        Message(
            offset,
            codec.encode(
                COMMAND,
                raw_command(idempotency_key=f"key-{offset}", occurred_at=datetime.now(UTC)),
            ),
        )
        for offset in range(commands)
    ]
    consumer = FakeConsumer(messages)
    publisher = FakeOutcomes(publish_failures)
    w = wire(consumer, processor, publisher, drain_timeout_s=2.0, commit_interval_s=0.05)
    return Rig(
        w.runner,
        consumer,
        publisher,
        w.dead_letters,
        pas,
        store,
        w.health,
        w.metrics,
        w.stop,
        w.readiness,
    )


async def run_until(r: Rig, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Run the runner until ``done()`` holds, then stop it; no dead letter was expected."""
    task = asyncio.create_task(serve(r.runner))
    try:
        await wait_until(done, while_running=task, timeout_s=timeout_s)
    finally:
        r.stop.set()
        await asyncio.wait_for(task, 10)
    assert r.dead_letters.sent == []


def committed(r: Rig) -> int | None:
    return r.consumer.last_commit(TP)


async def test_a_publish_failing_like_a_broker_outage_pauses_and_goes_out_once_it_passes() -> None:
    """Five failed deliveries: the runner keeps running, the partition pauses and readiness
    drops with the reason; then the event goes out, PAS having been called once, and the
    offset is committed past it."""
    r = rig(MemoryStore(), publish_failures=5)
    r.pas.then(APPLIED)
    problems: list[dict[str, str]] = []

    def done() -> bool:
        if not r.health.ready:
            problems.append(r.health.problems())
        return committed(r) == 1

    await run_until(r, done)
    assert len(r.publisher.sent) == 1
    assert len(r.pas.requests) == 1
    assert TP in r.consumer.ever_paused
    assert any("records.kafka" in seen for seen in problems)
    assert any("KafkaTimeoutError" in text for seen in problems for text in seen.values())
    assert False in r.ready_seen
    assert r.metrics.faults.labels("kafka")._value.get() == 5
    stored = await r.store.get("key-0")
    assert stored is not None
    assert stored.published is True


async def test_a_failing_store_holds_the_record_until_it_answers_again() -> None:
    """A claim that fails like a full disk three times is tried again; then the command is
    applied once and completed."""
    store = FailingStore("claim", 3, lambda: sqlite3.OperationalError("database or disk is full"))
    r = rig(store)
    r.pas.then(APPLIED)
    await run_until(r, lambda: committed(r) == 1)
    assert len(r.pas.requests) == 1
    assert [decision.kind for decision in r.publisher.sent] == ["completed"]
    assert r.metrics.faults.labels("store")._value.get() == 3
    assert r.health.problem("records.store") is None


async def test_a_claim_lost_to_another_worker_hands_the_record_back_without_a_second_call() -> None:
    """Our lease was taken over and the other worker finished the command: our finish fails
    with OwnershipLostError, the record starts again from its claim, finds the other
    worker's outcome and publishes it, and PAS is called only the once."""
    store = FailingStore("finish", 1, lambda: OwnershipLostError("taken over"))
    r = rig(store)
    r.pas.then(APPLIED)

    def other_worker_finishes() -> None:
        record = store.records["key-0"]
        store.records["key-0"] = replace(
            record,
            owner="worker-b",
            state=State.COMPLETED,
            outcome=completed_elsewhere("key-0"),
        )

    store.on_fail = other_worker_finishes
    await run_until(r, lambda: committed(r) == 1)
    assert len(r.pas.requests) == 1
    (sent,) = r.publisher.sent
    assert sent.outcome == completed_elsewhere("key-0")  # the other worker's, as it stored it
    assert r.metrics.faults.labels("claim")._value.get() == 1


async def test_records_of_other_keys_go_on_while_one_waits_out_a_fault() -> None:
    """Only the faulted record waits: the partition's commit point stays behind it, never
    past it, and moves on once it passes."""
    store = FailingStore("claim", 2, lambda: sqlite3.OperationalError("disk I/O error"))
    r = rig(store, commands=3)
    r.pas.then(APPLIED, APPLIED, APPLIED)
    await run_until(r, lambda: committed(r) == 3)
    assert len(r.pas.requests) == 3
    assert sorted(d.outcome.info.idempotency_key for d in r.publisher.sent) == [
        "key-0",
        "key-1",
        "key-2",
    ]
    assert all(offsets[TP] <= 3 for offsets in r.consumer.commits)


class DownStore(MemoryStore):
    """A MemoryStore whose claims fail like an I/O error while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        return await super().claim(*args, **kwargs)


async def test_a_store_fault_pauses_every_partition_until_a_record_passes_again() -> None:
    """The store is shared by every partition: the first record it fails pauses them all at
    once, a partition with no record of its own too (not only once the watchdog's probe
    notices); when the store answers again they resume and every command is applied once."""
    other = TopicPartition(TP.topic, 1)
    codec = AvroCodec.from_directory()
    store = DownStore()
    pas = ScriptedPas()
    processor = Processor(
        decode=command_decoder(codec),
        store=store,
        pas=pas,
        history=None,
        config=replace(CONFIG, reconcile=False),
        clock=lambda: datetime.now(UTC),
    )
    consumer = FakeConsumer(partitions=(TP, other))

    def command(key: str) -> bytes:
        return codec.encode(
            COMMAND, raw_command(idempotency_key=key, occurred_at=datetime.now(UTC))
        )

    consumer.feed(TP, command("key-a"))
    pas.then(APPLIED, APPLIED)
    w = wire(consumer, processor, FakeOutcomes(0), drain_timeout_s=2.0, commit_interval_s=0.05)
    task = asyncio.create_task(serve(w.runner))
    try:
        await wait_until(lambda: {TP, other} <= consumer.paused, while_running=task)
        consumer.feed(other, command("key-b"))
        store.down = False
        await wait_until(
            lambda: consumer.last_commit(TP) == 1 and consumer.last_commit(other) == 1,
            while_running=task,
        )
    finally:
        w.stop.set()
        await asyncio.wait_for(task, 10)
    assert len(pas.requests) == 2
    assert w.health.problem("records.store") is None


@pytest.mark.parametrize(
    ("error", "part"),
    [
        (StoreUnavailableError("no answer within 1 s", store="postgresql://db/x"), "store"),
        (StoreLostError("replaced", store="redis://cache/0"), "store"),
        (sqlite3.OperationalError("disk I/O error"), "store"),
        (OwnershipLostError("taken over"), "claim"),
        (KafkaError("broker gone"), "kafka"),
        (TimeoutError(), "kafka"),
        (ValueError("a bug"), "other"),
    ],
)
def test_every_store_error_is_a_fault_of_the_store(error: Exception, part: str) -> None:
    """The part a fault is counted and reported under, whichever store raised it (the store
    errors live in the domain's port, not in the stores' package)."""
    assert fault_part(error) == part
