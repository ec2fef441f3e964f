"""``points-adjuster dlq``: inspect the dead-letter topic and replay what it holds.

- ``list`` reads the topic from its beginning to its current end without a consumer group
  (assign + seek), counts the dead letters by reason and prints one line per record.
- ``show`` prints one dead letter: every header, the key, and the command with its account
  number masked (or the first bytes in hex when the value is not a command).
- ``replay`` re-publishes the original key and value of the selected dead letters to the
  command topic with ``pa.replay.id``/``pa.replay.count`` headers. It reads with its own
  consumer group and commits, after the replayed records are acknowledged, the position up
  to which it has examined records (replayed, refused or skipped), so the next run with the
  same group continues there. A record already replayed ``max_replays`` times is refused.

The selection, planning and formatting below are plain functions over :class:`DeadLetter`,
testable without a broker; the Kafka reading and writing is at the end of the module.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.codec.avro import COMMAND, AvroCodec
from service.domain.command import mask_account
from service.errors import PointsAdjusterError, UndecodableRecordError
from service.kafka.clients import open_consumer, open_producer, partitions_of
from service.kafka.deadletter import (
    PREFIX,
    DeadLetterMeta,
    header_pairs,
    parse_headers,
    replayed_headers,
    sanitize,
)
from service.settings import KafkaSettings, Settings
from service.tools.progress import Pacer, ProgressBar, Sleep, wants_progress

EXIT_OK = 0
EXIT_FAILED = 1

COMMIT_EVERY = 500  # replays between two commits at most
COMMIT_INTERVAL_S = 1.0  # and at most this long between two commits
STALL_TIMEOUT_S = 30.0  # no progress towards the end offsets for this long: give up
HEX_PREVIEW_BYTES = 64
NO_REASON = "(no reason)"

NO_OP_NOTE = (
    "replaying them is a no-op: their stored outcome is published again, marked duplicate,"
    " and PAS is not called"
)


class DeadLetterToolError(PointsAdjusterError):
    """The dead-letter tool cannot do what it was asked (missing topic, no such record...)."""


# --- the records and how they are selected -------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, its metadata read, its value decoded if it can be."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    meta: DeadLetterMeta
    command: Mapping[str, Any] | None = None
    undecodable: str | None = None
    """Why ``value`` is not a command (a reason code), when it is not."""

    @property
    def reason(self) -> str:
        return self.meta.reason or NO_REASON

    @property
    def failed_at_ms(self) -> int:
        """The last failure's time, else when the dead letter was written."""
        last = self.meta.last_failure_ms
        return self.timestamp_ms if last is None else last

    @property
    def account(self) -> str | None:
        """The command's bank account number: for matching only, never for printing."""
        number = self.command.get("bank_account_number") if self.command else None
        return number if isinstance(number, str) else None

    @property
    def idempotency_key(self) -> str | None:
        key = self.command.get("idempotency_key") if self.command else None
        return key if isinstance(key, str) else None

    @property
    def masked_account(self) -> str:
        if self.command is None:
            return "undecodable"
        return mask_account(self.account) if self.account else "(no account)"


def read_dead_letter(
    codec: AvroCodec,
    *,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: object,
) -> DeadLetter:
    """A :class:`DeadLetter` from a consumed record's parts; never raises on bad bytes."""
    meta = parse_headers(headers)
    command: Mapping[str, Any] | None = None
    undecodable: str | None = None
    try:
        name, record = codec.decode(value)
    except UndecodableRecordError as exc:
        undecodable = exc.reason
    else:
        if name == COMMAND:
            command = record
        else:
            undecodable = "UNEXPECTED_SCHEMA"
    raw_headers = tuple(header_pairs(headers))
    return DeadLetter(
        partition, offset, timestamp_ms, key, value, raw_headers, meta, command, undecodable
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command applies to; every given criterion must hold."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    """Failed at or after (``pa.failure.last``, else the dead letter's own timestamp)."""
    until_ms: int | None = None
    """Failed before."""
    partition: int | None = None
    from_offset: int | None = None
    """Dead-letter topic offsets, both ends included."""
    to_offset: int | None = None
    account: str | None = None
    """The decoded command's bank account number (undecodable records never match)."""

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (self.since_ms is None or letter.failed_at_ms >= self.since_ms)
            and (self.until_ms is None or letter.failed_at_ms < self.until_ms)
            and (self.partition is None or letter.partition == self.partition)
            and (self.from_offset is None or letter.offset >= self.from_offset)
            and (self.to_offset is None or letter.offset <= self.to_offset)
            and (self.account is None or letter.account == self.account)
        )


class Verdict(enum.StrEnum):
    REPLAY = "replay"
    SKIPPED = "skipped"  # the selection does not match
    REFUSED = "refused"  # the replay limit is reached (loop guard)


@dataclass
class Tally:
    """What a replay run did (or, dry, would do)."""

    examined: int = 0
    replayed: int = 0
    skipped: int = 0
    refused: int = 0
    terminal: int = 0
    """Replayed commands already terminal in the idempotency store."""
    by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def matched(self) -> int:
        return self.replayed + self.refused


class ReplayPlanner:
    """Decides record by record: replay, skip (filters) or refuse (loop guard); stops at
    ``limit`` replays."""

    def __init__(self, selection: Selection, max_replays: int, limit: int | None = None):
        self.selection = selection
        self.max_replays = max_replays
        self.limit = limit
        self.tally = Tally()

    @property
    def done(self) -> bool:
        return self.limit is not None and self.tally.replayed >= self.limit

    def decide(self, letter: DeadLetter) -> Verdict:
        self.tally.examined += 1
        if not self.selection.matches(letter):
            self.tally.skipped += 1
            return Verdict.SKIPPED
        if letter.meta.replay_count >= self.max_replays:
            self.tally.refused += 1
            return Verdict.REFUSED
        self.tally.replayed += 1
        self.tally.by_reason[letter.reason] += 1
        return Verdict.REPLAY


def plan_replay(
    letters: Iterable[DeadLetter],
    selection: Selection,
    max_replays: int,
    limit: int | None = None,
) -> list[tuple[DeadLetter, Verdict]]:
    """Every decision a replay would take over ``letters``, stopping at ``limit`` replays."""
    planner = ReplayPlanner(selection, max_replays, limit)
    decisions = []
    for letter in letters:
        decisions.append((letter, planner.decide(letter)))
        if planner.done:
            break
    return decisions


# --- what is printed ------------------------------------------------------------------------


def iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 time (``Z`` or an offset; none means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (e.g. 2025-01-31T14:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def reason_counts(letters: Iterable[DeadLetter]) -> Counter[str]:
    return Counter(letter.reason for letter in letters)


LIST_HEADER = (
    f"{'partition/offset':<17} {'failed at (UTC)':<25} {'reason':<26} {'attempts':>8}"
    f" {'replays':>7}  account"
)


def list_line(letter: DeadLetter) -> str:
    attempts = "?" if letter.meta.attempts is None else str(letter.meta.attempts)
    return (
        f"{f'{letter.partition}/{letter.offset}':<17} {iso_ms(letter.failed_at_ms):<25}"
        f" {letter.reason:<26} {attempts:>8} {letter.meta.replay_count:>7}"
        f"  {letter.masked_account}"
    )


def _printable(value: bytes) -> str:
    """Header or key bytes for display: text when it is readable, else hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if text.isprintable():
            return text
    shown = value[:HEX_PREVIEW_BYTES].hex(" ")
    more = f" ... ({len(value)} bytes)" if len(value) > HEX_PREVIEW_BYTES else ""
    return f"0x {shown}{more}"


_TIME_HEADERS = {"pa.original.timestamp", "pa.failure.first", "pa.failure.last"}


def masked_command(command: Mapping[str, Any]) -> dict[str, Any]:
    """The command with its account number masked wherever it appears."""
    account = command.get("bank_account_number")
    masked_number = mask_account(account) if isinstance(account, str) and account else None

    def mask(value: Any) -> Any:
        if isinstance(value, str) and masked_number is not None and isinstance(account, str):
            return value.replace(account, masked_number)
        if isinstance(value, Mapping):
            return {name: mask(item) for name, item in value.items()}
        return value

    return {name: mask(value) for name, value in command.items()}


def _json_value(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def describe(letter: DeadLetter, topic: str) -> list[str]:
    """The lines of ``dlq show``: headers, key, and the masked command or a hex preview."""
    lines = [f"dead letter {topic} partition {letter.partition} offset {letter.offset}"]
    lines.append(f"  written at: {iso_ms(letter.timestamp_ms)}")
    lines.append("headers:")
    if not letter.headers:
        lines.append("  (none)")
    for name, value in letter.headers:
        shown = _printable(value)
        if not name.startswith(PREFIX):
            shown = sanitize(shown)
        elif name in _TIME_HEADERS and shown.isdigit():
            shown = f"{shown} ({iso_ms(int(shown))})"
        lines.append(f"  {sanitize(name)}: {shown}")
    key = "(none)" if letter.key is None else sanitize(_printable(letter.key))
    lines.append(f"key: {key}")
    if letter.command is not None:
        lines.append("command (PointsAdjustmentRequested, account masked):")
        text = json.dumps(masked_command(letter.command), indent=2, default=_json_value)
        lines.extend(f"  {line}" for line in text.splitlines())
    else:
        size = 0 if letter.value is None else len(letter.value)
        lines.append(f"value: undecodable ({letter.undecodable}), {size} bytes")
        if letter.value:
            lines.append(f"  first bytes: {letter.value[:HEX_PREVIEW_BYTES].hex(' ')}")
    return lines


def summary_lines(
    tally: Tally,
    *,
    dry_run: bool,
    store_note: str | None,
    remaining: int,
    limit: int | None,
) -> list[str]:
    """The summary printed at the end of ``dlq replay``."""
    verb = "would be replayed" if dry_run else "replayed"
    rows = [
        ("examined", tally.examined),
        ("matched the filters", tally.matched),
        (verb, tally.replayed),
        ("refused: replay limit", tally.refused),
        ("skipped by filters", tally.skipped),
    ]
    lines = [f"{label:<38}{count:>8}" for label, count in rows]
    for reason, count in sorted(tally.by_reason.items()):
        label = f"  {verb} with {reason}"
        lines.append(f"{label:<38}{count:>8}")
    if store_note is None:
        lines.append(f"{'already terminal in the idempotency store':<38}{tally.terminal:>8}")
        if tally.terminal:
            lines.append(f"  ({NO_OP_NOTE})")
    else:
        lines.append(f"already terminal in the idempotency store: not checked ({store_note})")
    if limit is not None and tally.replayed >= limit and remaining:
        lines.append(f"stopped at --limit {limit}; {remaining} records left for the next run")
    if dry_run:
        lines.append("dry run: nothing was published and no offset was committed")
    return lines


# --- the idempotency store, read only -------------------------------------------------------


class TerminalLookup(Protocol):
    """Tells whether an idempotency key already has a terminal record."""

    async def is_terminal(self, idempotency_key: str) -> bool: ...

    async def close(self) -> None: ...


LookupOpener = Callable[[Settings], Awaitable[tuple[TerminalLookup | None, str | None]]]


class _StoreLookup:
    def __init__(self, store: Any, terminal: frozenset[str]) -> None:
        self._store = store
        self._terminal = terminal

    async def is_terminal(self, idempotency_key: str) -> bool:
        record = await self._store.get(idempotency_key)
        return record is not None and str(getattr(record, "state", "")) in self._terminal

    async def close(self) -> None:
        await self._store.close()


async def open_store_lookup(settings: Settings) -> tuple[TerminalLookup | None, str | None]:
    """The configured idempotency store, or ``None`` and why it is not consulted."""
    config = settings.idempotency
    if config.backend == "memory":
        return None, "the memory backend keeps nothing between processes"
    if not config.sqlite_path.exists():  # do not create an empty store on an operator's box
        return None, f"no store at {config.sqlite_path}"
    try:
        from service.app import open_store
        from service.idempotency.base import TERMINAL
    except Exception as exc:  # the composition root cannot be imported here
        return None, f"service.app.open_store is not importable ({type(exc).__name__})"
    try:
        store = await open_store(config)
    except Exception as exc:  # an unreadable store only costs the summary line
        return None, f"cannot open {config.sqlite_path} ({type(exc).__name__})"
    return _StoreLookup(store, frozenset(str(state) for state in TERMINAL)), None


# --- Kafka ----------------------------------------------------------------------------------


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
        print(f"  {reason:<30}{count:>8}", file=out)
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
    settings: KafkaSettings, partition: int, offset: int, *, topic: str | None = None, out: TextIO
) -> int:
    """``dlq show``: one dead letter in full, account masked."""
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
                    for line in describe(_letter(AvroCodec.from_directory(), record), name):
                        print(line, file=out)
                    return EXIT_OK
    finally:
        await consumer.stop()
    raise DeadLetterToolError(f"no record at {name} partition {partition} offset {offset}")


@dataclass(frozen=True)
class ReplayOptions:
    selection: Selection = Selection()
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
        f"{what:<22} {letter.partition}/{letter.offset}  {letter.reason}"
        f"  replays {count}->{count + 1}  account {letter.masked_account}{note}"
    )


# --- the command line -----------------------------------------------------------------------

DLQ_DESCRIPTION = """\
Inspect the dead-letter topic (PA_KAFKA__DEAD_LETTER_TOPIC) and replay records from it.

A dead letter is the original record, key and value unchanged, with pa.* headers saying
where it came from and why it failed (pa.error.reason, pa.attempts, pa.failure.last, ...).
Account numbers are never printed: commands show the last four digits only.
"""

REPLAY_DESCRIPTION = """\
Re-publish the original key and value of the selected dead letters to the command topic
(PA_KAFKA__COMMAND_TOPIC), with headers pa.replay.id (one uuid per run) and pa.replay.count
(the record's previous count + 1); the original's other non-pa.* headers are kept.

Loop guard: a record already replayed PA_KAFKA__MAX_REPLAYS times is refused.
Resumable: the run reads with its own consumer group (default <PA_KAFKA__GROUP_ID>-dlq-replay)
and commits, once the replayed records are acknowledged, how far it has examined the topic,
skipped and refused records included; the next run with the same group continues there. To
replay, later, records a filtered run passed over, use another --group. Do not run two
replays with the same group at once. An interrupted run commits up to its last acknowledged
batch (at most about a second of work back); what it sent after that is replayed again by
the next run, which the idempotency store makes harmless.

A replayed command whose idempotency key is already terminal in the store is a no-op: its
stored outcome is published again, marked duplicate, and PAS is not called.
"""


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="R",
        help="only this pa.error.reason, e.g. PAS_UNAVAILABLE or CORRUPT_AVRO (repeatable)",
    )
    parser.add_argument(
        "--since",
        type=parse_time,
        metavar="ISO",
        help="only records that last failed at or after this time (ISO-8601; UTC if no offset)",
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="ISO", help="only records that last failed before"
    )
    parser.add_argument(
        "--partition", type=_non_negative_int, metavar="P", help="only this dead-letter partition"
    )
    parser.add_argument(
        "--from-offset",
        type=_non_negative_int,
        metavar="N",
        help="only dead-letter offsets >= N (as printed by list)",
    )
    parser.add_argument(
        "--to-offset", type=_non_negative_int, metavar="N", help="only dead-letter offsets <= N"
    )
    parser.add_argument(
        "--account",
        metavar="NUMBER",
        help="only commands for this bank account number (matched, never printed); '-' reads"
        " it from stdin, keeping it out of shell history and the process list",
    )


def add_dlq_arguments(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq list|show|replay`` on the CLI's sub-command parsers."""
    dlq = subparsers.add_parser(
        "dlq",
        help="inspect and replay the dead-letter topic (dlq list|show|replay)",
        description=DLQ_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="count dead letters by reason and list them",
        description="Read the dead-letter topic from its beginning to its current end (no"
        " consumer group, nothing committed); print the matching records' counts by reason,"
        " then one line per record: partition/offset, failure time, reason, attempts,"
        " replay count and the masked account ('undecodable' when the value is not a command).",
    )
    _add_selection(listing)
    listing.add_argument(
        "--limit", type=_positive_int, metavar="N", help="print at most N record lines"
    )
    listing.add_argument(
        "--review", action="store_true", help="read the review topic (PA_KAFKA__REVIEW_TOPIC)"
    )

    show = actions.add_parser(
        "show",
        help="print one dead letter with every header",
        description="Print every header of one dead letter, its key, and the command with"
        " bank_account_number masked, or the first 64 bytes in hex when it is not a command.",
    )
    show.add_argument("--partition", type=_non_negative_int, required=True, metavar="P")
    show.add_argument("--offset", type=_non_negative_int, required=True, metavar="O")
    show.add_argument(
        "--review", action="store_true", help="read the review topic (PA_KAFKA__REVIEW_TOPIC)"
    )

    replay = actions.add_parser(
        "replay",
        help="re-publish dead letters to the command topic",
        description=REPLAY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_selection(replay)
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be replayed; publish nothing, commit nothing",
    )
    replay.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N replays")
    replay.add_argument(
        "--rate", type=_positive_float, metavar="PER_S", help="replay at most PER_S records/s"
    )
    replay.add_argument(
        "--group", metavar="G", help="consumer group of the replay (default <group_id>-dlq-replay)"
    )
    replay.add_argument(
        "--progress",
        action="store_true",
        help="progress bar on stderr even when it is not a terminal",
    )


def selection_from_arguments(args: argparse.Namespace, stdin: TextIO | None = None) -> Selection:
    account = args.account
    if account == "-":
        account = (stdin or sys.stdin).readline().strip()
        if not account:
            raise DeadLetterToolError("--account -: no account number on stdin")
    return Selection(
        reasons=frozenset(reason.strip().upper() for reason in args.reason),
        since_ms=args.since,
        until_ms=args.until,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        account=account,
    )


async def execute(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the ``dlq`` action ``args`` asks for; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    kafka = settings.kafka
    if args.dlq_command == "show":
        topic = kafka.review_topic if args.review else None
        return await show_dead_letter(kafka, args.partition, args.offset, topic=topic, out=out)
    selection = selection_from_arguments(args)
    if args.dlq_command == "list":
        topic = kafka.review_topic if args.review else None
        return await list_dead_letters(kafka, selection, limit=args.limit, topic=topic, out=out)
    if args.dlq_command == "replay":
        options = ReplayOptions(
            selection=selection,
            dry_run=args.dry_run,
            limit=args.limit,
            rate_per_s=args.rate,
            group=args.group,
            progress=args.progress,
        )
        await replay_dead_letters(settings, options, out=out, err=err)
        return EXIT_OK
    raise AssertionError(args.dlq_command)


def run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``points-adjuster dlq``."""
    return asyncio.run(execute(args, settings))
