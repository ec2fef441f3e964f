"""The command runner over fakes of its ports: commits, backpressure, rebalances, per-key
ordering, retries, crashes and shutdown, without a broker.

Records are ``b"<account>|<n>"``; the scripted processor takes the account as the ordering
key and, unless a test scripts otherwise, decides at once to publish a completed outcome
whose stored key is ``key-<offset>``. Tests hold a record in hand with a gate (an event the
processor waits on), and wait on conditions, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from service import api_clock
from service.app import run_tasks
from service.domain.decisions import Attempt, Decision, InboundRecord, Publish, Retry
from service.domain.inbound import Decoded, DecodedCommand, Unresolved
from service.domain.outcome import CommandInfo, Completed
from service.health import Health
from service.kafka import runner as runner_module
from service.kafka.runner import CommandRunner, PartitionProgress
from service.metrics import Metrics
from service.registry.errors import RegistryUnavailable
from tests.unit.runner_fakes import (
    TOPIC,
    TP,
    FakeConsumer,
    FakeDeadLetters,
    FakeOutcomes,
    serve,
    wait_until,
    wire,
)

TP1 = TopicPartition(TOPIC, 1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNT = "5123456789012345000"

Step = Callable[[InboundRecord, Attempt], Awaitable[Decision]]


def value(account: str, padding: int = 0) -> bytes:
    """A record value for ``account`` (``padding`` bytes more, for the byte budget)."""
    return f"{account}|".encode() + b"." * padding


def completed(record: InboundRecord) -> Publish:
    """A completed outcome for ``record``, stored under ``key-<offset>`` (``p<n>-key-<offset>``
    in partition n > 0)."""
    prefix = f"p{record.partition}-" if record.partition else ""
    info = CommandInfo(
        idempotency_key=f"{prefix}key-{record.offset}",
        correlation_id="corr",
        requested_by="test",
        account_ref=None,
        account_masked=None,
        command_occurred_at=NOW,
        received_at=NOW,
        source=record.source,
    )
    outcome = Completed(
        info=info,
        adjustment_type_code="GOODWILL",
        points_requested=10,
        points_adjusted=10,
        attempts=1,
        completed_at=NOW,
        pas_duration_ms=5,
        pas_correlation_id=None,
        service_version="test",
    )
    return Publish.original(outcome)


def retry(after_s: float) -> Step:
    """A step that hands the record back in ``after_s`` seconds."""

    async def step(record: InboundRecord, attempt: Attempt) -> Decision:
        return Retry(after_s, Attempt(calls=attempt.calls + 1), "PAS busy", "backoff")

    return step


def fail(error: BaseException) -> Step:
    """A step that raises ``error``."""

    async def step(record: InboundRecord, attempt: Attempt) -> Decision:
        raise error

    return step


class ScriptedProcessor:
    """A processor (service.kafka.ports.RecordProcessor) that does what the test scripted.

    Scripts and call records are about partition 0: ``gate`` holds records there in hand
    until ``release``; ``steps[offset]`` are a record's next answers, one per call (then: a
    completed outcome to publish). Records of other partitions are decided at once.
    """

    def __init__(self, *, decode: bool = False) -> None:
        self.decode = decode
        self.gates: dict[int, asyncio.Event] = {}
        self.steps: dict[int, deque[Step]] = defaultdict(deque)
        self.handled: list[int] = []
        """Offsets, in the order their handling started (a retried record twice)."""
        self.handled_at: dict[int, list[float]] = defaultdict(list)
        self.attempts: dict[int, list[Attempt]] = defaultdict(list)
        self.cancelled: list[int] = []
        self.published_keys: list[str] = []
        """The stored keys of the outcomes published, in order (of every partition)."""
        self.abandoned: list[Decision] = []
        self.contexts: list[dict[str, Any]] = []
        self.overlaps: list[str] = []
        """Accounts seen handled twice at once (never, if the runner keeps their order)."""
        self._busy: set[str] = set()
        self.unresolved: set[bytes] = set()
        """Values whose payload is ``Unresolved`` until ``prepare`` passes for them."""
        self.prepare_failures = 0
        """How many more calls of ``prepare`` raise ``RegistryUnavailable``."""
        self.prepared: list[bytes | None] = []

    def gate(self, *offsets: int) -> None:
        """Hold the records at ``offsets`` in hand until ``release``."""
        for offset in offsets:
            self.gates[offset] = asyncio.Event()

    def release(self, *offsets: int) -> None:
        for offset in offsets:
            self.gates[offset].set()

    async def prepare(self, value: bytes | None) -> None:
        self.prepared.append(value)
        if self.prepare_failures:
            self.prepare_failures -= 1
            raise RegistryUnavailable("GET /schemas/ids/7: connection refused")
        self.unresolved.discard(value or b"")

    def payload_of(self, value: bytes | None) -> Decoded | None:
        if value in self.unresolved:
            return Unresolved("schema id 7")
        if not self.decode or value is None:
            return None
        account, _, n = value.decode().partition("|")
        return DecodedCommand(
            idempotency_key=f"idem-{n}",
            bank_account_number=account,
            points_to_adjust=10,
            adjustment_type_code="GOODWILL",
            adjustment_reason="Late delivery",
            adjusted_by="agent",
            correlation_id="corr",
            requested_by="test",
            occurred_at=NOW,
        )

    def ordering_key(self, record: InboundRecord) -> str | None:
        return record.value.split(b"|")[0].decode() if record.value else None

    async def handle(self, record: InboundRecord, attempt: Attempt) -> Decision:
        account = self.ordering_key(record) or ""
        if account in self._busy:
            self.overlaps.append(account)
        self._busy.add(account)
        try:
            if record.partition != 0:
                return completed(record)
            return await self._scripted(record, attempt)
        finally:
            self._busy.discard(account)

    async def _scripted(self, record: InboundRecord, attempt: Attempt) -> Decision:
        offset = record.offset
        self.handled.append(offset)
        self.handled_at[offset].append(time.monotonic())
        self.attempts[offset].append(attempt)
        self.contexts.append(structlog.contextvars.get_contextvars())
        try:
            gate = self.gates.get(offset)
            if gate is not None:
                await gate.wait()
            steps = self.steps[offset]
            return await steps.popleft()(record, attempt) if steps else completed(record)
        except asyncio.CancelledError:
            self.cancelled.append(offset)
            raise

    async def published(self, decision: Publish) -> None:
        assert decision.stored_key is not None
        self.published_keys.append(decision.stored_key)

    def abandon(self, decision: Decision) -> None:
        self.abandoned.append(decision)


@dataclass
class Rig:
    runner: CommandRunner
    consumer: FakeConsumer
    processor: ScriptedProcessor
    outcomes: FakeOutcomes
    dead_letters: FakeDeadLetters
    metrics: Metrics
    health: Health
    stop: asyncio.Event
    readiness: list[bool] = field(default_factory=list)

    def keys(self, *offsets: int) -> list[str]:
        return [f"key-{offset}" for offset in offsets]

    async def fetches_later(self, count: int = 2) -> None:
        """Wait until the loop has fetched ``count`` more times (a commit step each)."""
        target = self.consumer.fetches + count
        await wait_until(lambda: self.consumer.fetches >= target)


def rig(
    *,
    partitions: tuple[TopicPartition, ...] = (TP,),
    publish_failures: int = 0,
    decode: bool = False,
    drain_timeout_s: float = 5.0,
    **options: Any,
) -> Rig:
    consumer = FakeConsumer(partitions=partitions)
    processor = ScriptedProcessor(decode=decode)
    outcomes = FakeOutcomes(publish_failures)
    w = wire(
        consumer,
        processor,
        outcomes,
        drain_timeout_s=drain_timeout_s,
        commit_interval_s=0.0,
        **options,
    )
    return Rig(
        w.runner,
        consumer,
        processor,
        outcomes,
        w.dead_letters,
        w.metrics,
        w.health,
        w.stop,
        w.readiness,
    )


@contextlib.asynccontextmanager
async def running(r: Rig) -> AsyncIterator[asyncio.Task[None]]:
    """Run the runner as the service does; on the way out stop it and wait for it to end."""
    task = asyncio.create_task(serve(r.runner))
    try:
        yield task
    finally:
        r.stop.set()
        await asyncio.wait_for(task, 15)
    assert asyncio.all_tasks() == {asyncio.current_task()}, "a task outlived the runner"


pytestmark = pytest.mark.usefixtures("quick_faults")


# -- commits -----------------------------------------------------------------------------


def test_the_commit_point_is_the_end_of_the_finished_prefix() -> None:
    """Offsets finished out of order move the commit point only past the first unfinished."""
    progress = PartitionProgress()
    for offset in (10, 11, 12, 13):
        progress.add(offset, size=100)
    progress.finish(12, size=100)
    progress.finish(13, size=100)
    assert progress.commit_at is None
    progress.finish(10, size=100)
    assert progress.commit_at == 11
    assert (len(progress), progress.bytes) == (3, 100)  # 12 and 13 wait behind 11
    progress.finish(11, size=100)
    assert progress.commit_at == 14
    assert (len(progress), progress.bytes) == (0, 0)


async def test_offsets_finished_out_of_order_are_committed_only_up_to_the_first_unfinished() -> (
    None
):
    """Three accounts in hand at once, finishing 2, 0, 1: the commits are 1, then 3."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("b"), value("c"))
    r.processor.gate(0, 1, 2)
    async with running(r) as task:
        await wait_until(lambda: sorted(r.processor.handled) == [0, 1, 2], while_running=task)
        r.processor.release(2)
        await wait_until(lambda: r.processor.published_keys == r.keys(2), while_running=task)
        await r.fetches_later()
        assert r.consumer.commits == []
        r.processor.release(0)
        await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
        await r.fetches_later()
        assert r.consumer.last_commit() == 1
        r.processor.release(1)
        await wait_until(lambda: r.consumer.last_commit() == 3, while_running=task)
    assert r.consumer.commits == [{TP: 1}, {TP: 3}]


# -- backpressure ------------------------------------------------------------------------


async def test_a_partition_pauses_at_its_share_of_records_and_resumes_below_half_of_it() -> None:
    """Four records buffered of four allowed: paused; three left: still paused; two: resumed."""
    r = rig(max_buffered=4)
    r.consumer.feed(TP, *(value(f"acct-{n}") for n in range(8)))
    r.processor.gate(*range(8))
    async with running(r) as task:
        await wait_until(lambda: TP in r.consumer.paused, while_running=task)
        assert r.consumer.fetched[TP] == 4
        r.processor.release(0)
        await wait_until(lambda: r.processor.published_keys == r.keys(0), while_running=task)
        await r.fetches_later()
        assert r.consumer.events == [("pause", TP)]
        r.processor.release(1)
        await wait_until(lambda: ("resume", TP) in r.consumer.events, while_running=task)
        await wait_until(lambda: r.consumer.fetched[TP] == 6, while_running=task)
        r.processor.release(*range(2, 8))
        await wait_until(lambda: r.consumer.last_commit() == 8, while_running=task)
    assert r.consumer.events[:2] == [("pause", TP), ("resume", TP)]


async def test_one_partitions_backlog_pauses_that_partition_only() -> None:
    """One account's backlog fills partition 0's share (half the buffer of two partitions):
    partition 0 pauses at two records while partition 1 goes on, then it resumes and ends."""
    r = rig(partitions=(TP, TP1), max_buffered=4, max_poll_records=1)
    r.consumer.feed(TP, *(value("busy") for _ in range(5)))
    r.consumer.feed(TP1, value("x"), value("y"), value("z"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit(TP1) == 3, while_running=task)
        assert TP in r.consumer.paused
        assert r.consumer.fetched[TP] == 2
        r.processor.release(0)
        await wait_until(lambda: r.consumer.last_commit(TP) == 5, while_running=task)
    assert ("resume", TP) in r.consumer.events


async def test_the_byte_budget_pauses_a_partition_and_resumes_it_below_half() -> None:
    """Records of 300 bytes with a budget of 1,000: paused at four records (1,200 bytes),
    still paused with two left (600), resumed with one left (300)."""
    r = rig(max_buffered_bytes=1000, max_poll_records=1)
    r.consumer.feed(TP, *(value(f"acct-{n}", padding=292) for n in range(6)))
    r.processor.gate(*range(6))
    async with running(r) as task:
        await wait_until(lambda: TP in r.consumer.paused, while_running=task)
        assert r.consumer.fetched[TP] == 4
        assert r.metrics.buffered_bytes._value.get() == 4 * 300
        r.processor.release(0, 1)
        await wait_until(lambda: len(r.processor.published_keys) == 2, while_running=task)
        await r.fetches_later()
        assert r.consumer.events == [("pause", TP)]
        r.processor.release(2)
        await wait_until(lambda: ("resume", TP) in r.consumer.events, while_running=task)
        r.processor.release(3, 4, 5)
        await wait_until(lambda: r.consumer.last_commit() == 6, while_running=task)


# -- ordering and quarantine -------------------------------------------------------------


async def test_records_of_one_account_run_one_after_the_other_and_other_accounts_interleave() -> (
    None
):
    """While account a's first record is in hand, its second waits and both of account b's
    records run; then a's second runs; no account ever has two records in hand."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("a"), value("b"), value("b"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(lambda: r.processor.published_keys == r.keys(2, 3), while_running=task)
        assert r.processor.handled == [0, 2, 3]
        assert r.consumer.commits == []  # offset 0 unfinished
        r.processor.release(0)
        await wait_until(lambda: r.consumer.last_commit() == 4, while_running=task)
    assert r.processor.handled == [0, 2, 3, 1]
    assert r.processor.published_keys == r.keys(2, 3, 0, 1)
    assert r.processor.overlaps == []


async def test_an_accounts_next_record_starts_before_records_fetched_after_it() -> None:
    """One slot, account a's two records first: a's second starts as soon as its first
    finishes, ahead of b and c fetched after it, so the commit point follows the records as
    they finish instead of stopping at a's second while b and c finish behind it."""
    r = rig(max_in_flight=1)
    r.consumer.feed(TP, value("a"), value("a"), value("b"), value("c"))
    r.processor.gate(3)
    async with running(r) as task:
        await wait_until(lambda: 3 in r.processor.handled, while_running=task)
        await r.fetches_later()
        assert r.processor.handled == [0, 1, 2, 3]
        assert r.consumer.last_commit() == 3  # all but c, which is in hand
        r.processor.release(3)
        await wait_until(lambda: r.consumer.last_commit() == 4, while_running=task)
    assert r.processor.published_keys == r.keys(0, 1, 2, 3)


async def test_a_retry_hands_the_record_back_after_its_delay_and_its_account_waits_meanwhile() -> (
    None
):
    """A Retry of 50 ms: the record is handled again no sooner, with the attempt the Retry
    carried; the account's next record waits for it, another account's does not."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("a"), value("b"))
    r.processor.steps[0].append(retry(0.05))
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 3, while_running=task)
    first, second = r.processor.handled_at[0]
    assert second - first >= 0.045
    assert r.processor.handled == [0, 2, 0, 1]
    assert r.processor.attempts[0] == [Attempt(), Attempt(calls=1)]
    assert r.processor.handled_at[1][0] >= second
    assert r.processor.published_keys[-2:] == r.keys(0, 1)
    assert r.metrics.retries.labels("backoff")._value.get() == 1


async def test_the_time_the_service_adds_is_its_time_in_service_less_its_pas_calls() -> None:
    """Two tries of one record, each with a PAS call timed at 40 ms (counted on the record's
    clock as the metered PAS client does) and a backoff between them: the histogram of what
    the service adds gets the record's time in service less those 80 ms, once."""

    def calling_pas(then: Step) -> Step:
        async def step(record: InboundRecord, attempt: Attempt) -> Decision:
            await asyncio.sleep(0.045)
            api_clock.add(0.04)
            return await then(record, attempt)

        return step

    async def complete(record: InboundRecord, attempt: Attempt) -> Decision:
        return completed(record)

    r = rig()
    r.consumer.feed(TP, value("a"))
    r.processor.steps[0].extend([calling_pas(retry(0.02)), calling_pas(complete)])
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
    sample = r.metrics.registry.get_sample_value
    in_service = sample("points_adjuster_command_duration_seconds_sum")
    added = sample("points_adjuster_command_service_added_seconds_sum")
    assert sample("points_adjuster_command_service_added_seconds_count") == 1
    assert in_service is not None
    assert in_service >= 0.045 * 2 + 0.02
    assert added == pytest.approx(in_service - 0.08, abs=1e-9)


async def test_a_commands_time_in_service_ends_at_its_acknowledgement_not_at_the_stores_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Noting an outcome published (a store write) comes after the broker's acknowledgement:
    it holds the record's commit, but is not part of the command's time in service."""
    r = rig()
    r.consumer.feed(TP, value("a"))
    noted = r.processor.published

    async def slow_note(decision: Publish) -> None:
        await asyncio.sleep(0.2)
        await noted(decision)

    monkeypatch.setattr(r.processor, "published", slow_note)
    started = time.perf_counter()
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
    committed_after = time.perf_counter() - started
    in_service = r.metrics.registry.get_sample_value("points_adjuster_command_duration_seconds_sum")
    assert r.processor.published_keys == r.keys(0)
    assert committed_after >= 0.2  # the commit waited for the note
    assert in_service is not None
    assert in_service < 0.15


# -- a processor that raises ---------------------------------------------------------------


async def test_a_raising_processor_has_its_record_retried_as_a_fault_and_the_runner_goes_on() -> (
    None
):
    """A RuntimeError from the processor: the record waits a fault pause and passes on the
    next try; readiness drops meanwhile with the reason; the other account is not held up."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("b"))
    r.processor.steps[0].append(fail(RuntimeError("a bug in the decoder")))
    problems: list[str] = []

    def done() -> bool:
        problem = r.health.problem("records.other")
        if problem is not None:
            problems.append(problem)
        return r.consumer.last_commit() == 2

    async with running(r) as task:
        await wait_until(done, while_running=task)
    assert sorted(r.processor.handled) == [0, 0, 1]
    assert sorted(r.processor.published_keys) == r.keys(0, 1)
    assert r.metrics.faults.labels("other")._value.get() == 1
    assert any("RuntimeError: a bug in the decoder" in problem for problem in problems)
    assert r.health.problem("records.other") is None


async def test_a_record_waiting_for_its_writer_schema_holds_its_partition_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record whose writer schema must come from an unreachable registry: its partition
    pauses, readiness says records.registry, the record and the ones after it wait (nothing
    dead-lettered, nothing committed past it) while the fetch is tried again; once it
    passes, they all go through once each, the account's records in their order."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 0.02)
    r = rig()
    waiting = b"a|needs-schema"
    r.consumer.feed(TP, value("a"), waiting, value("a"), value("b"))
    r.processor.unresolved.add(waiting)
    r.processor.prepare_failures = 3
    problems: list[str] = []
    held: list[int | None] = []

    def done() -> bool:
        problem = r.health.problem("records.registry")
        if problem is not None:
            problems.append(problem)
            held.append(r.consumer.last_commit())
            assert TP in r.consumer.paused
        return r.consumer.last_commit() == 4

    async with running(r) as task:
        await wait_until(done, while_running=task)
    assert sorted(r.processor.handled) == [0, 1, 2, 3]  # each once
    handled = r.processor.handled
    assert handled.index(0) < handled.index(1) < handled.index(2)  # account a in order
    assert r.processor.prepared == [waiting] * 4
    assert r.metrics.faults.labels("registry")._value.get() == 3
    assert any("RegistryUnavailable" in problem for problem in problems)
    assert held
    assert all(offset in (None, 1) for offset in held)  # never past the waiting record
    assert r.dead_letters.sent == []
    assert r.health.problem("records.registry") is None


async def test_a_base_exception_from_the_processor_stops_the_runner_and_is_raised() -> None:
    """A SystemExit from the processor is not retried nor swallowed: intake stops, the record
    in hand of another account finishes within the drain budget, what finished is committed
    (not the crashed record), and the SystemExit comes out of the runner."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("b"), value("c"))
    r.processor.gate(0)
    r.processor.steps[1].append(fail(SystemExit(3)))

    async def release_when_stopping() -> None:
        await r.stop.wait()
        r.processor.release(0)

    helper = asyncio.create_task(release_when_stopping())
    # Awaited here, not in a task of its own: asyncio lets a SystemExit raised by a task out
    # of the event loop directly, as it would out of the service's main coroutine.
    with pytest.raises(SystemExit) as raised:
        async with asyncio.timeout(15):
            await serve(r.runner)
    await helper
    assert raised.value.code == 3
    assert r.processor.handled.count(1) == 1
    assert "key-0" in r.processor.published_keys
    assert "key-1" not in r.processor.published_keys
    assert r.consumer.last_commit() == 1


# -- rebalances ----------------------------------------------------------------------------


async def test_a_revocation_drains_the_records_in_hand_commits_and_drops_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partition 0 is revoked with a record in hand, one queued behind it and one decided
    but not published (its delivery failed): the one in hand finishes and is committed, the
    queued one is dropped unhandled, the decided one abandoned; partition 1 goes on."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 60.0)  # offset 2 waits long
    r = rig(partitions=(TP, TP1), publish_failures=1)
    r.consumer.feed(TP, value("a"), value("a"), value("b"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(
            lambda: r.outcomes.failures == 0 and r.health.problem("records.kafka") is not None,
            while_running=task,
        )
        r.consumer.revoke(TP)
        await wait_until(lambda: TP in r.consumer.revoking, while_running=task)
        r.processor.release(0)
        await wait_until(lambda: TP not in r.consumer.partitions, while_running=task)
        assert r.consumer.last_commit(TP) == 1
        r.consumer.feed(TP1, value("c"))
        await wait_until(lambda: r.consumer.last_commit(TP1) == 1, while_running=task)
    assert 1 not in r.processor.handled
    assert r.processor.published_keys == ["key-0", "p1-key-0"]
    (abandoned,) = r.processor.abandoned
    assert isinstance(abandoned, Publish)
    assert abandoned.stored_key == "key-2"
    assert r.health.problem("records.kafka") is None


async def test_a_record_still_in_hand_at_the_drain_timeout_of_a_revocation_is_cancelled() -> None:
    """The revocation waits for the record in hand no longer than the drain timeout: then
    the record is cancelled and its offset is not committed (its new owner reads it again)."""
    r = rig(drain_timeout_s=0.1)
    r.consumer.feed(TP, value("a"), value("b"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(lambda: r.processor.published_keys == r.keys(1), while_running=task)
        r.consumer.revoke(TP)
        await wait_until(lambda: TP not in r.consumer.partitions, while_running=task)
    assert r.processor.cancelled == [0]
    assert r.consumer.commits == []


# -- shutdown ------------------------------------------------------------------------------


async def test_on_stop_the_buffered_records_finish_within_the_drain_budget_then_are_committed() -> (
    None
):
    """Stop with one record in hand and three buffered behind it: nothing more is fetched,
    all four finish, and a final commit covers them."""
    r = rig()
    r.consumer.feed(TP, *(value("a") for _ in range(4)))
    r.processor.gate(0)
    task = asyncio.create_task(serve(r.runner))
    await wait_until(lambda: r.consumer.fetched[TP] == 4 and r.processor.handled == [0])
    r.stop.set()
    await wait_until(lambda: r.health.problem("service") == "draining", while_running=task)
    fetches = r.consumer.fetches
    r.processor.release(0)
    await asyncio.wait_for(task, 15)
    assert r.consumer.fetches == fetches
    assert r.processor.published_keys == r.keys(0, 1, 2, 3)
    assert r.consumer.commits == [{TP: 4}]


async def test_on_stop_a_record_past_the_drain_budget_is_cancelled_and_the_rest_committed() -> None:
    """A record that does not finish within the drain budget is cancelled: the runner ends
    about then, committing the finished prefix before it."""
    r = rig(drain_timeout_s=0.2)
    r.consumer.feed(TP, value("a"), value("b"), value("c"))
    r.processor.gate(1)
    async with running(r) as task:
        await wait_until(
            lambda: sorted(r.processor.published_keys) == r.keys(0, 2), while_running=task
        )
        started = time.monotonic()
    took = time.monotonic() - started
    assert r.processor.cancelled == [1]
    assert r.consumer.last_commit() == 1
    assert took < 0.2 + 3.0


async def test_shutdown_is_bounded_when_the_broker_does_not_answer_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commits that never answer (the broker gone) time out: the runner still ends, and
    readiness says the offsets are not committed."""
    monkeypatch.setattr(runner_module, "COMMIT_TIMEOUT_S", 0.1)
    r = rig()
    r.consumer.commit_hangs = True
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.processor.published_keys == r.keys(0), while_running=task)
        await wait_until(lambda: r.health.problem("offsets") is not None, while_running=task)
    assert r.consumer.commits == []
    assert r.metrics.commits.labels("failed")._value.get() >= 2


async def test_a_failing_sibling_task_stops_the_runner_and_its_error_comes_out() -> None:
    """In the service's task group, a background loop that fails cancels the runner, which
    still drains and commits; the loop's error comes out as itself; no task is left."""
    r = rig()
    r.consumer.feed(TP, value("a"))

    async def watchdog() -> None:
        await wait_until(lambda: r.processor.published_keys == r.keys(0))
        raise RuntimeError("the watchdog broke")

    with pytest.raises(RuntimeError, match="the watchdog broke"):
        async with asyncio.timeout(15):
            await run_tasks(r.runner, {"watchdog": watchdog()})
    assert r.consumer.last_commit() == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- log context and ports -----------------------------------------------------------------


async def test_a_records_log_lines_carry_its_place_and_idempotency_key_but_not_the_account() -> (
    None
):
    """Every log line while a record is handled (the processor's, the runner's) carries its
    topic, partition, offset, idempotency key and trace id, bound once; never the account."""
    r = rig(decode=True)
    r.consumer.feed(TP, value(ACCOUNT) + b"7")
    r.processor.steps[0].append(fail(RuntimeError("once")))
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with running(r) as task:
            await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
    trace_id = r.processor.contexts[0]["trace_id"]
    assert len(trace_id) == 32  # the record had no traceparent: a trace of its own, kept
    place = {"topic": TOPIC, "partition": 0, "offset": 0, "idempotency_key": "idem-7"}
    place.update(correlation_id="corr", trace_id=trace_id)
    assert r.processor.contexts == [place, place]
    (fault,) = [line for line in logs if line["event"] == "record.fault"]
    assert place.items() <= fault.items()
    assert not any(ACCOUNT in str(line) for line in logs)


def test_the_real_consumer_takes_every_call_the_port_makes() -> None:
    """aiokafka's consumer (untyped, so mypy cannot tell) accepts each call of the runner."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
        "subscribe": ((["commands"],), {"listener": object()}),
        "getmany": ((), {"timeout_ms": 100, "max_records": 10}),
        "pause": ((TP,), {}),
        "resume": ((TP,), {}),
        "commit": (({TP: 1},), {}),
        "committed": ((TP,), {}),
    }
    for name, (args, kwargs) in calls.items():
        inspect.signature(getattr(AIOKafkaConsumer, name)).bind(None, *args, **kwargs)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.getmany)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.commit)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.committed)


def test_the_log_context_carries_a_safe_copy_of_a_hostile_key() -> None:
    """A 600 KB idempotency key with control characters is bound cut to 128 characters, the
    control characters replaced, so it never floods every log line of its record."""
    from service.domain.decisions import InboundRecord
    from service.kafka.runner import log_context

    hostile = DecodedCommand(
        idempotency_key="k\n" * 300_000,
        bank_account_number=ACCOUNT,
        points_to_adjust=10,
        adjustment_type_code="GOODWILL",
        adjustment_reason="r",
        adjusted_by="a",
        correlation_id="c",
        requested_by="t",
        occurred_at=NOW,
    )
    record = InboundRecord(TOPIC, 0, 5, None, b"v", 0, (), hostile)
    key = log_context(record)["idempotency_key"]
    assert len(key) <= 128
    assert "\n" not in key


def test_joining_is_a_readiness_problem_until_the_assignment_comes() -> None:
    """Before subscribe's assignment arrives the runner reports 'joining the consumer
    group'; on_assigned (even of no partition) clears it."""
    r = rig()
    r.runner._health.report("group", "joining the consumer group")
    assert not r.health.ready
    r.runner.on_assigned(set())
    assert r.health.problem("group") is None
