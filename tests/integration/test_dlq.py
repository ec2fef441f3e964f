"""``points-adjuster dlq list|show|replay`` against the session's real broker, with dead
letters written by DeadLetterPublisher."""

from __future__ import annotations

import argparse
import io
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.codec.avro import COMMAND, AvroCodec
from service.domain.command import account_ref
from service.kafka.clients import open_producer, partitions_of
from service.kafka.deadletter import DeadLetterPublisher, Failure, parse_headers
from service.settings import IdempotencySettings, KafkaSettings, Settings
from service.tools.dlq.cli import add_dlq_arguments, execute
from service.tools.dlq.kafka import ReplayOptions, replay_dead_letters
from service.tools.dlq.render import NO_OP_NOTE, RAW_WARNING
from service.tools.dlq.selection import Selection
from service.tools.dlq.store import TerminalLookup
from tests.kafka_support import create_topics

pytestmark = pytest.mark.kafka

T0 = 1_735_725_600_000  # 2025-01-01T10:00:00Z
MAX_REPLAYS = 3


@dataclass(frozen=True)
class Written:
    """One dead letter as written: where it landed and what it carries."""

    name: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    account: str | None
    reason: str


@dataclass
class World:
    settings: Settings
    codec: AvroCodec
    written: dict[str, Written]

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka


def _command(account: str, key: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "bank_account_number": account,
        "points_to_adjust": 100,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": f"goodwill for {account}",
        "adjusted_by": "agent-1",
        "correlation_id": f"corr-{key}",
        "requested_by": "crm",
        "occurred_at": datetime(2025, 1, 1, 9, 0, tzinfo=UTC),
        "metadata": {},
    }


ACCOUNTS = {
    "c1": "5123456789010001",
    "c2": "5123456789010002",
    "c3": "5123456789010003",
    "auth": "5123456789010004",
    "looped": "5123456789010005",
}


def _settings(bootstrap: str) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            group_id=f"pa-{suffix}",
            command_topic=f"commands-{suffix}",
            completed_topic=f"completed-{suffix}",
            failed_topic=f"failed-{suffix}",
            dead_letter_topic=f"dlt-{suffix}",
            review_topic=f"review-{suffix}",
            max_replays=MAX_REPLAYS,
        ),
        idempotency=IdempotencySettings(backend="memory"),
    )


@pytest.fixture
async def world(kafka_bootstrap: str) -> World:
    """Fresh topics, and seven dead letters: two undecodable, five commands of which three
    PAS_UNAVAILABLE, one UNAUTHORIZED and one PAS_UNAVAILABLE already replayed 3 times."""
    settings = _settings(kafka_bootstrap)
    k = settings.kafka
    await create_topics(
        kafka_bootstrap, {k.command_topic: 2, k.dead_letter_topic: 2, k.review_topic: 1}
    )
    codec = AvroCodec.from_directory()
    plan: list[tuple[str, bytes | None, bytes, str, str, Sequence[tuple[str, bytes]]]] = [
        (
            "junk",
            None,
            b"not avro at all",
            "UndecodableRecordError",
            "UNKNOWN_FRAMING",
            [],
        ),
        (
            "unknown",
            b"some-key",
            b"\xc3\x01" + b"\x00" * 8 + b"body",
            "UndecodableRecordError",
            "UNKNOWN_SCHEMA",
            [],
        ),
    ]
    for name, account in ACCOUNTS.items():
        reason = "UNAUTHORIZED" if name == "auth" else "PAS_UNAVAILABLE"
        error = "Unauthorized" if name == "auth" else "RetriesExhausted"
        incoming: list[tuple[str, bytes]] = [("traceparent", f"00-{name}".encode())]
        if name == "looped":
            incoming += [("pa.replay.id", b"earlier-run"), ("pa.replay.count", b"3")]
        value = codec.encode(COMMAND, _command(account, f"key-{name}"))
        plan.append((name, account_ref(account).encode(), value, error, reason, incoming))

    written: dict[str, Written] = {}
    async with open_producer(k) as producer:
        publisher = DeadLetterPublisher(producer, k, k.group_id, "0.1.0")
        for offset, (name, key, value, error, reason, carried) in enumerate(plan):
            future = await publisher.send(
                topic=k.command_topic,
                partition=0,
                offset=offset,
                timestamp_ms=T0,
                key=key,
                value=value,
                headers=carried,
                failure=Failure(error, reason, f"{reason} detail", 6, T0, T0 + offset),
            )
            metadata = await future
            written[name] = Written(
                name,
                metadata.partition,
                metadata.offset,
                key,
                value,
                ACCOUNTS.get(name),
                reason,
            )
    return World(settings, codec, written)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="points-adjuster")
    add_dlq_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dlq", *argv])


async def _run(world: World, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = await execute(_args(argv), world.settings)
    assert code == 0
    output = capsys.readouterr().out
    for account in ACCOUNTS.values():
        assert account not in output
    return output


async def _command_topic(kafka: KafkaSettings) -> list[Any]:
    """Every record on the command topic, from its beginning to its end."""
    found = await partitions_of(kafka, [kafka.command_topic])
    partitions = [TopicPartition(kafka.command_topic, p) for p in found[kafka.command_topic]]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _summary_value(output: str, label: str) -> int:
    for line in output.splitlines():
        if line.startswith(label):
            return int(line.split()[-1])
    raise AssertionError(f"no {label!r} line in:\n{output}")


async def test_list_counts_dead_letters_by_reason(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """list reads the whole DLT without a group and counts each reason, then prints one
    line per record with the masked account or 'undecodable'."""
    output = await _run(world, ["list"], capsys)
    assert f"{world.kafka.dead_letter_topic}: 7 records, 7 match" in output
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in output.split("by reason:")[1].split("partition/offset")[0].splitlines()
        if line.strip()
    }
    assert counts == {
        "PAS_UNAVAILABLE": 4,
        "UNAUTHORIZED": 1,
        "UNKNOWN_FRAMING": 1,
        "UNKNOWN_SCHEMA": 1,
    }
    lines = output.split("partition/offset")[1].splitlines()[1:]
    assert len(lines) == 7
    assert sum("undecodable" in line for line in lines) == 2
    assert "************0003" in output

    limited = await _run(world, ["list", "--reason", "unauthorized", "--limit", "5"], capsys)
    assert "7 records, 1 match" in limited
    assert "************0004" in limited


async def test_show_masks_the_account_and_prints_every_header(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """show prints every header and the decoded command with the account masked; the full
    number appears nowhere in the output."""
    target = world.written["c2"]
    output = await _run(
        world,
        ["show", "--partition", str(target.partition), "--offset", str(target.offset)],
        capsys,
    )
    for name in (
        "traceparent: 00-c2",
        "pa.original.topic:",
        "pa.original.offset: 3",
        "pa.error.class: RetriesExhausted",
        "pa.error.reason: PAS_UNAVAILABLE",
        "pa.attempts: 6",
        "pa.failure.last:",
        "pa.service.version: 0.1.0",
    ):
        assert name in output
    assert '"bank_account_number": "************0002"' in output
    assert '"idempotency_key": "key-c2"' in output

    junk = world.written["junk"]
    output = await _run(
        world, ["show", "--partition", str(junk.partition), "--offset", str(junk.offset)], capsys
    )
    assert "undecodable (UNKNOWN_FRAMING)" in output
    assert b"not avro at all".hex(" ") in output


LEAKY_ACCOUNT = "5123456789017777"
LEAKY_HEAD = b"\x00\x01 legacy export acct="
LEAKY_TAIL = b"; pts=250\x7f\xfe"
LEAKY_VALUE = LEAKY_HEAD + LEAKY_ACCOUNT.encode() + LEAKY_TAIL


async def _write_leaky_dead_letter(world: World) -> Written:
    """An undecodable record whose value, key and one carried header all spell an account
    number, dead-lettered the way the service does it."""
    k = world.kafka
    async with open_producer(k) as producer:
        publisher = DeadLetterPublisher(producer, k, k.group_id, "0.1.0")
        future = await publisher.send(
            topic=k.command_topic,
            partition=0,
            offset=99,
            timestamp_ms=T0,
            key=LEAKY_ACCOUNT.encode(),
            value=LEAKY_VALUE,
            headers=[("x-source-account", f"acct {LEAKY_ACCOUNT}".encode())],
            failure=Failure("UndecodableRecordError", "UNKNOWN_FRAMING", "no marker", 1, T0, T0),
        )
        metadata = await future
    return Written(
        "leaky",
        metadata.partition,
        metadata.offset,
        LEAKY_ACCOUNT.encode(),
        LEAKY_VALUE,
        LEAKY_ACCOUNT,
        "UNKNOWN_FRAMING",
    )


class Tee(io.StringIO):
    """A stream that also copies what it is given into a shared one (to see the order in
    which stdout and stderr were written)."""

    def __init__(self, shared: io.StringIO) -> None:
        super().__init__()
        self.shared = shared

    def write(self, text: str) -> int:
        self.shared.write(text)
        return super().write(text)


async def _show(world: World, argv: list[str]) -> tuple[int, str, str, str]:
    """Run ``dlq show``: exit code, stdout, stderr, and both interleaved as written."""
    both = io.StringIO()
    out, err = Tee(both), Tee(both)
    code = await execute(_args(["show", *argv]), world.settings, out=out, err=err)
    return code, out.getvalue(), err.getvalue(), both.getvalue()


async def test_show_masks_account_like_digit_runs_of_an_undecodable_record(
    world: World,
) -> None:
    """show prints neither the account-number-like digit run of an undecodable value (in
    text or in hex) nor the one in its key or a carried header: ** and a note instead."""
    leaky = await _write_leaky_dead_letter(world)
    place = ["--partition", str(leaky.partition), "--offset", str(leaky.offset)]
    code, output, errors, _ = await _show(world, place)
    assert code == 0
    assert errors == ""
    run_hex = LEAKY_ACCOUNT.encode().hex(" ")
    assert LEAKY_ACCOUNT not in output
    assert run_hex not in output
    assert LEAKY_ACCOUNT.encode().hex() not in output
    assert "undecodable (UNKNOWN_SCHEMA_ID)" in output  # 00 + 4 bytes: a Confluent frame
    preview = next(line for line in output.splitlines() if "first bytes:" in line)
    masked = " ".join([LEAKY_HEAD.hex(" "), *["**"] * len(LEAKY_ACCOUNT), LEAKY_TAIL.hex(" ")])
    assert preview == f"  first bytes: {masked}"
    assert "digit runs masked" in output
    assert "key: ************7777" in output
    assert "x-source-account: acct ************7777" in output


async def test_show_raw_warns_first_then_prints_the_record_unmasked(world: World) -> None:
    """show --raw writes the warning to stderr before anything else, then prints the
    record's bytes, key and headers unmasked."""
    leaky = await _write_leaky_dead_letter(world)
    place = ["--partition", str(leaky.partition), "--offset", str(leaky.offset), "--raw"]
    code, output, errors, both = await _show(world, place)
    assert code == 0
    assert errors.strip() == RAW_WARNING
    assert (
        "--raw prints unmasked record bytes, which may hold account or card numbers;"
        " for those entitled to see them"
    ) in errors
    assert both.startswith(RAW_WARNING)
    assert LEAKY_VALUE[:64].hex(" ") in output
    assert "digit runs masked" not in output
    assert f"key: {LEAKY_ACCOUNT}" in output
    assert f"x-source-account: acct {LEAKY_ACCOUNT}" in output


async def test_show_raw_prints_a_decoded_command_unmasked(world: World) -> None:
    """show --raw prints a decoded command with its full account number; without --raw the
    same record shows only the last four digits."""
    target = world.written["c1"]
    place = ["--partition", str(target.partition), "--offset", str(target.offset)]
    _, masked, _, _ = await _show(world, place)
    assert ACCOUNTS["c1"] not in masked
    _, raw, errors, _ = await _show(world, [*place, "--raw"])
    assert RAW_WARNING in errors
    assert f'"bank_account_number": "{ACCOUNTS["c1"]}"' in raw


async def test_replay_dry_run_publishes_and_commits_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run prints what it would replay, leaves the command topic empty and commits no
    offset: a real run afterwards still finds every record."""
    output = await _run(world, ["replay", "--dry-run", "--reason", "PAS_UNAVAILABLE"], capsys)
    assert output.count("would replay") == 3
    assert "refused (replay limit)" in output
    assert "nothing was published" in output
    assert await _command_topic(world.kafka) == []

    output = await _run(world, ["replay", "--reason", "PAS_UNAVAILABLE"], capsys)
    assert _summary_value(output, "replayed") == 3


async def test_replay_publishes_the_matching_originals_with_replay_headers(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying one reason publishes exactly those dead letters' original key and value to
    the command topic, with one replay id, count 1 and their own non-pa.* headers; the
    record at the replay limit is refused."""
    output = await _run(world, ["replay", "--reason", "PAS_UNAVAILABLE"], capsys)
    assert _summary_value(output, "matched the filters") == 4
    assert _summary_value(output, "replayed") == 3
    assert _summary_value(output, "refused: replay limit") == 1
    assert _summary_value(output, "skipped by filters") == 3
    assert "not checked (the memory backend" in output

    records = await _command_topic(world.kafka)
    expected = {world.written[name] for name in ("c1", "c2", "c3")}
    assert sorted((r.key, r.value) for r in records) == sorted((w.key, w.value) for w in expected)
    replay_ids = set()
    for record in records:
        meta = parse_headers(record.headers)
        replay_ids.add(meta.replay_id)
        assert meta.replay_count == 1
        assert [name for name, _ in record.headers if name.startswith("pa.")] == [
            "pa.replay.id",
            "pa.replay.count",
        ]
        decoded = world.codec.decode(record.value)[1]
        assert (
            dict(record.headers)["traceparent"] == f"00-{decoded['idempotency_key'][4:]}".encode()
        )
    assert len(replay_ids) == 1
    assert uuid.UUID(str(replay_ids.pop()))


async def test_a_second_replay_with_the_same_group_replays_nothing_new(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay group's committed position makes a second run continue after the first:
    it examines nothing already examined and publishes nothing."""
    first = await _run(world, ["replay", "--group", "ops-1"], capsys)
    assert _summary_value(first, "replayed") == 6
    assert _summary_value(first, "refused: replay limit") == 1

    second = await _run(world, ["replay", "--group", "ops-1"], capsys)
    assert "0 records to examine" in second
    assert _summary_value(second, "replayed") == 0
    assert len(await _command_topic(world.kafka)) == 6

    other_group = await _run(world, ["replay", "--group", "ops-2", "--dry-run"], capsys)
    assert _summary_value(other_group, "would be replayed") == 6


async def test_limit_stops_early_and_the_next_run_continues(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit stops after N replays and commits only up to the last one examined; the next
    run replays the rest, and none twice."""
    first = await _run(world, ["replay", "--reason", "PAS_UNAVAILABLE", "--limit", "2"], capsys)
    assert _summary_value(first, "replayed") == 2
    assert "stopped at --limit 2" in first
    after_first = await _command_topic(world.kafka)
    assert len(after_first) == 2

    second = await _run(world, ["replay", "--reason", "PAS_UNAVAILABLE"], capsys)
    assert _summary_value(second, "replayed") == 1
    records = await _command_topic(world.kafka)
    assert len({r.value for r in records}) == len(records) == 3
    assert {r.value for r in after_first} < {r.value for r in records}


async def test_a_record_at_the_replay_limit_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dead letter already replayed max_replays times is refused, not published."""
    looped = world.written["looped"]
    output = await _run(
        world,
        [
            "replay",
            "--partition",
            str(looped.partition),
            "--from-offset",
            str(looped.offset),
            "--to-offset",
            str(looped.offset),
        ],
        capsys,
    )
    assert f"refused (replay limit) {looped.partition}/{looped.offset}" in output
    assert "replays 3->4" in output
    assert _summary_value(output, "replayed") == 0
    assert await _command_topic(world.kafka) == []


async def test_replay_by_account_publishes_only_that_accounts_command(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """--account selects the dead letter whose command is for that account number."""
    output = await _run(world, ["replay", "--account", ACCOUNTS["auth"]], capsys)
    assert _summary_value(output, "replayed") == 1
    [record] = await _command_topic(world.kafka)
    assert record.value == world.written["auth"].value


class FakeLookup:
    """An idempotency store in which some keys are already terminal."""

    def __init__(self, terminal: set[str]) -> None:
        self.terminal = terminal
        self.closed = False

    async def is_terminal(self, idempotency_key: str) -> bool:
        return idempotency_key in self.terminal

    async def close(self) -> None:
        self.closed = True


async def test_summary_counts_replayed_commands_already_terminal(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replayed commands whose key is terminal in the store are counted, with the wording
    that replaying them is a no-op."""
    lookup = FakeLookup({"key-c1", "key-c3", "key-looped"})

    async def opener(settings: Settings) -> tuple[TerminalLookup | None, str | None]:
        return lookup, None

    report = await replay_dead_letters(
        world.settings,
        ReplayOptions(selection=Selection(reasons=frozenset({"PAS_UNAVAILABLE"}))),
        out=sys.stdout,
        err=sys.stderr,
        open_lookup=opener,
    )
    output = capsys.readouterr().out
    assert report.tally.terminal == 2
    assert _summary_value(output, "already terminal in the idempotency store") == 2
    assert NO_OP_NOTE in output
    assert lookup.closed
    assert sum(report.committed.values()) == 7


class BrokenLookup(FakeLookup):
    """A store that fails on every lookup."""

    async def is_terminal(self, idempotency_key: str) -> bool:
        raise RuntimeError("database is locked")


async def test_a_failing_store_lookup_does_not_stop_the_replay(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the idempotency store cannot be read, the replay goes on and the summary says
    the terminal count was not checked."""
    lookup = BrokenLookup(set())

    async def opener(settings: Settings) -> tuple[TerminalLookup | None, str | None]:
        return lookup, None

    report = await replay_dead_letters(
        world.settings,
        ReplayOptions(selection=Selection(reasons=frozenset({"PAS_UNAVAILABLE"}))),
        out=sys.stdout,
        err=sys.stderr,
        open_lookup=opener,
    )
    output = capsys.readouterr().out
    assert report.tally.replayed == 3
    assert "not checked (lookup failed (RuntimeError))" in output
    assert lookup.closed
    assert len(await _command_topic(world.kafka)) == 3
