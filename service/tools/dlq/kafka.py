"""The Kafka side of ``dlq``: reading the dead-letter topic (``list``, ``show``) and
re-publishing its records to the command topic (``replay``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.codec.avro import AvroCodec
from service.errors import PointsAdjusterError
from service.kafka.clients import open_consumer, open_producer, partitions_of
from service.kafka.deadletter import replayed_headers
from service.kafka.security import client_security
from service.settings import KafkaSettings, Settings
from service.tools.dlq.masking import mask_text
from service.tools.dlq.render import LIST_HEADER, describe, list_line, summary_lines
from service.tools.dlq.selection import (
    DeadLetter,
    ReplayPlanner,
    Selection,
    Tally,
    Verdict,
    read_dead_letter,
)
from service.tools.dlq.store import LookupOpener, open_store_lookup
from service.tools.progress import Pacer, ProgressBar, Sleep, wants_progress

EXIT_OK = 0
EXIT_FAILED = 1

COMMIT_EVERY = 500  # replays between two commits at most
COMMIT_INTERVAL_S = 1.0  # and at most this long between two commits
STALL_TIMEOUT_S = 30.0  # no progress towards the end offsets for this long: give up


class DeadLetterToolError(PointsAdjusterError):
    """The dead-letter tool cannot do what it was asked (missing topic, no such record...)."""


async def _partitions(settings: KafkaSettings, topic: str) -> list[TopicPartition]:
    found = await partitions_of(settings, [topic])
    if topic not in found:
        raise DeadLetterToolError(f"topic {topic} does not exist")
    return [TopicPartition(topic, number) for number in found[topic]]


async def _drain(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]
) -> AsyncGenerator[Any, None]:
    """Records of the assigned partitions, from their positions up to ``ends`` (excluded)."""
    remaining = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    progress_at = time.monotonic()
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batches.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        if batches:
            progress_at = time.monotonic()
        elif time.monotonic() - progress_at > STALL_TIMEOUT_S:
            raise DeadLetterToolError(
                f"reading {', '.join(sorted(f'{tp.topic}/{tp.partition}' for tp in remaining))}"
                f" made no progress for {STALL_TIMEOUT_S:g} s"
            )
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)


def _letter(codec: AvroCodec, record: Any) -> DeadLetter:
    return read_dead_letter(
        codec,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        headers=record.headers,
    )


def _reader(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer without a group: it reads, it never commits."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-dlq",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=settings.request_timeout_ms,
        **client_security(settings),
    )


async def scan_dead_letters(
    settings: KafkaSettings, topic: str
) -> AsyncGenerator[DeadLetter, None]:
    """Every record of ``topic`` from its beginning to its end as of now, partition by
    partition in fetch order."""
    partitions = await _partitions(settings, topic)
    codec = AvroCodec.from_directory()
    consumer = _reader(settings)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async with aclosing(_drain(consumer, ends)) as records:
            async for record in records:
                yield _letter(codec, record)
    finally:
        await consumer.stop()


async def list_dead_letters(
    settings: KafkaSettings,
    selection: Selection,
    *,
    limit: int | None = None,
    topic: str | None = None,
    out: TextIO,
) -> int:
    """``dlq list``: counts by reason of the matching dead letters, then one line each."""
    name = topic or settings.dead_letter_topic
    counts: Counter[str] = Counter()
    lines: list[str] = []
    total = 0
    async with aclosing(scan_dead_letters(settings, name)) as letters:
        async for letter in letters:
            total += 1
            if not selection.matches(letter):
                continue
            counts[letter.reason] += 1
            if limit is None or len(lines) < limit:
                lines.append(list_line(letter))
    matched = sum(counts.values())
    print(f"{name}: {total} records, {matched} match", file=out)
    print("by reason:", file=out)
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {mask_text(reason):<30}{count:>8}", file=out)
    if not counts:
        print("  (none)", file=out)
    if lines:
        print(LIST_HEADER, file=out)
        for line in lines:
            print(line, file=out)
    if len(lines) < matched:
        print(f"(first {len(lines)} of {matched} shown; --limit)", file=out)
    return EXIT_OK


async def show_dead_letter(
    settings: KafkaSettings,
    partition: int,
    offset: int,
    *,
    topic: str | None = None,
    out: TextIO,
    raw: bool = False,
) -> int:
    """``dlq show``: one dead letter in full, account and other digit runs masked (unmasked
    when ``raw``: the caller warns first)."""
    name = topic or settings.dead_letter_topic
    tp = TopicPartition(name, partition)
    if tp not in await _partitions(settings, name):
        raise DeadLetterToolError(f"topic {name} has no partition {partition}")
    consumer = _reader(settings)
    await consumer.start()
    try:
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not first <= offset < end:
            raise DeadLetterToolError(
                f"no record at {name} partition {partition} offset {offset}"
                f" (it holds offsets {first} to {end - 1})"
                if end > first
                else f"no record at {name} partition {partition}: the partition is empty"
            )
        consumer.seek(tp, offset)
        async with aclosing(_drain(consumer, {tp: offset + 1})) as records:
            async for record in records:
                if record.offset == offset:
                    letter = _letter(AvroCodec.from_directory(), record)
                    for line in describe(letter, name, raw=raw):
                        print(line, file=out)
                    return EXIT_OK
    finally:
        await consumer.stop()
    raise DeadLetterToolError(f"no record at {name} partition {partition} offset {offset}")


@dataclass(frozen=True)
class ReplayOptions:
    selection: Selection = Selection()  # noqa: RUF009 - a frozen dataclass, shared safely
    dry_run: bool = False
    limit: int | None = None
    rate_per_s: float | None = None
    group: str | None = None
    progress: bool = False
    """Draw the progress bar even when stderr is not a terminal."""


@dataclass(frozen=True)
class ReplayReport:
    replay_id: str
    group: str
    tally: Tally
    store_note: str | None
    remaining: int
    committed: dict[int, int]
    """Partition -> offset committed for the group by this run (empty when dry)."""


def replay_group(settings: KafkaSettings, group: str | None = None) -> str:
    return group or f"{settings.group_id}-dlq-replay"


async def replay_dead_letters(
    settings: Settings,
    options: ReplayOptions,
    *,
    out: TextIO,
    err: TextIO,
    open_lookup: LookupOpener = open_store_lookup,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> ReplayReport:
    """``dlq replay``: re-publish the selected dead letters' key and value to the command
    topic, committing the group's position after each acknowledged batch."""
    kafka = settings.kafka
    group = replay_group(kafka, options.group)
    replay_id = str(uuid.uuid4())
    partitions = await _partitions(kafka, kafka.dead_letter_topic)
    codec = AvroCodec.from_directory()
    planner = ReplayPlanner(options.selection, kafka.max_replays, options.limit)
    committed: dict[int, int] = {}
    async with AsyncExitStack() as stack:
        lookup, store_note = await open_lookup(settings)
        if lookup is not None:
            stack.push_async_callback(lookup.close)
        from_start = kafka.model_copy(update={"auto_offset_reset": "earliest"})
        consumer = await stack.enter_async_context(open_consumer(from_start, group_id=group))
        producer = None
        if not options.dry_run:
            producer = await stack.enter_async_context(open_producer(kafka))
        consumer.assign(partitions)
        for tp in partitions:
            position = await consumer.committed(tp)
            if position is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, position)
        starts = {tp: await consumer.position(tp) for tp in partitions}
        ends = await consumer.end_offsets(partitions)
        total = sum(max(ends[tp] - starts[tp], 0) for tp in partitions)
        mode = "dry run" if options.dry_run else "replay"
        print(
            f"{mode} {replay_id}: {kafka.dead_letter_topic} -> {kafka.command_topic},"
            f" group {group}, {total} records to examine",
            file=out,
        )
        bar = ProgressBar(total, err, enabled=wants_progress(options.progress, err), clock=clock)
        pacer = Pacer(options.rate_per_s, clock=clock, sleep=sleep)
        pending: list[asyncio.Future[Any]] = []
        examined: dict[TopicPartition, int] = {}
        last_commit = clock()

        async def commit() -> None:
            try:
                for future in pending:
                    await future
            except Exception as exc:
                raise DeadLetterToolError(
                    f"replay stopped: publishing to {kafka.command_topic} failed"
                    f" ({type(exc).__name__}: {exc}); offsets are committed up to the last"
                    " acknowledged batch, run again to continue"
                ) from exc
            pending.clear()
            if producer is not None and examined:
                await consumer.commit(dict(examined))
                committed.update({tp.partition: offset for tp, offset in examined.items()})

        async with aclosing(_drain(consumer, ends)) as records:
            async for record in records:
                letter = _letter(codec, record)
                verdict = planner.decide(letter)
                if verdict is Verdict.REPLAY:
                    terminal = False
                    if lookup is not None and letter.idempotency_key is not None:
                        try:
                            terminal = await lookup.is_terminal(letter.idempotency_key)
                        except Exception as exc:  # the count is a courtesy: stop looking
                            lookup, store_note = None, f"lookup failed ({type(exc).__name__})"
                    planner.tally.terminal += int(terminal)
                    if producer is None:
                        print(_decision_line("would replay", letter, terminal), file=out)
                    else:
                        await pacer.wait()
                        pending.append(
                            await producer.send(
                                kafka.command_topic,
                                key=record.key,
                                value=record.value,
                                headers=replayed_headers(record.headers, replay_id),
                            )
                        )
                elif verdict is Verdict.REFUSED:
                    print(_decision_line("refused (replay limit)", letter, False), file=out)
                elif verdict is Verdict.CUT:
                    print(_decision_line("refused (value not kept)", letter, False), file=out)
                examined[TopicPartition(record.topic, record.partition)] = record.offset + 1
                bar.update(planner.tally.examined)
                if planner.done:
                    break
                if len(pending) >= COMMIT_EVERY or clock() - last_commit >= COMMIT_INTERVAL_S:
                    await commit()
                    last_commit = clock()
        await commit()
        bar.finish()
    report = ReplayReport(
        replay_id, group, planner.tally, store_note, total - planner.tally.examined, committed
    )
    for line in summary_lines(
        report.tally,
        dry_run=options.dry_run,
        store_note=store_note,
        remaining=report.remaining,
        limit=options.limit,
    ):
        print(line, file=out)
    return report


def _decision_line(what: str, letter: DeadLetter, terminal: bool) -> str:
    count = letter.meta.replay_count
    note = "  (already terminal: no-op)" if terminal else ""
    return (
        f"{what:<22} {letter.partition}/{letter.offset}  {mask_text(letter.reason)}"
        f"  replays {count}->{count + 1}  account {letter.masked_account}{note}"
    )
