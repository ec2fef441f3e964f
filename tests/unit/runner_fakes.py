"""Fakes of the command runner's ports (service/kafka/ports.py), for tests without a broker.

``FakeConsumer`` is a consumer group of one: it hands out the messages fed to it for its
unpaused partitions, runs rebalances when asked, records pauses, resumes and commits, and
tells each partition's position and ends (high watermark, last stable offset) as a fetch
answer would.
``FakeOutcomes`` and ``FakeDeadLetters`` acknowledge (or refuse) what is sent to them; given a
producer (``tests.fakes.TransactionalProducer``), they send through it instead, as the real
publishers do with Kafka transactions.
``serve`` runs a runner as the service does: ``run`` and ``dispatch`` in one task group.
``wire`` builds a runner around given fakes (tests/unit/conftest.py's ``quick_faults``
shortens its fault pauses).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from service.app import run_tasks
from service.domain.decisions import Publish
from service.health import Health
from service.kafka.deadletter import Failure
from service.kafka.ports import RebalanceListener, RecordProcessor
from service.kafka.runner import CommandRunner
from service.kafka.sizing import RecordSender
from service.metrics import Metrics
from tests.fakes import TransactionalProducer

TOPIC = "commands"
TP = TopicPartition(TOPIC, 0)


@dataclass(frozen=True)
class Message:
    """A fetched record (the fields of aiokafka's ``ConsumerRecord`` the runner reads)."""

    offset: int
    value: bytes | None
    key: bytes | None = b"k"
    timestamp: int = 1_700_000_000_000
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    """Hands out the messages of its unpaused partitions; records pauses and commits.

    The partitions are assigned at the first fetch. ``revoke`` takes partitions away at the
    next fetch (inside ``getmany``, as aiokafka runs its rebalance callbacks).
    """

    def __init__(
        self,
        messages: Sequence[Message] = (),
        partitions: Sequence[TopicPartition] = (TP,),
    ) -> None:
        self.partitions = list(partitions)
        self.backlog: dict[TopicPartition, deque[Message]] = {tp: deque() for tp in partitions}
        self.backlog[self.partitions[0]].extend(messages)
        self.paused: set[TopicPartition] = set()
        self.ever_paused: set[TopicPartition] = set()
        self.events: list[tuple[str, TopicPartition]] = []
        """``("pause", tp)`` and ``("resume", tp)`` in the order they came."""
        self.commits: list[dict[TopicPartition, int]] = []
        self.fetched: dict[TopicPartition, int] = dict.fromkeys(partitions, 0)
        """How many messages of each partition were handed out."""
        self.fetches = 0
        self.listener: RebalanceListener | None = None
        self.assigned = False
        self.revoking: set[TopicPartition] = set()
        self.commit_hangs = False
        """Commits never answer, like a broker gone (the runner's timeout must end them)."""
        self.open_transactions: dict[TopicPartition, int] = {}
        """Records at the end of a partition in transactions not yet decided: the last stable
        offset is that many below the high watermark."""
        self.answered: set[TopicPartition] = set()
        """Partitions a fetch has answered for (their ends are known from then on)."""
        self.position_unknown = False
        """``position`` waits, like a consumer still looking up where to start."""
        self._to_revoke: set[TopicPartition] = set()
        self._news = asyncio.Event()

    # -- the test's side ----------------------------------------------------------------

    def feed(self, tp: TopicPartition, *values: bytes | None) -> list[int]:
        """Append messages with ``values`` to ``tp``; return their offsets."""
        backlog = self.backlog[tp]
        start = self._next_offset(tp)
        offsets = list(range(start, start + len(values)))
        backlog.extend(Message(at, value) for at, value in zip(offsets, values, strict=True))
        self._news.set()
        return offsets

    def revoke(self, *partitions: TopicPartition) -> None:
        """Take ``partitions`` away at the next fetch."""
        self._to_revoke.update(partitions)
        self._news.set()

    def last_commit(self, tp: TopicPartition = TP) -> int | None:
        """The last offset committed for ``tp``."""
        for offsets in reversed(self.commits):
            offset: int | None = offsets.get(tp)
            if offset is not None:
                return offset
        return None

    def _next_offset(self, tp: TopicPartition) -> int:
        backlog = self.backlog[tp]
        return backlog[-1].offset + 1 if backlog else self.fetched.get(tp, 0)

    # -- the runner's side (service.kafka.ports.CommandConsumer) ----------------------

    def subscribe(self, topics: Sequence[str], *, listener: RebalanceListener) -> None:
        self.listener = listener

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[Message]]:
        self.fetches += 1
        assert self.listener is not None, "getmany before subscribe"
        if not self.assigned:
            self.assigned = True
            await self.listener.on_partitions_assigned(set(self.partitions))
        if self._to_revoke:
            await self._rebalance(self.listener)
        self.answered.update(tp for tp in self.partitions if tp not in self.paused)
        batch = self._take(max_records)
        if not batch:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout_ms / 1000)
        return batch

    async def _rebalance(self, listener: RebalanceListener) -> None:
        revoked, self._to_revoke = self._to_revoke, set()
        self.revoking = revoked
        try:
            await listener.on_partitions_revoked(revoked)
        finally:
            self.revoking = set()
        self.partitions = [tp for tp in self.partitions if tp not in revoked]

    def _take(self, max_records: int) -> dict[TopicPartition, list[Message]]:
        batch: dict[TopicPartition, list[Message]] = {}
        room = max_records
        for tp in self.partitions:
            backlog = self.backlog[tp]
            while room and backlog and tp not in self.paused:
                batch.setdefault(tp, []).append(backlog.popleft())
                self.fetched[tp] += 1
                room -= 1
        return batch

    def pause(self, partition: TopicPartition, /) -> None:
        self.paused.add(partition)
        self.ever_paused.add(partition)
        self.events.append(("pause", partition))

    def resume(self, partition: TopicPartition, /) -> None:
        self.paused.discard(partition)
        self.events.append(("resume", partition))
        self._news.set()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.commit_hangs:
            await asyncio.Event().wait()
        self.commits.append(dict(offsets))

    async def committed(self, partition: TopicPartition, /) -> int | None:
        return self.last_commit(partition)

    async def position(self, partition: TopicPartition, /) -> int:
        if self.position_unknown:
            await asyncio.Event().wait()
        return self.fetched[partition]

    def highwater(self, partition: TopicPartition, /) -> int | None:
        if partition not in self.answered:
            return None
        return self._next_offset(partition)

    def last_stable_offset(self, partition: TopicPartition, /) -> int | None:
        end = self.highwater(partition)
        return None if end is None else end - self.open_transactions.get(partition, 0)


def _acknowledged(error: Exception | None = None) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
    return future


OUTCOME_TOPIC = "outcomes"
DEAD_LETTER_TOPIC = "dead-letters"


def coordinates(value: bytes | None) -> tuple[int, int]:
    """The partition and offset of the command a record sent by the fakes stands for."""
    assert value is not None
    partition, offset, _ = value.decode().split(":", 2)
    return int(partition), int(offset)


class FakeOutcomes:
    """An outcome publisher whose first ``failures`` deliveries fail like a broker outage.

    With a ``producer``, each event goes through it to ``OUTCOME_TOPIC``, its value
    ``<partition>:<offset>:<event id>`` of the record it answers (``coordinates``).
    """

    def __init__(self, failures: int = 0, *, producer: RecordSender | None = None) -> None:
        self.failures = failures
        self.producer = producer
        self.sent: list[Publish] = []

    async def send(self, decision: Publish) -> asyncio.Future[Any]:
        if self.failures:
            self.failures -= 1
            return _acknowledged(KafkaTimeoutError("batch expired: the broker did not answer"))
        self.sent.append(decision)
        if self.producer is None:
            return _acknowledged()
        source = decision.source
        value = f"{source.partition}:{source.offset}:{decision.event_id}".encode()
        return await self.producer.send(OUTCOME_TOPIC, value=value)


class FakeDeadLetters:
    """A dead-letter publisher that acknowledges every copy and keeps it.

    With a ``producer``, each copy goes through it to ``DEAD_LETTER_TOPIC``, its value
    ``<partition>:<offset>:<target>`` (``coordinates``).
    """

    def __init__(self, *, producer: RecordSender | None = None) -> None:
        self.producer = producer
        self.sent: list[tuple[int, Failure, str]] = []

    async def send(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        failure: Failure,
        target: Literal["dlt", "review"],
    ) -> asyncio.Future[Any]:
        self.sent.append((offset, failure, target))
        if self.producer is None:
            return _acknowledged()
        value = f"{partition}:{offset}:{target}".encode()
        return await self.producer.send(DEAD_LETTER_TOPIC, value=value)


@dataclass
class Wiring:
    """A runner built around fakes, with what the tests read of it."""

    runner: CommandRunner
    dead_letters: FakeDeadLetters
    metrics: Metrics
    health: Health
    stop: asyncio.Event
    readiness: list[bool]


def wire(
    consumer: FakeConsumer,
    processor: RecordProcessor,
    outcomes: FakeOutcomes,
    *,
    drain_timeout_s: float,
    commit_interval_s: float,
    transactions: TransactionalProducer | None = None,
    **options: Any,
) -> Wiring:
    """A runner over ``consumer``, ``processor`` and ``outcomes``, with fresh metrics and
    health (every readiness flip recorded) and its own stop event.

    With ``transactions``, the runner publishes in transactions of that producer, and the dead
    letters go through it too (``outcomes`` should have been given it)."""
    dead_letters = FakeDeadLetters(producer=transactions)
    metrics = Metrics()
    readiness: list[bool] = []
    health = Health(on_change=readiness.append)
    stop = asyncio.Event()
    runner = CommandRunner(
        consumer=consumer,
        topic=TOPIC,
        processor=processor,
        publisher=outcomes,
        dead_letters=dead_letters,
        metrics=metrics,
        stop=stop,
        drain_timeout_s=drain_timeout_s,
        commit_interval_s=commit_interval_s,
        health=health,
        transactions=transactions,
        **options,
    )
    return Wiring(runner, dead_letters, metrics, health, stop, readiness)


async def serve(runner: CommandRunner) -> None:
    """Run ``runner`` as the service does (``run`` and ``dispatch`` in one task group)."""
    await run_tasks(runner, {})


async def wait_until(
    done: Callable[[], bool],
    *,
    while_running: asyncio.Task[Any] | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Wait until ``done()`` holds (checked every few milliseconds), ``timeout_s`` at most.

    With ``while_running``, fail at once when that task ends first.
    """
    async with asyncio.timeout(timeout_s):
        while not done():
            if while_running is not None and while_running.done():
                while_running.result()  # its error, if it failed
                raise AssertionError("the runner ended by itself")
            await asyncio.sleep(0.005)
