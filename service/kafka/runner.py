"""The command loop: fetch, process each partition's records in order, publish, then commit.

Offsets are committed only after the outcome events of every record up to them were
acknowledged by the broker (acks=all), so a crash at any point re-delivers work instead of
losing it; the idempotency store turns the re-delivery into a duplicate, not a second call.
Partitions are processed concurrently; records within a partition one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.domain.processor import InboundRecord, Processor, Publish, Skip
from service.kafka.publisher import OutcomePublisher
from service.metrics import Metrics

log = structlog.get_logger("service.runner")

FETCH_TIMEOUT_MS = 500


class CommandRunner:
    """Consumes the command topic until ``stop`` is set, then drains and commits."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        topic: str,
        processor: Processor,
        publisher: OutcomePublisher,
        metrics: Metrics,
        stop: asyncio.Event,
        drain_timeout_s: float,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._processor = processor
        self._publisher = publisher
        self._metrics = metrics
        self._stop = stop
        self._drain_timeout_s = drain_timeout_s
        self._done: dict[TopicPartition, int] = {}
        self._batch: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        self._metrics.set_ready(True)
        log.info("consumer.started", topic=self._topic)
        try:
            while not self._stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
                if not batches:
                    continue
                self._batch = asyncio.create_task(self._process_batches(batches))
                await self._wait_for_batch()
                await self.commit()
        finally:
            self._metrics.set_ready(False)
            await self._finish_batch()
            await self.commit()
            log.info("consumer.stopped")

    async def _wait_for_batch(self) -> None:
        """Wait for the batch; when asked to stop meanwhile, give it the drain timeout."""
        assert self._batch is not None
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({self._batch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        await self._finish_batch()

    async def _finish_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        if not batch.done():
            log.info("shutdown.draining", timeout_s=self._drain_timeout_s)
            done, _ = await asyncio.wait({batch}, timeout=self._drain_timeout_s)
            if not done:
                log.warning("shutdown.drain_timeout", timeout_s=self._drain_timeout_s)
                batch.cancel()
                await asyncio.gather(batch, return_exceptions=True)
                return
        batch.result()  # re-raise a failure of the processing itself

    async def _process_batches(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        async with asyncio.TaskGroup() as group:
            for tp, records in batches.items():
                group.create_task(self._process_partition(tp, records))

    async def _process_partition(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        for message in records:
            if self._stop.is_set():
                return
            await self._process_one(tp, message)
            self._done[tp] = message.offset + 1

    async def _process_one(self, tp: TopicPartition, message: Any) -> None:
        started = time.perf_counter()
        self._metrics.records_consumed.labels(tp.topic).inc()
        self._metrics.in_flight.inc()
        try:
            record = InboundRecord(
                tp.topic,
                tp.partition,
                message.offset,
                message.key,
                message.value,
                message.timestamp,
            )
            decision = await self._processor.handle(record)
            if isinstance(decision, Skip):
                self._metrics.undecodable.labels(decision.reason).inc()
                return
            delivery = await self._publisher.send(decision)
            await delivery
            await self._processor.published(decision)
            self._count(decision)
            self._metrics.processing.observe(time.perf_counter() - started)
        finally:
            self._metrics.in_flight.dec()

    def _count(self, decision: Publish) -> None:
        reason = decision.reason_code or ""
        self._metrics.outcomes.labels(decision.kind, reason).inc()
        if decision.duplicate_kind:
            self._metrics.duplicates.labels(decision.duplicate_kind).inc()
        if reason == "VALIDATION_FAILED" and not decision.duplicate:
            self._metrics.invalid.inc()

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        offsets = {
            tp: offset
            for tp, offset in self._done.items()
            if partitions is None or tp in partitions
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Kept for the next commit while we still own the partition; a partition that
            # moved is re-read by its new owner, and the idempotency store absorbs the repeat.
            self._metrics.commits.labels("failed").inc()
            log.warning("offsets.commit_failed", error=type(exc).__name__, detail=str(exc))
            owned = self._consumer.assignment()
            committed = {tp: offset for tp, offset in offsets.items() if tp not in owned}
        else:
            self._metrics.commits.labels("ok").inc()
            committed = offsets
        for tp, offset in committed.items():
            if self._done.get(tp) == offset:
                del self._done[tp]

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batch in hand (bounded), commit what is done, then let go."""
        log.info(
            "partitions.revoked", partitions=sorted(f"{t.topic}/{t.partition}" for t in revoked)
        )
        if self._batch is not None and not self._batch.done():
            await asyncio.wait({self._batch}, timeout=self._drain_timeout_s)
        await self.commit(revoked)
        self._metrics.assigned_partitions.set(len(self._consumer.assignment()) - len(revoked))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions.assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )
        self._metrics.assigned_partitions.set(len(self._consumer.assignment()))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._runner.on_assigned(set(assigned))
