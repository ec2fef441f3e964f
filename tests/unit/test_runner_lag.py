"""The runner's lag and commit-gap gauges, and its outcome counters, over the fake consumer.

Records are those of tests/unit/test_runner.py (``b"<account>|"``, timestamps at
``STAMP_S``); the runner's wall clock is a value the test moves, and each test reads the
gauges after calling ``observe_lag`` itself, so no figure depends on timing.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.domain.decisions import Attempt, DeadLetterRequest, Decision, InboundRecord, Publish
from service.domain.outcome import Failed
from service.kafka import runner as runner_module
from service.kafka.runner import PartitionProgress
from service.metrics import Metrics
from tests.unit.runner_fakes import TP, FakeConsumer, wait_until
from tests.unit.test_runner import TP1, Rig, completed, rig, running, value

pytestmark = pytest.mark.usefixtures("quick_faults")

STAMP_S = 1_700_000_000.0
"""The record timestamp of the fake consumer's messages, in seconds."""
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A wall clock that moves only when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str, partition: TopicPartition = TP) -> float | None:
    return metrics.registry.get_sample_value(name, {"partition": str(partition.partition)})


def lag(r: Rig, partition: TopicPartition = TP) -> tuple[float | None, float | None, float | None]:
    """(lag in records, lag in seconds, commit gap) of ``partition``."""
    return (
        sample(r.metrics, "points_adjuster_consumer_lag_records", partition),
        sample(r.metrics, "points_adjuster_consumer_lag_seconds", partition),
        sample(r.metrics, "points_adjuster_commit_gap_records", partition),
    )


# -- the arithmetic ------------------------------------------------------------------------


def test_lag_counts_from_the_first_unfinished_offset_and_the_gap_what_waits_for_a_commit() -> None:
    """Finishing out of order moves the gap (finished, not committed) before the lag; a commit
    empties the gap; the lag then counts from the next offset to fetch."""
    progress = PartitionProgress()
    for offset in (10, 11, 12, 13):
        progress.add(offset, timestamp_ms=offset * 1000)
    assert (progress.lag(20), progress.commit_gap(), progress.oldest_timestamp_ms()) == (
        10,
        0,
        10_000,
    )
    progress.finish(12)
    progress.finish(13)
    assert (progress.lag(20), progress.commit_gap()) == (10, 2)  # 10 still holds them back
    progress.finish(10)
    assert (progress.lag(20), progress.commit_gap(), progress.oldest_timestamp_ms()) == (
        9,
        3,
        11_000,
    )
    progress.committed_to(11)
    assert progress.commit_gap() == 2
    progress.finish(11)
    assert (progress.lag(20), progress.commit_gap(), progress.oldest_timestamp_ms()) == (
        6,
        3,
        None,
    )
    progress.committed_to(14)
    assert (progress.lag(14), progress.commit_gap()) == (0, 0)


def test_a_partition_with_nothing_taken_counts_from_its_position() -> None:
    """Before any record is taken, the lag runs from the consumer's position, which is also
    where the gap starts; nothing is pending, so there is no oldest timestamp."""
    progress = PartitionProgress()
    assert progress.lag(50) is None
    progress.starts_at(40)
    assert (progress.lag(50), progress.commit_gap(), progress.oldest_timestamp_ms()) == (
        10,
        0,
        None,
    )


# -- the runner's gauges ---------------------------------------------------------------------


async def test_a_stuck_record_shows_as_lag_growing_in_seconds_and_a_gap_behind_it() -> None:
    """One record held in hand while four later ones finish: lag 5 records, its age in seconds
    growing with the clock, gap 4; once it finishes and is committed, all three are 0."""
    clock = Clock(STAMP_S + 30)
    r = rig(clock=clock)
    r.consumer.feed(TP, *(value(account) for account in "abcde"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(
            lambda: r.processor.published_keys == r.keys(1, 2, 3, 4), while_running=task
        )
        await r.runner.observe_lag()
        assert lag(r) == (5, 30, 4)
        clock.now += 60  # stuck, not slow: the age keeps growing
        await r.runner.observe_lag()
        assert lag(r) == (5, 90, 4)
        r.processor.release(0)
        await wait_until(lambda: r.consumer.last_commit() == 5, while_running=task)
        await r.runner.observe_lag()
        assert lag(r) == (0, 0, 0)


async def test_finished_records_stay_in_the_gap_while_commits_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With commits not answering, finished records are counted in the commit gap (not in the
    lag); when commits work again the gap is 0."""
    monkeypatch.setattr(runner_module, "COMMIT_TIMEOUT_S", 0.05)
    r = rig(clock=Clock(STAMP_S))
    r.consumer.commit_hangs = True
    r.consumer.feed(TP, value("a"), value("b"), value("c"))
    async with running(r) as task:
        await wait_until(lambda: len(r.processor.published_keys) == 3, while_running=task)
        await wait_until(lambda: r.health.problem("offsets") is not None, while_running=task)
        await r.runner.observe_lag()
        assert lag(r) == (0, 0, 3)
        r.consumer.commit_hangs = False
        await wait_until(lambda: r.consumer.last_commit() == 3, while_running=task)
        await r.runner.observe_lag()
        assert lag(r) == (0, 0, 0)


async def test_records_of_open_transactions_are_not_lag() -> None:
    """Under read_committed the end is the last stable offset: records after it (open
    transactions) cannot be read yet and are not counted."""
    r = rig(clock=Clock(STAMP_S))
    r.consumer.feed(TP, *(value(account) for account in "abcde"))
    r.consumer.open_transactions[TP] = 2
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(lambda: r.processor.handled == [0, 1, 2, 3, 4], while_running=task)
        await r.runner.observe_lag()
        assert lag(r)[0] == 3  # offsets 0..2 readable and not done; 3, 4 past the stable end
        r.processor.release(0)


class ReadUncommittedConsumer(FakeConsumer):
    """A consumer under read_uncommitted: aiokafka's last stable offset is then -1."""

    def last_stable_offset(self, partition: TopicPartition, /) -> int | None:
        return -1


async def test_without_a_last_stable_offset_the_high_watermark_is_the_end() -> None:
    """When the consumer has no last stable offset (-1), the lag runs to the high watermark."""
    r = rig(clock=Clock(STAMP_S))
    consumer = ReadUncommittedConsumer(partitions=(TP,))
    r.runner._consumer = consumer  # the same runner, over the other consumer
    r.consumer = consumer
    consumer.feed(TP, value("a"), value("b"))
    r.processor.gate(0)
    async with running(r) as task:
        await wait_until(lambda: r.processor.published_keys == r.keys(1), while_running=task)
        await r.runner.observe_lag()
        assert lag(r) == (2, 0, 1)
        r.processor.release(0)


async def test_a_partition_that_gave_nothing_yet_shows_no_lag_once_fetched() -> None:
    """A partition with no records: once a fetch answered for it, lag and gap are 0 (counted
    from its position); a partition whose position is still being looked up has no series."""
    r = rig(partitions=(TP, TP1), clock=Clock(STAMP_S))
    async with running(r) as task:
        await r.fetches_later()
        await r.runner.observe_lag()
        assert lag(r, TP1) == (0, 0, 0)
        assert not task.done()

    unknown = rig(clock=Clock(STAMP_S))
    unknown.consumer.position_unknown = True
    async with running(unknown):
        await unknown.fetches_later()
        await unknown.runner.observe_lag()
        assert lag(unknown) == (None, None, None)


async def test_a_revoked_partition_drops_its_series() -> None:
    """After a revocation the partition's lag and gap series are gone (no stale figure)."""
    r = rig(partitions=(TP, TP1), clock=Clock(STAMP_S))
    r.consumer.feed(TP1, value("a"))
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit(TP1) == 1, while_running=task)
        await r.runner.observe_lag()
        assert lag(r, TP1) == (0, 0, 0)
        r.consumer.revoke(TP1)
        await wait_until(lambda: TP1 not in r.consumer.partitions, while_running=task)
        await r.fetches_later()
        assert lag(r, TP1) == (None, None, None)
        assert lag(r, TP)[2] == 0


# -- counters where the runner delivers ---------------------------------------------------


def unknown_outcome(record: InboundRecord) -> Publish:
    """An OUTCOME_UNKNOWN outcome of ``record`` with its copy to the review topic."""
    info = completed(record).outcome.info
    outcome = Failed(
        info=info,
        reason_code="OUTCOME_UNKNOWN",
        description="the request left, the answer was lost",
        retryable=False,
        failed_at=NOW,
        service_version="test",
    )
    review = DeadLetterRequest(
        "review", "OutcomeUnknown", "OUTCOME_UNKNOWN", "answer lost", 3, NOW, NOW
    )
    return replace(Publish.original(outcome), dead_letter=review)


async def test_unknown_outcomes_and_review_copies_are_counted_once_delivered() -> None:
    """An unknown outcome with its review copy counts one of each; the same outcome published
    again as a duplicate counts neither."""
    r = rig(clock=Clock(STAMP_S))
    r.consumer.feed(TP, value("a"), value("b"))

    async def unknown(record: InboundRecord, attempt: Attempt) -> Decision:
        return unknown_outcome(record)

    async def repeated(record: InboundRecord, attempt: Attempt) -> Decision:
        original = unknown_outcome(record)
        return Publish.republished(
            original.outcome, "key-1", record.source, duplicate_kind="unknown"
        )

    r.processor.steps[0].append(unknown)
    r.processor.steps[1].append(repeated)
    async with running(r) as task:
        await wait_until(lambda: r.consumer.last_commit() == 2, while_running=task)
    value_of = r.metrics.registry.get_sample_value
    assert value_of("points_adjuster_unknown_outcomes_total") == 1
    assert value_of("points_adjuster_review_copies_total") == 1
    assert [target for _, _, target in r.dead_letters.sent] == ["review"]
    assert (
        value_of("points_adjuster_outcomes_total", {"kind": "failed", "reason": "OUTCOME_UNKNOWN"})
        == 2
    )


def test_the_real_consumer_takes_the_lag_calls_of_the_port() -> None:
    """aiokafka's consumer (untyped) has the position and the two ends the runner asks."""
    for name in ("position", "highwater", "last_stable_offset"):
        inspect.signature(getattr(AIOKafkaConsumer, name)).bind(None, TP)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.position)
    assert not inspect.iscoroutinefunction(AIOKafkaConsumer.highwater)
    assert not inspect.iscoroutinefunction(AIOKafkaConsumer.last_stable_offset)


def test_position_lookups_are_bounded() -> None:
    """The lag observation waits only briefly for a position, so it never holds the loop."""
    assert runner_module.POSITION_TIMEOUT_S <= 0.05
