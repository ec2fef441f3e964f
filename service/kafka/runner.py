"""The command loop: many accounts at once, each account strictly in order.

Records are fetched into per-partition buffers and grouped by ordering key (the account,
read from the value; with ``ordering=partition``, one key per partition: the slow
baseline). Each key runs one record at a time; up to ``max_in_flight`` keys run at once.
A record handed back for later (a retry, a claim held elsewhere, a reconciliation) keeps
its key busy, so that account's later commands wait while other accounts go on.

Offsets are committed only up to the contiguous prefix of finished records of each
partition, and a record is finished only once its outcome (and any dead-letter copy) was
acknowledged by the broker: a crash at any point re-delivers work instead of losing it,
and the idempotency store turns the re-delivery into a duplicate, not a second call.

Memory is bounded: above ``max_buffered`` unfinished records, or ``max_buffered_bytes`` of
them, every partition is paused, and resumed below half of it; the loop keeps polling
throughout, so the group never evicts us for a long backoff.

Faults pause, never exit. A record held up by a fault of our own infrastructure (the broker
gone, a topic missing, a publish refused, the idempotency store failing, a claim lost to
another worker) is tried again later with a growing pause; its partition is paused meanwhile
and ``/readyz`` says why. A decision already taken is kept: only what is left of it (the
publish, the note that it was published) is tried again, so a fault after PAS applied an
adjustment never calls PAS again. When the record finally goes through, the partition
resumes. Nothing is skipped: a partition stays behind its faulted record, never past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.domain.decisions import (
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    InboundRecord,
    Publish,
    Retry,
)
from service.domain.processor import Processor
from service.health import Health
from service.idempotency.base import OwnershipLostError
from service.kafka.deadletter import DeadLetterPublisher, Failure
from service.kafka.publisher import OutcomePublisher
from service.metrics import Metrics

log = structlog.get_logger("service.runner")

FETCH_TIMEOUT_MS = 100
COMMIT_INTERVAL_S = 1.0
COMMIT_TIMEOUT_S = 3.0  # aiokafka waits for a coordinator indefinitely when the broker is gone
FAULT_FIRST_PAUSE_S = 0.5
CLAIM_LOST_PAUSE_S = 0.5

Key = tuple[TopicPartition, str]


@dataclass
class _Pending:
    """One fetched record and what happened to it so far."""

    record: InboundRecord
    fetched_at: float
    attempt: Attempt = field(default_factory=Attempt)
    decision: Publish | DeadLetterOnly | None = None
    """Taken once; a fault after it retries only what is left of delivering it."""
    delivered: bool = False
    faults: int = 0


def fault_part(exc: BaseException) -> str:
    """Which part of our infrastructure a fault comes from (a bounded label)."""
    if isinstance(exc, OwnershipLostError):
        return "claim"
    if isinstance(exc, KafkaError):
        return "kafka"
    module = type(exc).__module__
    if isinstance(exc, sqlite3.Error | OSError) or module.startswith("service.idempotency"):
        return "store"
    if isinstance(exc, TimeoutError):
        return "kafka"  # the only waits of ours without their own error are Kafka's
    return "other"


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, short (aiokafka's messages may name the type already)."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return (text if text.startswith(name) else f"{name}: {text}")[:300]


class PartitionProgress:
    """Offsets fetched and finished in one partition; the commit point is their done prefix."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.commit_at: int | None = None
        self.dirty = False
        self.bytes = 0
        """Bytes of this partition's records fetched and not finished."""

    def add(self, offset: int, size: int = 0) -> None:
        self.pending.append(offset)
        self.bytes += size

    def finish(self, offset: int, size: int = 0) -> None:
        self.bytes -= size
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.commit_at = first + 1
            self.dirty = True

    def __len__(self) -> int:
        return len(self.pending)


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


class CommandRunner:
    """Consumes the command topic until ``stop`` is set, then drains and commits."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        topic: str,
        processor: Processor,
        publisher: OutcomePublisher,
        dead_letters: DeadLetterPublisher,
        metrics: Metrics,
        stop: asyncio.Event,
        drain_timeout_s: float,
        ordering: Literal["key", "partition"] = "key",
        max_in_flight: int = 200,
        max_buffered: int = 2000,
        max_poll_records: int = 500,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        fault_backoff_max_s: float = 30.0,
        health: Health | None = None,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._processor = processor
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._stop = stop
        self._drain_timeout_s = drain_timeout_s
        self._ordering = ordering
        self._max_buffered = max_buffered
        self._max_buffered_bytes = max_buffered_bytes
        self._max_poll_records = max_poll_records
        self._fault_backoff_max_s = fault_backoff_max_s
        self._health = health or Health()
        self._faulted: dict[TopicPartition, str] = {}
        """Partitions held up by a fault, with its part; paused until their record passes."""
        self._slots = asyncio.Semaphore(max_in_flight)
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._queues: dict[Key, deque[_Pending]] = {}
        self._ready: deque[Key] = deque()
        self._wake = asyncio.Event()
        self._running: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._revoked: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._failure: BaseException | None = None
        self._last_commit = time.monotonic()

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        self._health.started()
        log.info("consumer.started", topic=self._topic, ordering=self._ordering)
        try:
            while not self._stop.is_set():
                room = self._backpressure()
                batches = await self._fetch(room)
                for tp, messages in batches.items():
                    for message in messages:
                        self._accept(tp, message)
                if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    await self.commit()
        finally:
            self._health.draining()
            # One budget for the whole drain: finishing what was fetched, then what runs.
            deadline = time.monotonic() + self._drain_timeout_s
            await self._finish_buffered(deadline)
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            await self._drain(set(self._running), max(0.0, deadline - time.monotonic()))
            await self.commit()
            log.info("consumer.stopped")
        if self._failure is not None:
            raise self._failure

    async def _finish_buffered(self, deadline: float) -> None:
        """On the way out: fetch nothing more, but finish what was fetched (bounded).

        Finishing every buffered record lets the commit cover all of it, so the next start
        re-reads nothing; what is still unfinished at the drain timeout is re-read then.
        """
        if self._failure is not None or not self._queues:
            return
        log.info("shutdown.draining", records=self._buffered(), timeout_s=self._drain_timeout_s)
        while self._queues and time.monotonic() < deadline and self._failure is None:  # noqa: ASYNC110 - a bounded drain poll
            await asyncio.sleep(0.05)
        if self._queues:
            log.warning("shutdown.drain_timeout", unfinished=self._buffered())

    async def _fetch(self, room: int) -> dict[TopicPartition, list[Any]]:
        """One fetch; a failing consumer is reported and tried again, never the end of us."""
        try:
            batches: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS, max_records=max(1, room)
            )
        except KafkaError as exc:
            self._health.report("consumer", f"fetching failed: {describe(exc)}")
            log.warning("consumer.fetch_failed", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            return {}
        self._health.clear("consumer")
        return batches

    def _buffered(self) -> int:
        return sum(len(progress) for progress in self._progress.values())

    def _backpressure(self) -> int:
        """Pause or resume partitions; return how many records may be fetched now.

        Each partition may hold its share of ``max_buffered`` records and of
        ``max_buffered_bytes``: one partition's backlog of a few accounts cannot fill the
        buffer and starve the others. A partition pauses at its share and resumes below
        half of it; all pause when the whole buffer is full. A partition held up by a fault
        stays paused until its record passes.
        """
        buffered = self._buffered()
        held_bytes = sum(progress.bytes for progress in self._progress.values())
        self._metrics.buffered.set(buffered)
        self._metrics.buffered_bytes.set(held_bytes)
        partitions = max(len(self._progress), 1)
        share = max(self._max_buffered // partitions, 1)
        byte_share = max(self._max_buffered_bytes // partitions, 1)
        full = (
            buffered >= self._max_buffered
            or held_bytes >= self._max_buffered_bytes
            or self._health.problem("store") is not None  # a lost store takes nothing new
        )
        for tp, progress in self._progress.items():
            over = len(progress) >= share or progress.bytes >= byte_share
            below = len(progress) <= share // 2 and progress.bytes <= byte_share // 2
            if tp not in self._paused and (full or over or tp in self._faulted):
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif tp in self._paused and not full and below and tp not in self._faulted:
                self._consumer.resume(tp)
                self._paused.discard(tp)
        self._metrics.paused.set(len(self._paused))
        return min(self._max_poll_records, self._max_buffered - buffered)

    def _accept(self, tp: TopicPartition, message: Any) -> None:
        progress = self._progress.get(tp)
        if progress is None or tp in self._revoked:
            return  # a fetch that raced a revocation: the new owner reads it
        keyed = self._ordering == "key"
        record = InboundRecord(
            tp.topic,
            tp.partition,
            message.offset,
            message.key,
            message.value,
            message.timestamp,
            tuple(message.headers or ()),
            self._processor.payload_of(message.value) if keyed else None,
        )
        self._metrics.records_consumed.labels(tp.topic).inc()
        progress.add(record.offset, record.size)
        ordering = ""  # ordering=partition: one key per partition, the slow baseline
        if keyed:
            ordering = self._processor.ordering_key(record) or f"@{record.offset}"
        key = (tp, ordering)
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque([_Pending(record, time.perf_counter())])
            self._make_ready(key)
        else:
            queue.append(_Pending(record, time.perf_counter()))

    def _make_ready(self, key: Key) -> None:
        self._ready.append(key)
        self._wake.set()

    # -- dispatching --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            while not self._ready:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            if not self._ready:
                self._slots.release()
                continue
            key = self._ready.popleft()
            tp = key[0]
            if key not in self._queues or tp in self._revoked:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_one(key))
            self._running.setdefault(tp, set()).add(task)
            task.add_done_callback(functools.partial(self._task_done, tp))

    def _task_done(self, tp: TopicPartition, task: asyncio.Task[None]) -> None:
        self._slots.release()
        running = self._running.get(tp)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[tp]
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            log.error("processing.crashed", error=repr(self._failure))
            self._stop.set()

    async def _run_one(self, key: Key) -> None:
        tp = key[0]
        queue = self._queues[key]
        progress = self._progress[tp]
        pending = queue[0]
        self._metrics.in_flight.inc()
        try:
            if pending.decision is None:
                decision = await self._processor.handle(pending.record, pending.attempt)
                if isinstance(decision, Retry):
                    pending.attempt = decision.attempt
                    self._metrics.retries.labels(decision.kind).inc()
                    self._later(key, decision.after_s)
                    return
                pending.decision = decision
            await self._deliver(pending)
        except Exception as exc:  # any fault: this record waits, the service goes on
            self._fault(key, pending, exc)
            return
        finally:
            self._metrics.in_flight.dec()
        self._passed(tp, pending)
        self._metrics.processing.observe(time.perf_counter() - pending.fetched_at)
        if self._progress.get(tp) is not progress:
            return  # the partition was revoked meanwhile
        progress.finish(pending.record.offset, pending.record.size)
        queue.popleft()
        if queue:
            self._make_ready(key)
        else:
            del self._queues[key]

    def _later(self, key: Key, after_s: float) -> None:
        """Hand ``key``'s first record back in ``after_s`` seconds (unless revoked)."""
        if key[0] not in self._revoked:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(after_s, self._wake_later, key)

    def _fault(self, key: Key, pending: _Pending, exc: Exception) -> None:
        """A fault of our infrastructure held this record up: pause, report, try later."""
        tp = key[0]
        part = fault_part(exc)
        record = pending.record
        self._metrics.faults.labels(part).inc()
        if isinstance(exc, OwnershipLostError):
            # Another worker took the claim over (our lease ran out): start this record
            # again from its claim, which tells what the other worker did with it.
            log.warning(
                "idempotency.claim_lost",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            pending.decision = None
            pending.delivered = False
            self._later(key, CLAIM_LOST_PAUSE_S)
            return
        pending.faults += 1
        ceiling = min(FAULT_FIRST_PAUSE_S * 2 ** (pending.faults - 1), self._fault_backoff_max_s)
        pause = random.uniform(ceiling / 2, ceiling)
        stage = "deliver" if pending.decision is not None else "process"
        self._faulted[tp] = part
        self._health.report(f"records.{part}", f"{stage} failing: {describe(exc)}")
        if pending.faults & (pending.faults - 1):
            self._later(key, pause)  # logged at the 1st, 2nd, 4th, 8th... fault only
            return
        event = log.error if pending.faults == 1 else log.warning
        event(
            "record.fault",
            part=part,
            stage=stage,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            faults=pending.faults,
            retry_in_s=round(pause, 2),
            error=describe(exc),
            exc_info=part == "other" and pending.faults == 1,
        )
        self._later(key, pause)

    def _passed(self, tp: TopicPartition, pending: _Pending) -> None:
        """A record went through: its partition is no longer held up by a fault."""
        if pending.faults:
            log.info(
                "record.recovered",
                topic=pending.record.topic,
                partition=pending.record.partition,
                offset=pending.record.offset,
                faults=pending.faults,
            )
        part = self._faulted.pop(tp, None)
        if part is not None and part not in self._faulted.values():
            self._health.clear(f"records.{part}")

    def _wake_later(self, key: Key) -> None:
        self._timers.pop(key, None)
        if key in self._queues and key[0] not in self._revoked:
            self._make_ready(key)

    async def _deliver(self, pending: _Pending) -> None:
        """Publish the decision (outcome and dead letter), then note it published.

        Each step is done once: after a fault only what is left is tried again.
        """
        decision = pending.decision
        assert decision is not None
        record = pending.record
        dead = decision.dead_letter
        if not pending.delivered:
            deliveries: list[asyncio.Future[Any]] = []
            if isinstance(decision, Publish):
                deliveries.append(await self._publisher.send(decision))
            if dead is not None:
                deliveries.append(await self._send_dead_letter(dead, record))
            results = await asyncio.gather(*deliveries, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            pending.delivered = True
            if isinstance(decision, Publish):
                self._count(decision)
            if dead is not None:
                self._metrics.dead_letters.labels(dead.target, dead.reason).inc()
                if isinstance(decision, DeadLetterOnly):
                    self._metrics.undecodable.labels(dead.reason).inc()
        if isinstance(decision, Publish):
            await self._processor.published(decision)

    async def _send_dead_letter(
        self, dead: DeadLetterRequest, record: InboundRecord
    ) -> asyncio.Future[Any]:
        return await self._dead_letters.send(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            key=record.key,
            value=record.value,
            headers=record.headers,
            failure=Failure(
                dead.error_class,
                dead.reason,
                dead.detail,
                dead.attempts,
                _ms(dead.first_failure_at),
                _ms(dead.last_failure_at),
            ),
            target=dead.target,
        )

    def _count(self, decision: Publish) -> None:
        reason = decision.reason_code or ""
        self._metrics.outcomes.labels(decision.kind, reason).inc()
        if decision.duplicate_kind:
            self._metrics.duplicates.labels(decision.duplicate_kind).inc()
        if reason == "VALIDATION_FAILED" and not decision.duplicate:
            self._metrics.invalid.inc()

    # -- commits, rebalances, shutdown ----------------------------------------------------

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        self._last_commit = time.monotonic()
        offsets = {
            tp: progress.commit_at
            for tp, progress in self._progress.items()
            if progress.dirty
            and progress.commit_at is not None
            and (partitions is None or tp in partitions)
        }
        if not offsets:
            if partitions is None:
                self._health.clear("offsets")  # nothing left to commit: nothing failing
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError, KafkaError, TimeoutError) as exc:
            # Kept for the next commit while we own the partition; a partition that moved is
            # re-read by its new owner, and the idempotency store absorbs the repeat.
            self._metrics.commits.labels("failed").inc()
            detail = str(exc) or f"no answer from the broker in {COMMIT_TIMEOUT_S:g} s"
            log.warning("offsets.commit_failed", error=type(exc).__name__, detail=detail)
            self._health.report("offsets", f"commits failing: {type(exc).__name__}: {detail}")
            return
        self._metrics.commits.labels("ok").inc()
        self._health.clear("offsets")
        for tp, offset in offsets.items():
            progress = self._progress.get(tp)
            if progress is not None and progress.commit_at == offset:
                progress.dirty = False

    async def _drain(self, partitions: set[TopicPartition], timeout_s: float) -> None:
        """Let the records in hand for ``partitions`` finish, up to ``timeout_s``."""
        tasks = {task for tp in partitions for task in self._running.get(tp, set())}
        if not tasks:
            return
        log.info("drain.started", records=len(tasks), timeout_s=round(timeout_s, 3))
        late = tasks
        if timeout_s > 0:
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
        if late:
            log.warning("drain.timeout", records=len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop taking work for ``revoked``, finish what is in hand (bounded), commit, let go."""
        if not revoked:
            return
        log.info(
            "partitions.revoked", partitions=sorted(f"{t.topic}/{t.partition}" for t in revoked)
        )
        self._revoked |= revoked
        self._ready = deque(key for key in self._ready if key[0] not in revoked)
        for key in [key for key in self._timers if key[0] in revoked]:
            self._timers.pop(key).cancel()
        await self._drain(revoked, self._drain_timeout_s)
        await self.commit(revoked)
        for tp in revoked:
            self._progress.pop(tp, None)
            self._paused.discard(tp)
            part = self._faulted.pop(tp, None)
            if part is not None and part not in self._faulted.values():
                self._health.clear(f"records.{part}")
        for key in [key for key in self._queues if key[0] in revoked]:
            for pending in self._queues.pop(key):
                if pending.decision is not None:
                    self._processor.abandon(pending.decision)  # its new owner decides again
        self._revoked -= revoked
        self._metrics.assigned_partitions.set(len(self._progress))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions.assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )
        for tp in assigned:
            self._progress.setdefault(tp, PartitionProgress())
        self._metrics.assigned_partitions.set(len(self._progress))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(
        self, revoked: Sequence[TopicPartition] | Mapping[Any, Any]
    ) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(
        self, assigned: Sequence[TopicPartition] | Mapping[Any, Any]
    ) -> None:
        self._runner.on_assigned(set(assigned))
