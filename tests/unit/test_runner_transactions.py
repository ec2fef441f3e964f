"""The command runner with Kafka transactions, over fakes: a transactional producer over a
pretend broker (tests/fakes.py) and the consumer, publishers and processor of the runner tests.

A record's outputs (outcome, dead letter, review copy) become visible only in the transaction
that commits its offset; an idle runner opens none; the store hears of an outcome only once
its transaction committed; any failure of a transaction ends the producer, which is replaced,
and what the failed transaction carried goes out once, never decided again; a commit that
went through although its call failed is not repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NotEnoughReplicasError

from service.app import command_decoder
from service.codec.avro import COMMAND, AvroCodec
from service.domain.decisions import (
    AlreadyPublished,
    Attempt,
    DeadLetterOnly,
    DeadLetterRequest,
    Decision,
    InboundRecord,
    Publish,
)
from service.domain.processor import Processor
from service.health import Health
from service.idempotency.memory import MemoryStore
from service.kafka import runner as runner_module
from service.kafka.runner import CommandRunner
from service.metrics import Metrics
from tests.fakes import FENCED, ScriptedPas, TransactionalProducer
from tests.unit.runner_fakes import (
    DEAD_LETTER_TOPIC,
    OUTCOME_TOPIC,
    TP,
    FakeConsumer,
    FakeOutcomes,
    Message,
    coordinates,
    serve,
    wait_until,
    wire,
)
from tests.unit.test_processor import APPLIED, CONFIG, raw_command
from tests.unit.test_runner import TP1, ScriptedProcessor, completed, value

pytestmark = pytest.mark.usefixtures("quick_faults")

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Rig:
    runner: CommandRunner
    consumer: FakeConsumer
    processor: ScriptedProcessor
    producer: TransactionalProducer
    outcomes: FakeOutcomes
    metrics: Metrics
    health: Health
    stop: asyncio.Event
    readiness: list[bool] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Every readiness problem seen by ``watch``."""

    def visible(self, topic: str = OUTCOME_TOPIC) -> list[tuple[int, int]]:
        """The commands (partition, offset) whose records in ``topic`` are visible."""
        return [coordinates(sent.value) for sent in self.producer.visible if sent.topic == topic]

    def watch(self, done: Callable[[], bool]) -> Callable[[], bool]:
        """``done``, noting the readiness problems seen at each check."""

        def check() -> bool:
            self.problems.extend(self.health.problems())
            return done()

        return check

    async def fetches_later(self, count: int = 3) -> None:
        target = self.consumer.fetches + count
        await wait_until(lambda: self.consumer.fetches >= target)

    def decided(self, count: int, partition: str = "0") -> Callable[[], bool]:
        """``count`` records of the partition are finished and not committed."""
        return lambda: self.metrics.commit_gap.labels(partition)._value.get() == count


def rig(
    *,
    partitions: tuple[TopicPartition, ...] = (TP,),
    failures: Sequence[tuple[str, BaseException | str]] = (),
    processor: ScriptedProcessor | None = None,
    commit_interval_s: float = 0.0,
    drain_timeout_s: float = 5.0,
    **options: Any,
) -> Rig:
    consumer = FakeConsumer(partitions=partitions)
    producer = TransactionalProducer(consumer.commits, list(failures))
    processor = processor or ScriptedProcessor()
    outcomes = FakeOutcomes(producer=producer)
    w = wire(
        consumer,
        processor,
        outcomes,
        drain_timeout_s=drain_timeout_s,
        commit_interval_s=commit_interval_s,
        transactions=producer,
        **options,
    )
    return Rig(
        w.runner, consumer, processor, producer, outcomes, w.metrics, w.health, w.stop, w.readiness
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


def keys(*offsets: int) -> list[str]:
    return [f"key-{offset}" for offset in offsets]


def each_offset_committed_once(commits: list[dict[TopicPartition, int]]) -> bool:
    """The offsets committed for each partition only ever grow."""
    last: dict[TopicPartition, int] = {}
    for offsets in commits:
        for tp, offset in offsets.items():
            if offset <= last.get(tp, -1):
                return False
            last[tp] = offset
    return True


# -- what one transaction carries ------------------------------------------------------------


async def test_outputs_become_visible_only_with_their_offsets_in_one_transaction() -> None:
    """Records 1 and 2 are decided while 0 is still in hand: nothing is visible and nothing
    is committed; once 0 is decided, one transaction carries the three outcomes, in offset
    order, with the offset after them, and only then does the store hear of them."""
    r = rig()
    r.consumer.feed(TP, value("a"), value("b"), value("c"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(r.decided(2), while_running=task)
        await r.fetches_later()
        assert r.producer.calls == []
        assert r.processor.published_keys == []
        r.processor.release(0)
        await wait_until(lambda: r.consumer.last_commit() == 3, while_running=task)
    ((records, offsets),) = r.producer.transactions
    assert [coordinates(sent.value) for sent in records] == [(0, 0), (0, 1), (0, 2)]
    assert offsets == {TP: 3}
    assert r.consumer.commits == [{TP: 3}]
    assert sorted(r.processor.published_keys) == keys(0, 1, 2)
    assert r.metrics.commits.labels("ok")._value.get() == 1


async def test_an_idle_runner_opens_no_transaction() -> None:
    """Nothing to commit, no transaction: one record makes one, and the quiet after it none."""
    r = rig()
    async with running(r) as task:
        await r.fetches_later(5)
        assert r.producer.calls == []
        r.consumer.feed(TP, value("a"))
        await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
        await r.fetches_later(5)
    assert r.producer.begun == 1
    assert r.producer.calls == ["begin", "send", "send_offsets", "commit"]


async def test_the_store_hears_of_an_outcome_only_once_its_transaction_committed() -> None:
    """At the moment each outcome is noted published, its event is visible already."""
    producer_box: list[TransactionalProducer] = []
    visible_when_noted: list[bool] = []

    class Noting(ScriptedProcessor):
        async def published(self, decision: Publish) -> None:
            visible = [coordinates(sent.value) for sent in producer_box[0].visible]
            source = (decision.source.partition, decision.source.offset)
            visible_when_noted.append(source in visible)
            await super().published(decision)

    r = rig(processor=Noting())
    producer_box.append(r.producer)
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(lambda: len(r.processor.published_keys) == 2, while_running=task)
    assert visible_when_noted == [True, True]


async def test_dead_letters_and_review_copies_go_out_in_the_transaction_of_their_record() -> None:
    """An outcome with a review copy, and an undecodable record's dead letter: both copies
    are in the transaction with the outcome and the offsets, counted once it committed."""
    review = DeadLetterRequest(
        "review", "OutcomeUnknown", "OUTCOME_UNKNOWN", "timeout", 1, NOW, NOW
    )
    dead = DeadLetterRequest("dlt", "UndecodableRecordError", "EMPTY_RECORD", "", 0, NOW, NOW)

    async def unknown(record: InboundRecord, attempt: Attempt) -> Decision:
        return replace(completed(record), dead_letter=review)

    async def undecodable(record: InboundRecord, attempt: Attempt) -> Decision:
        return DeadLetterOnly(dead)

    r = rig()
    r.processor.steps[0].append(unknown)
    r.processor.steps[1].append(undecodable)
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 2, while_running=task)
    assert r.visible() == [(0, 0)]
    assert r.visible(DEAD_LETTER_TOPIC) == [(0, 0), (0, 1)]
    assert r.producer.aborted == []
    assert r.metrics.review_copies._value.get() == 1
    assert r.metrics.undecodable.labels("EMPTY_RECORD")._value.get() == 1


async def test_a_record_whose_outcome_is_already_visible_only_has_its_offset_committed() -> None:
    """``AlreadyPublished`` (a re-delivery of a published record): nothing is sent for it,
    the store hears nothing, and the transaction commits its offset alone."""

    async def already(record: InboundRecord, attempt: Attempt) -> Decision:
        return AlreadyPublished("key-0")

    r = rig()
    r.processor.steps[0].append(already)
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 1, while_running=task)
    assert r.producer.transactions == [([], {TP: 1})]
    assert r.processor.published_keys == []


async def test_half_the_buffer_held_is_committed_before_the_interval() -> None:
    """With a commit interval of a minute, two decided records of a buffer of four are
    committed at once: intake does not stall behind held outputs."""
    r = rig(commit_interval_s=60.0, max_buffered=4)
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 2, while_running=task, timeout_s=5)
    assert sorted(r.visible()) == [(0, 0), (0, 1)]


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("begin", KafkaConnectionError("the coordinator is gone")),
        ("send", KafkaTimeoutError()),
        ("delivery", NotEnoughReplicasError()),
        (
            "send_offsets",
            AssertionError(
                "Invalid state transition TransactionState.FATAL_ERROR -> "
                "TransactionState.COMMITTING_TRANSACTION"
            ),
        ),
        ("commit", FENCED),
    ],
)
async def test_a_failed_transaction_goes_out_once_with_a_new_producer(
    call: str, error: BaseException
) -> None:
    """Whichever call fails (aiokafka's AssertionError included), the producer is replaced
    (its start aborts the transaction), intake pauses and readiness drops meanwhile, and the
    next transaction carries the same outputs: each visible once, none decided twice, each
    offset committed once, and nothing of a failed delivery committed."""
    r = rig(failures=[(call, error)])
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(r.watch(lambda: r.consumer.last_commit() == 2), while_running=task)
    assert r.producer.renewals == 1
    assert sorted(r.visible()) == [(0, 0), (0, 1)]
    assert sorted(r.processor.handled) == [0, 1]
    assert sorted(r.processor.published_keys) == keys(0, 1)
    assert each_offset_committed_once(r.consumer.commits)
    failed_at = r.producer.calls.index("renew")
    assert "commit" not in r.producer.calls[:failed_at] or call == "commit"
    assert any(problem == "transactions" for problem in r.problems)
    assert False in r.readiness
    assert TP in r.consumer.ever_paused
    assert r.metrics.faults.labels("kafka")._value.get() == 1
    assert r.metrics.commits.labels("failed")._value.get() == 1
    assert r.health.problem("transactions") is None


async def test_a_commit_that_went_through_although_its_call_failed_is_not_sent_again() -> None:
    """The commit's answer is lost: after replacing the producer the runner reads the
    group's offsets, finds the transaction committed, and counts it done; nothing is sent
    twice and the store hears of each outcome once."""
    r = rig(failures=[("commit", "lost")])
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.processor.published_keys == keys(0), while_running=task)
        await r.fetches_later()
    assert r.producer.renewals == 1
    assert r.visible() == [(0, 0)]
    assert r.producer.begun == 1
    assert r.consumer.commits == [{TP: 1}]
    assert r.processor.published_keys == keys(0)


async def test_a_transaction_that_never_answers_is_timed_out_like_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit that hangs (the broker gone mid-transaction) ends at the runner's timeout;
    the readiness problem says so; the records it carried go out in the next one."""
    monkeypatch.setattr(runner_module, "TRANSACTION_TIMEOUT_S", 0.05)
    r = rig(failures=[("commit", "hang")])
    r.consumer.feed(TP, value("a"))
    texts: list[str] = []

    def done() -> bool:
        problem = r.health.problem("transactions")
        if problem is not None:
            texts.append(problem)
        return r.consumer.last_commit() == 1

    async with running(r) as task:
        await wait_until(done, while_running=task)
    assert r.visible() == [(0, 0)]
    assert [coordinates(sent.value) for sent in r.producer.aborted] == [(0, 0)]
    assert any("no answer from the broker in 0.05 s" in text for text in texts)


async def test_intake_stays_paused_while_the_producer_cannot_be_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit fails and so do two replacements: no record is fetched meanwhile and
    readiness stays down; then the replacement works and everything goes out once."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 0.1)
    gone = KafkaConnectionError("broker gone")
    r = rig(failures=[("commit", gone), ("renew", gone), ("renew", gone)])
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.producer.calls.count("renew") == 1, while_running=task)
        r.consumer.feed(TP, value("b"))
        await wait_until(lambda: r.producer.calls.count("renew") == 2, while_running=task)
        assert r.consumer.fetched[TP] == 1
        assert not r.health.ready
        await wait_until(lambda: r.consumer.last_commit() == 2, while_running=task)
    assert r.producer.renewals == 1
    assert r.producer.calls.count("renew") == 3
    assert sorted(r.visible()) == [(0, 0), (0, 1)]
    assert r.metrics.faults.labels("kafka")._value.get() == 3
    assert r.readiness[-2:] == [True, False]  # ready again, until the stop (draining)


async def test_a_note_the_store_refuses_is_tried_again_at_the_next_commit() -> None:
    """The store fails the note once: readiness says so, the outcome stays visible once,
    and the next commit notes it."""

    class Refusing(ScriptedProcessor):
        refusals = 1

        async def published(self, decision: Publish) -> None:
            if self.refusals:
                self.refusals -= 1
                raise sqlite3.OperationalError("database is locked")
            await super().published(decision)

    r = rig(processor=Refusing())
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(r.watch(lambda: r.processor.published_keys == keys(0)))
        assert task.done() is False
    assert "published" in r.problems
    assert r.visible() == [(0, 0)]
    assert r.metrics.faults.labels("store")._value.get() == 1
    assert r.health.problem("published") is None


# -- rebalances and shutdown ------------------------------------------------------------


async def test_a_revocation_commits_what_is_decided_in_a_transaction_at_once() -> None:
    """With a commit interval of a minute, the revoked partition's decided records go out
    with their offsets in the revocation's own transaction; the other partition's wait."""
    r = rig(partitions=(TP, TP1), commit_interval_s=60.0)
    r.consumer.feed(TP, value("a"), value("b"))
    r.consumer.feed(TP1, value("c"))
    async with running(r) as task:
        await wait_until(r.decided(2), while_running=task)
        await wait_until(r.decided(1, "1"), while_running=task)
        r.consumer.revoke(TP)
        await wait_until(lambda: TP not in r.consumer.partitions, while_running=task)
        ((records, offsets),) = r.producer.transactions
        assert [coordinates(sent.value) for sent in records] == [(0, 0), (0, 1)]
        assert offsets == {TP: 2}
    assert r.processor.abandoned == []
    assert r.consumer.last_commit(TP1) == 1  # at the shutdown


async def test_a_revocation_during_the_loops_transaction_waits_for_it_to_end() -> None:
    """aiokafka calls the revocation from its own task, possibly while the loop's commit is
    in a transaction: the revocation's transaction starts only once that one committed."""
    decided = asyncio.Event()

    async def decide(record: InboundRecord, attempt: Attempt) -> Decision:
        decided.set()
        return completed(record)

    r = rig()
    r.producer.hold.clear()
    r.processor.gate(1)
    r.processor.steps[1].append(decide)
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(lambda: "commit" in r.producer.calls, while_running=task)
        r.processor.release(1)
        await decided.wait()
        revoking = asyncio.create_task(r.runner.on_revoked({TP}))
        await asyncio.sleep(0.05)  # room for the revocation to start a transaction: it must not
        assert r.producer.begun == 1
        assert not revoking.done()
        r.producer.hold.set()
        await asyncio.wait_for(revoking, 5)
    assert r.producer.renewals == 0
    assert [offsets for _, offsets in r.producer.transactions] == [{TP: 1}, {TP: 2}]
    assert r.visible() == [(0, 0), (0, 1)]


async def test_a_revocation_abandons_what_is_decided_beyond_an_unfinished_record() -> None:
    """Offset 0 is still in hand at the drain timeout: it is cancelled, nothing is
    committed, and offset 1, decided, is abandoned unpublished (its new owner publishes it)."""
    r = rig(drain_timeout_s=0.05)
    r.consumer.feed(TP, value("a"), value("b"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(r.decided(1), while_running=task)
        r.consumer.revoke(TP)
        await wait_until(lambda: TP not in r.consumer.partitions, while_running=task)
    assert r.producer.calls == []
    assert r.consumer.commits == []
    (abandoned,) = r.processor.abandoned
    assert isinstance(abandoned, Publish)
    assert abandoned.stored_key == "key-1"


async def test_a_revocation_settles_a_failed_transaction_before_committing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed commit whose producer could not be replaced waits a long pause; a revocation
    does not wait for it: it replaces the producer, learns the transaction did not commit,
    and commits the records in its own transaction before letting go."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 60.0)
    gone = KafkaConnectionError("broker gone")
    r = rig(failures=[("commit", gone), ("renew", gone)])
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.producer.calls.count("renew") == 1, while_running=task)
        r.consumer.revoke(TP)
        await wait_until(lambda: TP not in r.consumer.partitions, while_running=task)
    assert r.producer.renewals == 1
    assert r.visible() == [(0, 0)]
    assert r.consumer.commits == [{TP: 1}]
    assert r.processor.published_keys == keys(0)


async def test_on_stop_what_is_held_goes_out_in_a_last_transaction() -> None:
    """With a commit interval of a minute, the decided records are committed on the way out."""
    r = rig(commit_interval_s=60.0)
    r.consumer.feed(TP, value("a"), value("b"))
    async with running(r) as task:
        await wait_until(r.decided(2), while_running=task)
    assert sorted(r.visible()) == [(0, 0), (0, 1)]
    assert r.consumer.commits == [{TP: 2}]


async def test_on_stop_a_transaction_in_doubt_is_left_to_the_next_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer cannot be replaced when the stop comes: the runner commits nothing more
    (the next start's producer ends that transaction, and the records are read again) and
    stops without waiting out its pause."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 60.0)
    gone = KafkaConnectionError("broker gone")
    r = rig(failures=[("commit", gone), ("renew", gone)])
    r.consumer.feed(TP, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.producer.calls.count("renew") == 1, while_running=task)
    assert r.producer.visible == []
    assert r.consumer.commits == []
    assert r.producer.calls == ["begin", "send", "send_offsets", "commit", "renew"]


# -- with the real processor and store ------------------------------------------------------


def real_processor(store: MemoryStore, pas: ScriptedPas, codec: AvroCodec) -> Processor:
    return Processor(
        decode=command_decoder(codec),
        store=store,
        pas=pas,
        history=None,
        config=replace(CONFIG, reconcile=False, transactional=True),
        clock=lambda: datetime.now(UTC),
    )


async def run_once(
    store: MemoryStore,
    pas: ScriptedPas,
    codec: AvroCodec,
    messages: list[Message],
    failures: Sequence[tuple[str, BaseException | str]] = (),
) -> tuple[TransactionalProducer, FakeConsumer, FakeOutcomes]:
    """One life of the service: its records read from offset 0, until offset 1 is committed
    or the producer gave up for good (then stopped, as a crash would leave it)."""
    consumer = FakeConsumer(messages)
    producer = TransactionalProducer(consumer.commits, list(failures))
    outcomes = FakeOutcomes(producer=producer)
    w = wire(
        consumer,
        real_processor(store, pas, codec),
        outcomes,
        drain_timeout_s=2.0,
        commit_interval_s=0.0,
        transactions=producer,
    )
    task = asyncio.create_task(serve(w.runner))
    try:
        await wait_until(
            lambda: consumer.last_commit() == 1 or producer.calls.count("renew") >= 1,
            while_running=task,
        )
    finally:
        w.stop.set()
        await asyncio.wait_for(task, 10)
    return producer, consumer, outcomes


async def test_an_aborted_outcome_is_published_as_the_original_when_its_record_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First life: PAS applies the command, the transaction fails and the service stops
    before it commits: nothing visible, nothing committed, the outcome stored but not noted.
    Second life: the record comes back, finds its key finished, and publishes the original
    (not a duplicate) without calling PAS. Third (a zombie's commit re-delivers it again):
    its outcome is visible, so nothing is published and only its offset is committed."""
    monkeypatch.setattr(runner_module, "FAULT_FIRST_PAUSE_S", 60.0)
    codec = AvroCodec.from_directory()
    store = MemoryStore()
    pas = ScriptedPas(APPLIED)
    now = datetime.now(UTC)
    messages = [
        Message(0, codec.encode(COMMAND, raw_command(idempotency_key="key-0", occurred_at=now)))
    ]
    gone = KafkaConnectionError("broker gone")

    first, _, _ = await run_once(store, pas, codec, messages, [("commit", gone), ("renew", gone)])
    assert first.visible == []
    stored = await store.get("key-0")
    assert stored is not None
    assert (stored.state.value, stored.published) == ("COMPLETED", False)

    second, consumer, outcomes = await run_once(store, pas, codec, messages)
    (original,) = outcomes.sent
    assert original.duplicate is False
    assert second.visible != []
    assert consumer.commits == [{TP: 1}]
    stored = await store.get("key-0")
    assert stored is not None
    assert stored.published is True

    third, consumer, outcomes = await run_once(store, pas, codec, messages)
    assert outcomes.sent == []
    assert third.transactions == [([], {TP: 1})]
    assert len(pas.requests) == 1
