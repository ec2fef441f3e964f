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

Memory is bounded: above ``max_buffered`` unfinished records every partition is paused,
and resumed below half of it; the loop keeps polling throughout, so the group never
evicts us for a long backoff.
"""

from __future__ import annotations

import asyncio
import functools
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
    Decision,
    InboundRecord,
    Publish,
    Retry,
)
from service.domain.processor import Processor
from service.kafka.deadletter import DeadLetterPublisher, Failure
from service.kafka.publisher import OutcomePublisher
from service.metrics import Metrics

log = structlog.get_logger("service.runner")

FETCH_TIMEOUT_MS = 100
COMMIT_INTERVAL_S = 1.0
COMMIT_TIMEOUT_S = 3.0  # aiokafka waits for a coordinator indefinitely when the broker is gone

Key = tuple[TopicPartition, str]


@dataclass
class _Pending:
    """One fetched record and what happened to it so far."""

    record: InboundRecord
    fetched_at: float
    attempt: Attempt = field(default_factory=Attempt)


class PartitionProgress:
    """Offsets fetched and finished in one partition; the commit point is their done prefix."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.commit_at: int | None = None
        self.dirty = False

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
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
        self._max_poll_records = max_poll_records
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
        self._metrics.set_ready(True)
        log.info("consumer.started", topic=self._topic, ordering=self._ordering)
        try:
            while not self._stop.is_set():
                room = self._backpressure()
                batches = await self._consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=max(1, room)
                )
                for tp, messages in batches.items():
                    for message in messages:
                        self._accept(tp, message)
                if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    await self.commit()
        finally:
            self._metrics.set_ready(False)
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

    def _buffered(self) -> int:
        return sum(len(progress) for progress in self._progress.values())

    def _backpressure(self) -> int:
        """Pause or resume partitions; return how many records may be fetched now.

        Each partition may hold its share of ``max_buffered``: one partition's backlog of a
        few accounts cannot fill the buffer and starve the others. A partition pauses at
        its share and resumes below half of it; all pause when the whole buffer is full.
        """
        buffered = self._buffered()
        self._metrics.buffered.set(buffered)
        share = max(self._max_buffered // max(len(self._progress), 1), 1)
        full = buffered >= self._max_buffered
        for tp, progress in self._progress.items():
            held = len(progress)
            if tp not in self._paused and (full or held >= share):
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif tp in self._paused and not full and held <= share // 2:
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
        progress.add(record.offset)
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
            decision = await self._processor.handle(pending.record, pending.attempt)
            if isinstance(decision, Retry):
                pending.attempt = decision.attempt
                self._metrics.retries.labels(decision.kind).inc()
                if tp not in self._revoked:
                    loop = asyncio.get_running_loop()
                    self._timers[key] = loop.call_later(decision.after_s, self._wake_later, key)
                return
            await self._deliver(decision, pending.record)
        finally:
            self._metrics.in_flight.dec()
        self._metrics.processing.observe(time.perf_counter() - pending.fetched_at)
        if self._progress.get(tp) is not progress:
            return  # the partition was revoked meanwhile
        progress.finish(pending.record.offset)
        queue.popleft()
        if queue:
            self._make_ready(key)
        else:
            del self._queues[key]

    def _wake_later(self, key: Key) -> None:
        self._timers.pop(key, None)
        if key in self._queues and key[0] not in self._revoked:
            self._make_ready(key)

    async def _deliver(self, decision: Decision, record: InboundRecord) -> None:
        deliveries = []
        if isinstance(decision, Publish):
            deliveries.append(await self._publisher.send(decision))
            dead = decision.dead_letter
        else:
            assert isinstance(decision, DeadLetterOnly)
            dead = decision.dead_letter
        if dead is not None:
            deliveries.append(await self._send_dead_letter(dead, record))
        await asyncio.gather(*deliveries)
        if isinstance(decision, Publish):
            await self._processor.published(decision)
            self._count(decision)
        if dead is not None:
            self._metrics.dead_letters.labels(dead.target, dead.reason).inc()
            if isinstance(decision, DeadLetterOnly):
                self._metrics.undecodable.labels(dead.reason).inc()

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
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except (CommitFailedError, IllegalStateError, KafkaError, TimeoutError) as exc:
            # Kept for the next commit while we own the partition; a partition that moved is
            # re-read by its new owner, and the idempotency store absorbs the repeat.
            self._metrics.commits.labels("failed").inc()
            detail = str(exc) or f"no answer from the broker in {COMMIT_TIMEOUT_S:g} s"
            log.warning("offsets.commit_failed", error=type(exc).__name__, detail=detail)
            return
        self._metrics.commits.labels("ok").inc()
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
        for key in [key for key in self._queues if key[0] in revoked]:
            del self._queues[key]
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
