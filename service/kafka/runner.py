"""The command loop: many accounts at once, each account strictly in order.

Records are fetched into per-partition buffers and grouped by ordering key (the account,
read from the value; with ``ordering=partition``, one key per partition: the slow
baseline). Each key runs one record at a time; up to ``max_in_flight`` keys run at once,
the key whose next record was fetched first starting first. A record handed back for later
(a retry, a claim held elsewhere, a reconciliation) keeps its key busy, so that account's
later commands wait while other accounts go on.

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

With Kafka transactions (``transactions``: ``PA_KAFKA__TRANSACTIONS``) a record is finished
once it is *decided*; what it publishes (its outcome, dead letter or review copy) is held.
At each commit, one transaction carries the held outputs of every partition's finished
prefix and the offsets after those prefixes (``send_offsets_to_transaction``): a record's
outputs become visible together with its offset, never without it, so a crash re-delivers
only records none of whose outputs was ever visible. Outputs of records finished beyond the
prefix wait for a later transaction. The store notes an outcome published only once its
transaction committed. Any failure of a transaction (a send, the offsets, the commit, a
timeout) ends the transactional producer: the runner pauses intake, replaces the producer
(which ends the failed transaction) and asks the group's committed offsets whether the
failed commit went through after all; what did not is carried by the next transaction,
after a growing pause. Nothing is decided again: the held decisions are already stored.

The runner sees the consumer, the publishers and the processor only through the protocols
of ``service.kafka.ports``; the service runs its two coroutines (``run`` and ``dispatch``)
in its one task group (``service.app.run_tasks``). The log lines of one record's handling,
the deeper layers' included, carry its topic, partition, offset, idempotency key and trace
id, bound once here; never its account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service import api_clock
from service.api_clock import ApiClock
from service.domain.command import safe_text
from service.domain.decisions import (
    AlreadyPublished,
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    InboundRecord,
    Publish,
    Retry,
)
from service.domain.inbound import DecodedCommand, Unresolved
from service.domain.limits import TEXT_LIMITS
from service.domain.store import OwnershipLostError, StoreError
from service.health import Health
from service.kafka.deadletter import Failure
from service.kafka.ports import (
    CommandConsumer,
    ConsumerMessage,
    DeadLetterSender,
    OutcomeSender,
    RecordProcessor,
    Transactions,
)
from service.metrics import Metrics
from service.registry.errors import RegistryError

log = structlog.get_logger("service.runner")

FETCH_TIMEOUT_MS = 100
COMMIT_INTERVAL_S = 1.0
COMMIT_TIMEOUT_S = 3.0  # aiokafka waits for a coordinator indefinitely when the broker is gone
POSITION_TIMEOUT_S = 0.01
"""How long the lag observation waits for a partition's position (known at once, except
while the consumer looks up where to start: then the next round asks again)."""
FAULT_FIRST_PAUSE_S = 0.5
CLAIM_LOST_PAUSE_S = 0.5
TRANSACTION_TIMEOUT_S = 5.0
"""Longest one transaction may take, from its first record to its commit (aiokafka retries a
transactional request without end while the broker is away)."""
RENEW_TIMEOUT_S = 5.0
"""Longest the replacement of a failed transactional producer may take, reading back the
group's offsets included."""

Key = tuple[TopicPartition, str]

SCHEMA_WAIT = "\x00writer schema"
"""The pseudo ordering key under which a partition waiting for a writer schema is faulted."""


@dataclass
class _Pending:
    """One fetched record and what happened to it so far."""

    record: InboundRecord
    fetched_at: float
    """``time.perf_counter()`` when it was taken from a fetch: records are taken one after
    another, so it is also their order of fetching (the order in which they start)."""
    attempt: Attempt = field(default_factory=Attempt)
    decision: Publish | DeadLetterOnly | AlreadyPublished | None = None
    """Taken once; a fault after it retries only what is left of delivering it."""
    delivered: bool = False
    faults: int = 0
    api: ApiClock = field(default_factory=ApiClock)
    """Its PAS calls' time so far, over every try (``service.api_clock``)."""
    acked_at: float | None = None
    """``time.perf_counter()`` when the broker acknowledged its outputs (None with
    transactions, whose outputs are acknowledged with the commit)."""


@dataclass
class _Blocked:
    """A partition whose next record waits for its writer schema: that record and the ones
    fetched after it, not accepted yet, and the task fetching the schema."""

    messages: list[ConsumerMessage]
    task: asyncio.Task[None] | None = None


@dataclass
class _Transaction:
    """What one transaction commits: offsets, and the records whose outputs it carries."""

    offsets: dict[TopicPartition, int]
    carried: list[tuple[TopicPartition, _Pending]]


def fault_part(exc: BaseException) -> str:
    """Which part of our infrastructure a fault comes from (a bounded label)."""
    if isinstance(exc, OwnershipLostError):
        return "claim"
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, RegistryError):
        return "registry"
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a kind
        return "kafka"  # the only waits of ours without their own error are Kafka's
    module = type(exc).__module__
    if isinstance(exc, StoreError | sqlite3.Error | OSError) or module.startswith(
        "service.idempotency"
    ):
        return "store"
    return "other"


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, short (aiokafka's messages may name the type already)."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return (text if text.startswith(name) else f"{name}: {text}")[:300]


class PartitionProgress:
    """Offsets fetched and finished in one partition; the commit point is their done prefix.

    It also knows what the lag metrics need: where the partition's unfinished part starts
    (its first unfinished record, or the next offset to fetch), the timestamp of that first
    unfinished record, and the offset last committed (before the first commit: where
    reading started, which is the group's committed offset).
    """

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.commit_at: int | None = None
        self.dirty = False
        self.bytes = 0
        """Bytes of this partition's records fetched and not finished."""
        self.next_offset: int | None = None
        """The offset after the last record taken (None: none taken, position not known)."""
        self.committed: int | None = None
        """The offset last committed, or where reading started (None: not known yet)."""
        self._timestamps: dict[int, int] = {}
        """Record timestamps (ms) of the pending offsets."""

    def add(self, offset: int, size: int = 0, timestamp_ms: int | None = None) -> None:
        if self.committed is None:
            self.committed = offset
        self.pending.append(offset)
        self.bytes += size
        self.next_offset = offset + 1
        if timestamp_ms is not None:
            self._timestamps[offset] = timestamp_ms

    def finish(self, offset: int, size: int = 0) -> None:
        self.bytes -= size
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self._timestamps.pop(first, None)
            self.commit_at = first + 1
            self.dirty = True

    def starts_at(self, position: int) -> None:
        """Reading starts at ``position`` (the consumer's, before any record was taken)."""
        if self.next_offset is None:
            self.next_offset = position
        if self.committed is None:
            self.committed = position

    def committed_to(self, offset: int) -> None:
        self.committed = offset if self.committed is None else max(self.committed, offset)

    @property
    def unfinished_from(self) -> int | None:
        """The first offset not done: the first unfinished record, else the next to fetch."""
        return self.pending[0] if self.pending else self.next_offset

    def lag(self, end: int) -> int | None:
        """Offsets from the first not done to ``end`` (the partition's readable end)."""
        start = self.unfinished_from
        return None if start is None else max(0, end - start)

    def commit_gap(self) -> int:
        """Records finished but not committed: the finished prefix past the last commit, and
        those finished ahead of an unfinished one (committed only once it finishes)."""
        ready = 0
        if self.commit_at is not None and self.committed is not None:
            ready = max(0, self.commit_at - self.committed)
        return ready + len(self.done)

    def oldest_timestamp_ms(self) -> int | None:
        """The record timestamp of the first unfinished record (None: none in hand)."""
        return self._timestamps.get(self.pending[0]) if self.pending else None

    def __len__(self) -> int:
        return len(self.pending)


def log_context(record: InboundRecord) -> dict[str, Any]:
    """What every log line about ``record`` carries: where it is, its idempotency key and
    correlation id, and the id of its trace (``InboundRecord.trace``).

    Never the account (the ordering key): logs hold no account number.
    """
    context: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "trace_id": record.trace.trace_id,
    }
    if isinstance(record.payload, DecodedCommand):
        # Safe copies: a hostile key (600 KB, control characters) must not reach every line.
        context["idempotency_key"] = safe_text(
            record.payload.idempotency_key, TEXT_LIMITS["idempotency_key"]
        )
        context["correlation_id"] = safe_text(
            record.payload.correlation_id, TEXT_LIMITS["correlation_id"]
        )
    return context


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


class CommandRunner:
    """Consumes the command topic until ``stop`` is set, then drains and commits.

    Two coroutines make one runner: ``run`` (intake, commits, the drain at the end) and
    ``dispatch`` (starts the records that are ready). Run them side by side in one task
    group; ``run`` ends the dispatcher once the records fetched are finished or the drain
    budget is spent. Each record runs in a task of its own, which ``run`` waits for (bounded)
    before it returns: nothing of the runner outlives ``run``.

    A record whose processing raises an ``Exception`` is held up as a fault and tried again
    later. A ``BaseException`` that is not one (``SystemExit``, ``KeyboardInterrupt``: not
    something to retry) stops the runner instead: intake stops, the records in hand finish
    within the drain budget, what finished is committed, and ``run`` raises it.
    """

    def __init__(
        self,
        *,
        consumer: CommandConsumer,
        topic: str,
        processor: RecordProcessor,
        publisher: OutcomeSender,
        dead_letters: DeadLetterSender,
        metrics: Metrics,
        stop: asyncio.Event,
        drain_timeout_s: float,
        ordering: Literal["key", "partition"] = "key",
        max_in_flight: int = 200,
        max_buffered: int = 2000,
        max_poll_records: int = 500,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        fault_backoff_max_s: float = 30.0,
        commit_interval_s: float = COMMIT_INTERVAL_S,
        health: Health | None = None,
        clock: Callable[[], float] = time.time,
        transactions: Transactions | None = None,
    ) -> None:
        """``transactions``: publish in Kafka transactions through this producer (the
        ``publisher`` and ``dead_letters`` must send through it too); None: idempotently."""
        self._consumer = consumer
        self._clock = clock
        """Wall-clock seconds, compared with record timestamps for the lag in seconds."""
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
        self._commit_interval_s = commit_interval_s
        self._health = health or Health()
        self._faulted: dict[Key, str] = {}
        """Keys whose first record is held up by a fault, with its part; their partition
        stays paused until the record passes."""
        self._slots = asyncio.Semaphore(max_in_flight)
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._queues: dict[Key, deque[_Pending]] = {}
        self._ready: list[tuple[float, Key]] = []  # a heap of (first record's fetched_at, key)
        self._wake = asyncio.Event()
        self._running: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._revoked: set[TopicPartition] = set()
        # Partitions whose next record needs a writer schema from the registry.
        self._blocked: dict[TopicPartition, _Blocked] = {}
        self._paused: set[TopicPartition] = set()
        self._failure: BaseException | None = None
        self._last_commit = time.monotonic()
        self._dispatching = False  # the dispatcher runs: buffered records can still finish
        self._closed = False
        """``run`` is ending: the dispatcher starts nothing more."""
        self._settled = asyncio.Event()
        """Set when the buffer empties, or when nothing will empty it any more (a failure,
        the dispatcher gone); what the drain on the way out waits for."""
        self._transactions = transactions
        self._held: dict[TopicPartition, dict[int, _Pending]] = {}
        """With transactions: decided records whose outputs wait for the transaction that
        commits their offsets, by offset."""
        self._unnoted: list[Publish] = []
        """With transactions: outcomes of committed transactions the store has not noted
        published yet (the note failed); tried again at each commit."""
        self._in_doubt: _Transaction | None = None
        """A transaction whose commit failed, until the runner knows whether it went through."""
        self._transaction_faults = 0
        """Transactions (and producer replacements) failed in a row."""
        self._transaction_retry_at = 0.0
        """No transaction is tried before this moment (``time.monotonic``) after a failure."""
        self._transaction_turn = asyncio.Lock()
        """One transaction at a time: aiokafka runs the revocation callback in its own task,
        which may come while the loop's commit is in a transaction."""

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch and commit until ``stop``; then finish what was fetched, drain, commit."""
        self._health.report("group", "joining the consumer group")  # cleared once assigned
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        self._health.started()
        log.info("consumer.started", topic=self._topic, ordering=self._ordering)
        try:
            while not self._stop.is_set():
                room = self._backpressure()
                batches = await self._fetch(room)
                for tp, messages in batches.items():
                    for message in messages:
                        self._accept(tp, message)
                if self._commit_due():
                    await self.commit()
                await self.observe_lag()
        finally:
            await self._wind_down()
        if self._failure is not None:
            raise self._failure

    async def _wind_down(self) -> None:
        """Intake has stopped: finish, drain and commit within one budget."""
        self._health.draining()
        # One budget for the whole drain: finishing what was fetched, then what runs.
        deadline = time.monotonic() + self._drain_timeout_s
        await self._finish_buffered(deadline)
        for task in self._unblock(set(self._blocked)):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_dispatcher()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        await self._drain(set(self._running), max(0.0, deadline - time.monotonic()))
        await self.commit(closing=True)
        if self._unnoted:
            log.warning("outcomes.note_lost", outcomes=len(self._unnoted))
        with contextlib.suppress(Exception):  # the last figures, best effort on the way out
            await self.observe_lag()
        log.info("consumer.stopped")

    async def _finish_buffered(self, deadline: float) -> None:
        """On the way out: fetch nothing more, but finish what was fetched (bounded).

        Finishing every buffered record lets the commit cover all of it, so the next start
        re-reads nothing; what is still unfinished at the drain timeout is re-read then.
        """
        if self._failure is not None or not self._queues or not self._dispatching:
            return
        log.info("shutdown.draining", records=self._buffered(), timeout_s=self._drain_timeout_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), max(0.0, deadline - time.monotonic()))
        if self._queues:
            log.warning("shutdown.drain_timeout", unfinished=self._buffered())

    async def _fetch(self, room: int) -> Mapping[TopicPartition, Sequence[ConsumerMessage]]:
        """One fetch; a failing consumer is reported and tried again, never the end of us."""
        try:
            batches = await self._consumer.getmany(
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
        """Records in hand: fetched and not finished, or (with transactions) held."""
        return sum(self._in_hand(tp, progress) for tp, progress in self._progress.items())

    def _in_hand(self, tp: TopicPartition, progress: PartitionProgress) -> int:
        """Records of ``tp`` in hand. With transactions: those not finished and those held
        (finished ahead of an unfinished one or not, they wait for their transaction)."""
        held = self._held.get(tp)
        if self._transactions is None:
            return len(progress)
        return len(progress) - len(progress.done) + (len(held) if held else 0)

    def _commit_due(self) -> bool:
        """The commit interval has passed, or (with transactions) half the buffer is held
        (committing sooner keeps intake going)."""
        if time.monotonic() - self._last_commit >= self._commit_interval_s:
            return True
        held = sum(len(records) for records in self._held.values())
        return held > 0 and held >= self._max_buffered // 2

    def _backpressure(self) -> int:
        """Pause or resume partitions; return how many records may be fetched now.

        Each partition may hold its share of ``max_buffered`` records and of
        ``max_buffered_bytes``: one partition's backlog of a few accounts cannot fill the
        buffer and starve the others. A partition pauses at its share and resumes below
        half of it; all pause when the whole buffer is full, or while the store fails. A
        partition held up by a fault stays paused until its record passes. Records held for
        their transaction count as in hand (their bytes too, until it commits); while
        transactions fail, all pause.
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
            # nor one that just failed a record: it is shared by every partition, so none
            # should read on until the watchdog's next probe notices
            or self._health.problem("records.store") is not None
            or self._health.problem("transactions") is not None  # nor failing transactions
        )
        held = {tp for tp, _ in self._faulted} | set(self._blocked)
        for tp, progress in self._progress.items():
            in_hand = self._in_hand(tp, progress)
            over = in_hand >= share or progress.bytes >= byte_share
            below = in_hand <= share // 2 and progress.bytes <= byte_share // 2
            if tp not in self._paused and (full or over or tp in held):
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif tp in self._paused and not full and below and tp not in held:
                self._consumer.resume(tp)
                self._paused.discard(tp)
        self._metrics.paused.set(len(self._paused))
        return min(self._max_poll_records, self._max_buffered - buffered)

    def _accept(self, tp: TopicPartition, message: ConsumerMessage) -> None:
        """Buffer one fetched record behind the earlier records of its key."""
        progress = self._progress.get(tp)
        if progress is None or tp in self._revoked:
            return  # a fetch that raced a revocation: the new owner reads it
        blocked = self._blocked.get(tp)
        if blocked is not None:  # behind a record waiting for its writer schema
            blocked.messages.append(message)
            return
        keyed = self._ordering == "key"
        payload = self._processor.payload_of(message.value) if keyed else None
        if isinstance(payload, Unresolved):
            self._block(tp, message)
            return
        record = InboundRecord(
            tp.topic,
            tp.partition,
            message.offset,
            message.key,
            message.value,
            message.timestamp,
            tuple(message.headers or ()),
            payload,
        )
        self._metrics.records_consumed_for(tp.topic).inc()
        progress.add(record.offset, record.size, record.timestamp_ms)
        ordering = ""  # ordering=partition: one key per partition, the slow baseline
        if keyed:
            ordering = self._processor.ordering_key(record) or f"@{record.offset}"
        key = (tp, ordering)
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque([_Pending(record, time.perf_counter())])
            self._settled.clear()
            self._make_ready(key)
        else:
            queue.append(_Pending(record, time.perf_counter()))

    def _block(self, tp: TopicPartition, message: ConsumerMessage) -> None:
        """``message``'s writer schema is to be fetched before it can be read (for its
        ordering key): it and every later record of its partition wait, unaccepted, while a
        task fetches it; the partition is paused, its commit stays before the record."""
        blocked = self._blocked[tp] = _Blocked([message])
        blocked.task = asyncio.create_task(
            self._resolve(tp, message), name=f"schema {tp.topic}/{tp.partition}"
        )

    async def _resolve(self, tp: TopicPartition, message: ConsumerMessage) -> None:
        """Fetch ``message``'s writer schema, trying again with a growing pause while the
        registry cannot answer (a fault of part ``registry``: reported, never dead-lettered);
        then accept the partition's waiting records in order."""
        key = (tp, SCHEMA_WAIT)
        faults = 0
        context = {"topic": tp.topic, "partition": tp.partition, "offset": message.offset}
        with structlog.contextvars.bound_contextvars(**context):
            while True:
                try:
                    await self._processor.prepare(message.value)
                    break
                except Exception as exc:  # any fault: the partition waits, the service goes on
                    faults += 1
                    part = fault_part(exc)
                    self._metrics.faults.labels(part).inc()
                    self._faulted[key] = part
                    self._health.report(f"records.{part}", f"decode waiting: {describe(exc)}")
                    ceiling = min(
                        FAULT_FIRST_PAUSE_S * 2 ** (faults - 1), self._fault_backoff_max_s
                    )
                    pause = random.uniform(ceiling / 2, ceiling)
                    if not faults & (faults - 1):  # the 1st, 2nd, 4th, 8th... fault
                        event = log.error if faults == 1 else log.warning
                        event(
                            "record.fault",
                            part=part,
                            stage="schema",
                            faults=faults,
                            retry_in_s=round(pause, 2),
                            error=describe(exc),
                        )
                    await asyncio.sleep(pause)
            if faults:
                log.info("record.recovered", faults=faults)
        self._unfault([key])
        blocked = self._blocked.pop(tp, None)
        for waiting in blocked.messages if blocked is not None else ():
            self._accept(tp, waiting)

    def _unblock(self, partitions: Collection[TopicPartition]) -> list[asyncio.Task[None]]:
        """Stop waiting for writer schemas in ``partitions`` (revoked, or shutting down): their
        waiting records are dropped unaccepted, so never committed; the next owner reads them."""
        tasks: list[asyncio.Task[None]] = []
        for tp in partitions:
            blocked = self._blocked.pop(tp, None)
            if blocked is not None and blocked.task is not None:
                blocked.task.cancel()
                tasks.append(blocked.task)
        self._unfault(
            [key for key in self._faulted if key[0] in partitions and key[1] == SCHEMA_WAIT]
        )
        return tasks

    def _make_ready(self, key: Key) -> None:
        """``key``'s first record may start; it starts before every record fetched after it.

        By fetch order, not by when the key became ready: the commit point of a partition is
        the end of its finished prefix, so a record started late holds up the commit of every
        later record of its partition. An account's next record (ready once the one before
        it finished) and a record handed back for later were fetched before most of what
        waits; sent to the back of the line, behind a full buffer of other accounts, they
        held their partitions' commits for seconds while the records behind them finished,
        and a rebalance then re-delivered all of those.
        """
        heapq.heappush(self._ready, (self._queues[key][0].fetched_at, key))
        self._wake.set()

    # -- dispatching --------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Start each ready key's first record, ``max_in_flight`` at most, until ``run`` ends."""
        self._dispatching = True
        try:
            while not self._closed:
                if not self._ready:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._slots.acquire()
                key = self._take_ready()
                if key is None:
                    self._slots.release()
                    continue
                self._start(key)
        finally:
            self._dispatching = False
            self._settled.set()  # what is still buffered will not finish now

    def _take_ready(self) -> Key | None:
        """The next key to start, or None (nothing ready, its records gone, or closing)."""
        if self._closed or not self._ready:
            return None
        _, key = heapq.heappop(self._ready)
        if key not in self._queues or key[0] in self._revoked:
            return None
        return key

    def _start(self, key: Key) -> None:
        tp = key[0]
        task = asyncio.create_task(self._run_one(key), name=f"record {tp.topic}/{tp.partition}")
        self._running.setdefault(tp, set()).add(task)
        task.add_done_callback(functools.partial(self._task_done, tp))

    def _close_dispatcher(self) -> None:
        """Start nothing more; the dispatcher returns at its next step."""
        self._closed = True
        self._wake.set()

    def _task_done(self, tp: TopicPartition, task: asyncio.Task[None]) -> None:
        self._slots.release()
        running = self._running.get(tp)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[tp]
        if not task.cancelled() and task.exception() is not None:
            self._crashed(task.exception())

    def _crashed(self, exc: BaseException | None) -> None:
        """Something we must not retry: stop the runner; ``run`` raises it at the end."""
        if exc is None or self._failure is not None:
            return
        self._failure = exc
        log.error("processing.crashed", error=repr(exc))
        self._settled.set()
        self._stop.set()

    async def _run_one(self, key: Key) -> None:
        """Try ``key``'s first record once, with its log context bound. Always a task of
        its own (``_start``)."""
        queue = self._queues[key]
        progress = self._progress[key[0]]
        pending = queue[0]
        # Bound for the rest of this task, which is this record's alone (``_start``): its
        # context is a copy, dropped with it, so nothing needs unbinding.
        structlog.contextvars.bind_contextvars(**log_context(pending.record))
        api_clock.bind(pending.api)
        try:
            decided = await self._try(key, pending)
        except Exception as exc:  # any fault: this record waits, the service goes on
            self._fault(key, pending, exc)
            return
        except asyncio.CancelledError:
            raise  # the drain ran out of time: the record is re-read by the next owner
        except BaseException as exc:  # kept, and raised by ``run`` once drained
            # Not retried, and not raised here either: asyncio would let a SystemExit out
            # of the event loop at once, past the drain and the commit.
            self._crashed(exc)
            return
        if decided:
            self._finished(key, queue, progress)

    async def _try(self, key: Key, pending: _Pending) -> bool:
        """Decide (unless decided already) and deliver; False when handed back for later."""
        self._metrics.in_flight.inc()
        try:
            if pending.decision is None:
                decision = await self._processor.handle(pending.record, pending.attempt)
                if isinstance(decision, Retry):
                    pending.attempt = decision.attempt
                    self._metrics.retries.labels(decision.kind).inc()
                    self._later(key, decision.after_s)
                    return False
                pending.decision = decision
            if self._transactions is None:
                await self._deliver(pending)  # with transactions: at the next commit
        finally:
            self._metrics.in_flight.dec()
        return True

    def _finished(self, key: Key, queue: deque[_Pending], progress: PartitionProgress) -> None:
        """``key``'s first record went through: move the commit point, start its next one."""
        tp = key[0]
        pending = queue[0]
        self._passed(key, pending)
        # To the acknowledgement, as the metric says: not the store's note of it after.
        ended = time.perf_counter() if pending.acked_at is None else pending.acked_at
        took = ended - pending.fetched_at
        self._metrics.processing.observe(took)
        self._metrics.service_added.observe(max(took - pending.api.seconds, 0.0))
        if self._progress.get(tp) is not progress:
            return  # the partition was revoked meanwhile
        record = pending.record
        if self._transactions is not None and not isinstance(pending.decision, AlreadyPublished):
            self._held.setdefault(tp, {})[record.offset] = pending
            progress.finish(record.offset)  # its bytes count until its transaction commits
        else:
            progress.finish(record.offset, record.size)
        queue.popleft()
        if queue:
            self._make_ready(key)
            return
        del self._queues[key]
        if not self._queues:
            self._settled.set()

    def _later(self, key: Key, after_s: float) -> None:
        """Hand ``key``'s first record back in ``after_s`` seconds (unless revoked)."""
        if key[0] not in self._revoked:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(after_s, self._wake_later, key)

    def _fault(self, key: Key, pending: _Pending, exc: Exception) -> None:
        """A fault of our infrastructure held this record up: pause, report, try later."""
        part = fault_part(exc)
        self._metrics.faults.labels(part).inc()
        if isinstance(exc, OwnershipLostError):
            # Another worker took the claim over (our lease ran out): start this record
            # again from its claim, which tells what the other worker did with it.
            log.warning("idempotency.claim_lost")
            pending.decision = None
            pending.delivered = False
            self._later(key, CLAIM_LOST_PAUSE_S)
            return
        pending.faults += 1
        ceiling = min(FAULT_FIRST_PAUSE_S * 2 ** (pending.faults - 1), self._fault_backoff_max_s)
        pause = random.uniform(ceiling / 2, ceiling)
        stage = "deliver" if pending.decision is not None else "process"
        self._faulted[key] = part
        self._health.report(f"records.{part}", f"{stage} failing: {describe(exc)}")
        if pending.faults & (pending.faults - 1):
            self._later(key, pause)  # logged at the 1st, 2nd, 4th, 8th... fault only
            return
        event = log.error if pending.faults == 1 else log.warning
        event(
            "record.fault",
            part=part,
            stage=stage,
            faults=pending.faults,
            retry_in_s=round(pause, 2),
            error=describe(exc),
            exc_info=part == "other" and pending.faults == 1,
        )
        self._later(key, pause)

    def _passed(self, key: Key, pending: _Pending) -> None:
        """A record went through: its key no longer holds its partition up."""
        if pending.faults:
            log.info("record.recovered", faults=pending.faults)
        self._unfault([key])

    def _unfault(self, keys: Collection[Key]) -> None:
        """``keys`` are no longer held up; clear each part no other key is held up by."""
        parts = {self._faulted.pop(key) for key in keys if key in self._faulted}
        for part in parts - set(self._faulted.values()):
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
        if not pending.delivered:
            await _all_delivered(await self._send_outputs(pending))
            pending.acked_at = time.perf_counter()
            pending.delivered = True
            self._count_delivered(decision)
        if isinstance(decision, Publish):
            await self._processor.published(decision)

    async def _send_outputs(self, pending: _Pending) -> list[Awaitable[object]]:
        """Queue what the decision publishes (its outcome event, its dead letter or review
        copy); one awaitable per record, resolved when the broker acknowledged it."""
        decision = pending.decision
        deliveries: list[Awaitable[object]] = []
        if isinstance(decision, Publish):
            deliveries.append(await self._publisher.send(decision))
        dead = _dead_letter_of(decision)
        if dead is not None:
            deliveries.append(await self._send_dead_letter(dead, pending.record))
        return deliveries

    def _count_delivered(self, decision: Publish | DeadLetterOnly | AlreadyPublished) -> None:
        if isinstance(decision, Publish):
            self._count(decision)
        dead = _dead_letter_of(decision)
        if dead is not None:
            self._metrics.dead_letters.labels(dead.target, dead.reason).inc()
            if dead.target == "review":
                self._metrics.review_copies.inc()
            if isinstance(decision, DeadLetterOnly):
                self._metrics.undecodable.labels(dead.reason).inc()

    async def _send_dead_letter(
        self, dead: DeadLetterRequest, record: InboundRecord
    ) -> Awaitable[object]:
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
        self._metrics.outcomes_for(decision.kind, reason).inc()
        if decision.duplicate_kind:
            self._metrics.duplicates.labels(decision.duplicate_kind).inc()
        if reason == "VALIDATION_FAILED" and not decision.duplicate:
            self._metrics.invalid.inc()
        if reason == "OUTCOME_UNKNOWN" and not decision.duplicate:
            self._metrics.unknown_outcomes.inc()

    # -- lag ------------------------------------------------------------------------------

    async def observe_lag(self) -> None:
        """Set each assigned partition's lag (records, seconds) and commit gap.

        - lag in records: from the first offset not done (the first unfinished record, else
          the next to fetch) to the partition's readable end, the last stable offset under
          ``read_committed`` (records of open transactions cannot be read yet), else its
          high watermark. It needs one fetch answer of the partition; until then it is not
          set. A paused partition keeps the end of its last fetch answer.
        - lag in seconds: now minus the record timestamp of the first unfinished record: it
          keeps growing while that record is stuck; 0 when no record of the partition is in
          hand (records not fetched yet, a paused partition's among them, show in records).
        - commit gap: ``PartitionProgress.commit_gap``.
        """
        now = self._clock()
        for tp, progress in list(self._progress.items()):
            if progress.next_offset is None and not await self._learn_position(tp, progress):
                continue
            label = str(tp.partition)
            self._metrics.commit_gap.labels(label).set(progress.commit_gap())
            oldest = progress.oldest_timestamp_ms()
            age = 0.0 if oldest is None else max(0.0, now - oldest / 1000)
            self._metrics.lag_seconds.labels(label).set(age)
            end = self._readable_end(tp)
            lag = None if end is None else progress.lag(end)
            if lag is not None:
                self._metrics.lag_records.labels(label).set(lag)

    async def _learn_position(self, tp: TopicPartition, progress: PartitionProgress) -> bool:
        """Ask the consumer where ``tp`` starts (nothing taken of it yet); False: not known."""
        try:
            async with asyncio.timeout(POSITION_TIMEOUT_S):
                position = await self._consumer.position(tp)
        except (TimeoutError, KafkaError):
            return False  # still looking up where to start (IllegalStateError: not assigned)
        if self._progress.get(tp) is not progress:
            return False  # revoked meanwhile
        progress.starts_at(position)
        return True

    def _readable_end(self, tp: TopicPartition) -> int | None:
        """The offset after the last record a ``read_committed`` consumer may read of ``tp``."""
        try:
            stable = self._consumer.last_stable_offset(tp)
            if stable is not None and stable >= 0:
                return stable
            return self._consumer.highwater(tp)
        except AssertionError:  # aiokafka asserts the partition is assigned
            return None

    # -- commits, rebalances, shutdown ----------------------------------------------------

    async def commit(
        self,
        partitions: set[TopicPartition] | None = None,
        *,
        closing: bool = False,
    ) -> None:
        """Commit each partition's finished prefix (of ``partitions``, or all).

        With transactions, in one transaction with the held outputs of those records.
        ``partitions`` given (a revocation): now, whatever pause a failed transaction asked
        for. ``closing`` (the commit on the way out): once, not followed by a producer
        replacement when it fails (what it carried is read again at the next start).
        """
        self._last_commit = time.monotonic()
        if self._transactions is not None:
            async with self._transaction_turn:
                await self._commit_transaction(self._transactions, partitions, closing=closing)
            return
        offsets = self._ready_offsets(partitions)
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
        self._committed_to(offsets)

    def _ready_offsets(self, partitions: set[TopicPartition] | None) -> dict[TopicPartition, int]:
        """The end of each partition's finished prefix not committed yet."""
        return {
            tp: progress.commit_at
            for tp, progress in self._progress.items()
            if progress.dirty
            and progress.commit_at is not None
            and (partitions is None or tp in partitions)
        }

    def _committed_to(self, offsets: Mapping[TopicPartition, int]) -> None:
        """``offsets`` are committed."""
        self._metrics.commits.labels("ok").inc()
        self._health.clear("offsets")
        for tp, offset in offsets.items():
            progress = self._progress.get(tp)
            if progress is None:
                continue
            progress.committed_to(offset)
            if progress.commit_at == offset:
                progress.dirty = False

    # -- transactions ---------------------------------------------------------------------

    async def _commit_transaction(
        self,
        transactions: Transactions,
        partitions: set[TopicPartition] | None,
        *,
        closing: bool,
    ) -> None:
        """One transaction: each partition's finished prefix, the held outputs of its
        records, and the offset after it."""
        if self._in_doubt is not None:
            if closing:
                log.warning("transaction.in_doubt_at_shutdown")
                return  # read again at the next start, whose producer ends the transaction
            if partitions is None and time.monotonic() < self._transaction_retry_at:
                return
            if not await self._settle(transactions):
                return
        elif partitions is None and not closing and time.monotonic() < self._transaction_retry_at:
            return
        await self._note_published()
        offsets = self._ready_offsets(partitions)
        if not offsets:
            if partitions is None:
                self._health.clear("offsets")
                self._transactions_fine()  # after a replacement, nothing was left to carry
            return
        carried = [
            (tp, held[offset])
            for tp, end in offsets.items()
            if (held := self._held.get(tp))
            for offset in sorted(held)
            if offset < end
        ]
        transaction = _Transaction(offsets, carried)
        try:
            async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                await self._run_transaction(transactions, transaction)
        except Exception as exc:  # any: the producer is finished (an AssertionError too)
            self._in_doubt = transaction
            self._metrics.commits.labels("failed").inc()
            self._transaction_fault("commit", exc)
            if not closing:
                await self._settle(transactions)
            return
        self._transactions_fine()
        await self._transaction_committed(transaction)

    def _transactions_fine(self) -> None:
        if self._transaction_faults:
            log.info("transaction.recovered", faults=self._transaction_faults)
        self._transaction_faults = 0
        self._health.clear("transactions")

    async def _run_transaction(self, transactions: Transactions, transaction: _Transaction) -> None:
        await transactions.begin()
        deliveries: list[Awaitable[object]] = []
        for _, pending in transaction.carried:
            deliveries += await self._send_outputs(pending)
        await transactions.send_offsets(transaction.offsets)
        # aiokafka commits a transaction even when one of its records failed: check first.
        await _all_delivered(deliveries)
        await transactions.commit()

    async def _transaction_committed(self, transaction: _Transaction) -> None:
        """``transaction`` committed: its records are done, their outcomes published."""
        self._committed_to(transaction.offsets)
        for tp, pending in transaction.carried:
            held = self._held.get(tp)
            if held is not None:
                held.pop(pending.record.offset, None)
            progress = self._progress.get(tp)
            if progress is not None:
                progress.bytes -= pending.record.size
            decision = pending.decision
            assert decision is not None
            self._count_delivered(decision)
            if isinstance(decision, Publish):
                self._unnoted.append(decision)
        await self._note_published()

    async def _note_published(self) -> None:
        """Note in the store the outcomes of committed transactions, all at once (a store
        that groups writes makes one of them); those that fail are tried at the next commit.

        A crash before the note leaves a key whose outcome is visible unnoted: a later
        repeat of its command then publishes the original again (same event id).
        """
        if not self._unnoted:
            return
        decisions, self._unnoted = self._unnoted, []
        results = await asyncio.gather(
            *(self._processor.published(decision) for decision in decisions),
            return_exceptions=True,
        )
        failed = [
            (decision, result)
            for decision, result in zip(decisions, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if not failed:
            self._health.clear("published")
            return
        self._unnoted = [decision for decision, _ in failed]
        error = failed[0][1]
        part = fault_part(error)
        self._metrics.faults.labels(part).inc()
        log.warning("outcomes.note_failed", outcomes=len(failed), part=part, error=describe(error))
        self._health.report("published", f"noting outcomes published failing: {describe(error)}")

    async def _settle(self, transactions: Transactions) -> bool:
        """After a failed transaction: replace the producer (which ends that transaction),
        then learn from the group's committed offsets whether it committed after all.

        True once known; False when the replacement failed too (tried again later).
        """
        transaction = self._in_doubt
        assert transaction is not None
        owned = [tp for tp in transaction.offsets if tp in self._progress]
        try:
            async with asyncio.timeout(RENEW_TIMEOUT_S):
                await transactions.renew()
                group = {tp: await self._consumer.committed(tp) for tp in owned}
        except Exception as exc:  # the broker still away, most likely
            self._transaction_fault("renew", exc)
            return False
        self._in_doubt = None
        went_through = {
            tp: transaction.offsets[tp]
            for tp in owned
            if (held := group[tp]) is not None and held >= transaction.offsets[tp]
        }
        log.info("transaction.producer_renewed", committed_after_all=bool(went_through))
        if went_through:
            carried = [(tp, pending) for tp, pending in transaction.carried if tp in went_through]
            await self._transaction_committed(_Transaction(went_through, carried))
        return True

    def _transaction_fault(self, stage: str, exc: Exception) -> None:
        """A transaction (``commit``) or a producer replacement (``renew``) failed: pause
        intake, report, and try again after a growing pause."""
        self._transaction_faults += 1
        faults = self._transaction_faults
        self._metrics.faults.labels("kafka").inc()
        ceiling = min(FAULT_FIRST_PAUSE_S * 2 ** (faults - 1), self._fault_backoff_max_s)
        pause = random.uniform(ceiling / 2, ceiling)
        self._transaction_retry_at = time.monotonic() + pause
        error = describe(exc)
        if isinstance(exc, TimeoutError):
            limit = TRANSACTION_TIMEOUT_S if stage == "commit" else RENEW_TIMEOUT_S
            error = f"no answer from the broker in {limit:g} s"
        self._health.report("transactions", f"{stage} failing: {error}")
        if faults & (faults - 1):
            return  # logged at the 1st, 2nd, 4th, 8th... fault only
        (log.error if faults == 1 else log.warning)(
            "transaction.failed",
            stage=stage,
            faults=faults,
            retry_in_s=round(pause, 2),
            error=error,
            exc_info=faults == 1 and not isinstance(exc, KafkaError | TimeoutError),
        )

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
        self._ready = [entry for entry in self._ready if entry[1][0] not in revoked]
        heapq.heapify(self._ready)
        for key in [key for key in self._timers if key[0] in revoked]:
            self._timers.pop(key).cancel()
        self._unblock(revoked)
        await self._drain(revoked, self._drain_timeout_s)
        await self.commit(revoked)
        for tp in revoked:
            self._progress.pop(tp, None)
            self._paused.discard(tp)
            self._metrics.forget_partition(tp.partition)
            for pending in self._held.pop(tp, {}).values():
                assert pending.decision is not None
                self._processor.abandon(pending.decision)  # its new owner publishes it
        self._unfault([key for key in self._faulted if key[0] in revoked])
        for key in [key for key in self._queues if key[0] in revoked]:
            for pending in self._queues.pop(key):
                if pending.decision is not None:
                    self._processor.abandon(pending.decision)  # its new owner decides again
        if not self._queues:
            self._settled.set()
        self._revoked -= revoked
        self._metrics.assigned_partitions.set(len(self._progress))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._health.clear("group")  # joined (an empty assignment is a join too)
        log.info(
            "partitions.assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )
        for tp in assigned:
            self._progress.setdefault(tp, PartitionProgress())
        self._metrics.assigned_partitions.set(len(self._progress))


def _dead_letter_of(
    decision: Publish | DeadLetterOnly | AlreadyPublished | None,
) -> DeadLetterRequest | None:
    return decision.dead_letter if isinstance(decision, Publish | DeadLetterOnly) else None


async def _all_delivered(deliveries: Sequence[Awaitable[object]]) -> None:
    """Wait for every delivery; raise the first failure (once all have answered)."""
    results = await asyncio.gather(*deliveries, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the consumer's rebalances to the runner (aiokafka wants this base class)."""

    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._runner.on_assigned(set(assigned))
