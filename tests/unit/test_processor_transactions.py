"""The processing step with Kafka transactions (``ProcessorConfig.transactional``): the rules
that change when an outcome is published only by a committed transaction, and is then visible
exactly once. Without transactions each rule is today's, checked side by side."""

from __future__ import annotations

import asyncio

import pytest

from service.codec.avro import AvroCodec
from service.domain.decisions import AlreadyPublished, InboundRecord, Publish, Retry
from service.domain.outcome import SourceRef, event_id
from tests.unit.test_processor import APPLIED, KEY, TOPIC, Harness, raw_command


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@pytest.fixture
def tx(codec: AvroCodec) -> Harness:
    """A processor of a service publishing in transactions."""
    return Harness(codec, transactional=True)


def again(record: InboundRecord) -> InboundRecord:
    """The same record, read again (a re-delivery after a crash or a rebalance)."""
    return InboundRecord(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.timestamp_ms,
    )


async def test_the_record_that_published_an_outcome_publishes_nothing_when_read_again(
    tx: Harness,
) -> None:
    """Re-delivered after its transaction committed (its offset was not, say after a zombie's
    commit): its outcome is visible already, so it publishes nothing; PAS is not called."""
    tx.pas.then(APPLIED)
    record = tx.record()
    original = await tx.publish(record=record)
    decision = await tx.handle(again(record))
    assert decision == AlreadyPublished(KEY)
    assert len(tx.pas.requests) == 1
    assert original.source == record.source


async def test_without_transactions_that_record_republishes_its_outcome_as_a_duplicate(
    codec: AvroCodec,
) -> None:
    """Today's behaviour, unchanged: the re-delivered record gets a duplicate event."""
    h = Harness(codec)
    h.pas.then(APPLIED)
    record = h.record()
    await h.publish(record=record)
    repeat = await h.handle(again(record))
    assert isinstance(repeat, Publish)
    assert repeat.duplicate is True
    assert repeat.event_id == event_id(KEY, record.source)


async def test_a_repeat_command_in_another_record_still_gets_its_duplicate_event(
    tx: Harness,
) -> None:
    """Another record with the same key (a genuine repeat) is answered as without
    transactions: the stored outcome, marked duplicate, with the repeat's own event id."""
    tx.pas.then(APPLIED)
    original = await tx.publish()
    repeat = await tx.publish(raw_command(correlation_id="corr-2"))
    assert repeat.duplicate is True
    assert repeat.duplicate_kind == "completed"
    assert repeat.event_id == event_id(KEY, SourceRef(TOPIC, 3, tx.offset))
    assert repeat.outcome == original.outcome
    assert len(tx.pas.requests) == 1


async def test_an_outcome_whose_transaction_never_committed_is_published_as_the_original(
    tx: Harness,
) -> None:
    """Its transaction aborted and its partition moved (``abandon``): nobody ever saw it, so
    the record read again publishes the original (the key's event id), not a duplicate."""
    tx.pas.then(APPLIED)
    record = tx.record()
    original = await tx.publish(record=record, published=False)
    tx.processor.abandon(original)
    redelivered = await tx.publish(record=again(record), published=False)
    assert redelivered.duplicate is False
    assert redelivered.event_id == original.event_id == event_id(KEY)
    assert redelivered.outcome == original.outcome
    assert len(tx.pas.requests) == 1
    assert (await tx.stored()).published is False
    await tx.processor.published(redelivered)
    assert (await tx.stored()).published is True


async def test_a_repeat_while_the_original_waits_for_its_transaction_is_a_duplicate_at_once(
    tx: Harness,
) -> None:
    """The original is decided here and waits for its transaction: a repeat does not wait
    for it (it may be what the original's transaction waits for) and is not a second
    original either: it gets a duplicate event. The store notes only the original."""
    tx.pas.then(APPLIED)
    original = await tx.publish(published=False)
    repeat = await tx.handle(tx.record(raw_command(correlation_id="corr-2")))
    assert isinstance(repeat, Publish)
    assert repeat.duplicate is True
    assert repeat.event_id != original.event_id
    await tx.processor.published(repeat)
    assert (await tx.stored()).published is False
    await tx.processor.published(original)
    assert (await tx.stored()).published is True


async def test_without_transactions_a_repeat_waits_for_the_original_to_be_published(
    codec: AvroCodec,
) -> None:
    """Today's behaviour, unchanged: the repeat is handed back until the original is
    published, then gets its duplicate event."""
    h = Harness(codec)
    h.pas.then(APPLIED)
    original = await h.publish(published=False)
    repeat_record = h.record(raw_command(correlation_id="corr-2"))
    assert isinstance(await h.handle(repeat_record), Retry)
    await h.processor.published(original)
    repeat = await h.handle(repeat_record)
    assert isinstance(repeat, Publish)
    assert repeat.duplicate is True


async def test_a_key_is_held_only_while_a_record_of_it_is_being_decided(tx: Harness) -> None:
    """While PAS answers the first record, a repeat of its key waits (one call per key in
    flight); once it is decided, the repeat goes on although nothing is published yet."""
    tx.pas.then(APPLIED)
    tx.pas.gate.clear()
    first = tx.record()
    deciding = asyncio.create_task(tx.handle(first))
    await tx.pas.entered.wait()
    waiting = await tx.handle(tx.record())
    assert isinstance(waiting, Retry)
    assert waiting.kind == "busy"
    tx.pas.gate.set()
    assert isinstance(await deciding, Publish)
    repeat = await tx.handle(tx.record())
    assert isinstance(repeat, Publish)
    assert repeat.duplicate is True
    assert len(tx.pas.requests) == 1
