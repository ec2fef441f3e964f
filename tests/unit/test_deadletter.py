"""Dead-letter headers, their caps and sanitizing, lenient parsing, replay counting, and the
selection logic of ``points-adjuster dlq`` (no broker)."""

from __future__ import annotations

import argparse
import hashlib
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from service.cli import build_parser
from service.codec.avro import COMMAND, AvroCodec
from service.errors import UndecodableRecordError
from service.kafka import deadletter as dl
from service.kafka.deadletter import (
    DeadLetterPublisher,
    Failure,
    ReplayInfo,
    dead_letter_headers,
    parse_headers,
    replay_count,
    replay_info,
    replayed_headers,
    sanitize,
)
from service.kafka.sizing import headers_size
from service.settings import KafkaSettings
from service.tools.dlq.cli import add_dlq_arguments, selection_from_arguments
from service.tools.dlq.render import (
    NO_OP_NOTE,
    describe,
    list_line,
    masked_command,
    parse_time,
    summary_lines,
)
from service.tools.dlq.selection import (
    DeadLetter,
    ReplayPlanner,
    Selection,
    Tally,
    Verdict,
    read_dead_letter,
)
from service.tools.progress import Pacer, ProgressBar, render_bar
from tests.fakes import FakeClock, RecordingProducer, Sent

ACCOUNT = "5123456789012345"
T0 = 1_735_725_600_000  # 2025-01-01T10:00:00Z
FAILURE = Failure(
    error_class="RetriesExhausted",
    reason="PAS_UNAVAILABLE",
    detail="PAS answered 503 six times",
    attempts=6,
    first_failure_ms=T0,
    last_failure_ms=T0 + 30_000,
)
ALL_NAMES = [
    "pa.original.topic",
    "pa.original.partition",
    "pa.original.offset",
    "pa.original.timestamp",
    "pa.consumer.group",
    "pa.error.class",
    "pa.error.reason",
    "pa.error.detail",
    "pa.attempts",
    "pa.failure.first",
    "pa.failure.last",
    "pa.service.version",
]


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def command(account: str = ACCOUNT, key: str = "case-1-credit") -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "bank_account_number": account,
        "points_to_adjust": 250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": f"goodwill for {account}",
        "adjusted_by": "agent-7",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": datetime(2025, 1, 1, 9, 0, tzinfo=UTC),
        "metadata": {"ticket": "T-1", "account": account},
    }


def build(**overrides: Any) -> list[tuple[str, bytes]]:
    arguments: dict[str, Any] = {
        "source_topic": "points-adjustments.requested.v1",
        "partition": 2,
        "offset": 4711,
        "timestamp_ms": T0 - 1000,
        "group": "points-adjuster",
        "failure": FAILURE,
        "version": "0.1.0",
        "replay": None,
    }
    arguments.update(overrides)
    return dead_letter_headers(**arguments)


def letter(
    codec: AvroCodec,
    *,
    partition: int = 0,
    offset: int = 0,
    reason: str = "PAS_UNAVAILABLE",
    failed_at: int | None = T0,
    replays: int = 0,
    value: bytes | None = None,
    timestamp_ms: int = T0,
) -> DeadLetter:
    failure = Failure("E", reason, "", 1, failed_at or 0, failed_at or 0)
    headers = build(failure=failure, replay=ReplayInfo("r", replays) if replays else None)
    if failed_at is None:
        headers = [(n, v) for n, v in headers if n != "pa.failure.last"]
    return read_dead_letter(
        codec,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key=b"acct-1",
        value=codec.encode(COMMAND, command()) if value is None else value,
        headers=headers,
    )


# --- headers ---------------------------------------------------------------------------------


def test_headers_name_every_field_with_typed_utf8_values() -> None:
    """A dead letter's headers hold every pa.* name once, integers in decimal and
    timestamps in epoch milliseconds, all as UTF-8 bytes."""
    headers = dict(build())
    assert list(headers) == ALL_NAMES
    assert all(isinstance(value, bytes) for value in headers.values())
    assert headers["pa.original.topic"] == b"points-adjustments.requested.v1"
    assert headers["pa.original.partition"] == b"2"
    assert headers["pa.original.offset"] == b"4711"
    assert headers["pa.original.timestamp"] == str(T0 - 1000).encode()
    assert headers["pa.consumer.group"] == b"points-adjuster"
    assert headers["pa.error.class"] == b"RetriesExhausted"
    assert headers["pa.error.reason"] == b"PAS_UNAVAILABLE"
    assert headers["pa.error.detail"] == b"PAS answered 503 six times"
    assert headers["pa.attempts"] == b"6"
    assert headers["pa.failure.first"] == str(T0).encode()
    assert headers["pa.failure.last"] == str(T0 + 30_000).encode()
    assert headers["pa.service.version"] == b"0.1.0"


def test_replay_headers_are_written_only_for_replayed_records() -> None:
    """pa.replay.id and pa.replay.count appear when the failed record came from a replay."""
    headers = dict(build(replay=ReplayInfo("run-1", 2)))
    assert list(headers) == [*ALL_NAMES, "pa.replay.id", "pa.replay.count"]
    assert headers["pa.replay.id"] == b"run-1"
    assert headers["pa.replay.count"] == b"2"


def test_failure_of_an_undecodable_record_names_class_and_reason() -> None:
    """Failure.undecodable takes the error's class name, reason code and detail, tried once."""
    error = UndecodableRecordError("CORRUPT_AVRO", "3 trailing bytes")
    assert Failure.undecodable(error, T0) == Failure(
        "UndecodableRecordError", "CORRUPT_AVRO", "3 trailing bytes", 1, T0, T0
    )


def test_a_long_detail_is_cut_on_a_utf8_boundary_with_a_marker() -> None:
    """A detail over 512 bytes is cut to at most 512 bytes of valid UTF-8 ending in '…'."""
    failure = Failure("E", "R", "é" * 600, 1, T0, T0)
    detail = dict(build(failure=failure))["pa.error.detail"]
    assert len(detail) <= dl.VALUE_CAP_BYTES
    text = detail.decode("utf-8")  # would raise on a split character
    assert text.endswith("…")
    assert set(text[:-1]) == {"é"}


def test_every_value_is_capped_not_only_the_detail() -> None:
    """An oversized group or error class is cut to the value cap too."""
    headers = dict(build(group="g" * 2000, failure=Failure("C" * 900, "R", "d", 1, T0, T0)))
    assert len(headers["pa.consumer.group"]) == dl.VALUE_CAP_BYTES
    assert len(headers["pa.error.class"]) == dl.VALUE_CAP_BYTES
    assert headers["pa.consumer.group"].endswith("…".encode())


def test_the_detail_is_shortened_first_when_the_total_is_over_the_cap() -> None:
    """Over the total cap, the detail gives up bytes and every other value stays whole."""
    failure = Failure("E", "R", "x" * 400, 1, T0, T0)
    whole = build(failure=failure)
    cap = headers_size(whole) - 100
    headers = build(failure=failure, total_cap=cap)
    assert headers_size(headers) <= cap
    detail = dict(headers)["pa.error.detail"]
    assert detail == b"x" * (400 - 100 - len("…".encode())) + "…".encode()
    others = [(n, v) for n, v in headers if n != "pa.error.detail"]
    assert others == [(n, v) for n, v in whole if n != "pa.error.detail"]


def test_the_detail_is_dropped_before_anything_else_is_cut() -> None:
    """When even a short detail does not fit, it is left out; further excess cuts the group."""
    without_detail = headers_size(
        [(n, v) for n, v in build(group="g" * 300) if n != "pa.error.detail"]
    )
    headers = dict(build(group="g" * 300, total_cap=without_detail - 50))
    assert "pa.error.detail" not in headers
    assert len(headers["pa.consumer.group"]) == 250
    assert headers["pa.original.topic"] == b"points-adjustments.requested.v1"


def test_the_default_total_cap_keeps_pathological_values_within_4_kib() -> None:
    """Every text value at its cap still gives at most 4 KiB of pa.* headers."""
    long = "z" * 5000
    headers = build(
        source_topic=long,
        group=long,
        failure=Failure(long, long, long, 1, T0, T0),
        version=long,
        replay=ReplayInfo(long, 1),
    )
    assert headers_size(headers) <= dl.TOTAL_CAP_BYTES


# --- sanitizing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("account 5123456789012345 unknown", "account ************2345 unknown"),
        ("card 5123 4567 8901 2345!", "card ************2345!"),
        ("ref 5123-4567-8901-2345", "ref ************2345"),
        ("twelve 123456789012", "twelve ********9012"),
        ("eleven 12345678901 stays", "eleven 12345678901 stays"),
        ("status 503 after 6 attempts", "status 503 after 6 attempts"),
    ],
)
def test_digit_runs_of_twelve_or_more_are_masked(raw: str, expected: str) -> None:
    """Runs of 12+ digits, grouped or not, keep only their last four digits."""
    assert sanitize(raw) == expected


def test_tokens_and_control_characters_do_not_survive_sanitizing() -> None:
    """A JWE-like token is redacted and line breaks become spaces; plain words stay."""
    jwe = "eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMjU2R0NNIn0.abc"
    text = sanitize(f"bad payload\n{jwe}\tpoints-adjustments-requested-topic-name-long-x")
    assert "eyJhbGci" not in text
    assert "[redacted]" in text
    assert "\n" not in text
    assert "\t" not in text
    assert "points-adjustments-requested-topic-name-long-x" in text


def test_the_detail_header_never_holds_a_full_account_number() -> None:
    """A detail quoting an account number is written masked."""
    failure = Failure("E", "R", f"PAS: account {ACCOUNT} not found", 1, T0, T0)
    headers = build(failure=failure)
    assert all(ACCOUNT.encode() not in value for _, value in headers)
    assert dict(headers)["pa.error.detail"] == b"PAS: account ************2345 not found"


# --- parsing ---------------------------------------------------------------------------------


def test_parse_reads_back_what_was_written() -> None:
    """parse_headers returns the typed values dead_letter_headers wrote."""
    meta = parse_headers([("traceparent", b"00-abc"), *build(replay=ReplayInfo("run-1", 2))])
    assert meta.original_topic == "points-adjustments.requested.v1"
    assert (meta.original_partition, meta.original_offset) == (2, 4711)
    assert meta.original_timestamp_ms == T0 - 1000
    assert meta.consumer_group == "points-adjuster"
    assert (meta.error_class, meta.reason) == ("RetriesExhausted", "PAS_UNAVAILABLE")
    assert meta.detail == "PAS answered 503 six times"
    assert meta.attempts == 6
    assert (meta.first_failure_ms, meta.last_failure_ms) == (T0, T0 + 30_000)
    assert meta.service_version == "0.1.0"
    assert (meta.replay_id, meta.replay_count) == ("run-1", 2)
    assert meta.foreign == (("traceparent", b"00-abc"),)


class _Exploding:
    def __iter__(self) -> Any:
        yield ("pa.error.reason", b"EXPIRED")
        raise RuntimeError("broken iterator")


@pytest.mark.parametrize(
    "headers",
    [
        None,
        42,
        "pa.error.reason",
        [("pa.attempts",)],
        [(None, b"1"), (b"pa.attempts", b"x1"), ("pa.attempts", "7")],
        [("pa.attempts", b"\xff\xfe"), ("pa.original.offset", b"12345678901234567890123")],
        [("pa.replay.count", b"-4"), ("pa.failure.last", b"soon")],
        _Exploding(),
    ],
)
def test_parse_never_raises_on_garbage(headers: object) -> None:
    """Missing, mistyped or undecodable headers give None fields and a replay count of 0."""
    meta = parse_headers(headers)
    assert meta.attempts is None
    assert meta.original_offset is None
    assert meta.last_failure_ms is None
    assert meta.replay_count == 0


def test_parse_keeps_what_it_can_read_and_the_last_duplicate_wins() -> None:
    """Readable headers survive beside garbled ones; a repeated name takes its last value."""
    meta = parse_headers(_Exploding())
    assert meta.reason == "EXPIRED"
    meta = parse_headers([("pa.replay.count", b"1"), ("pa.replay.count", b"3")])
    assert meta.replay_count == 3


def test_replay_count_is_zero_for_a_record_never_replayed() -> None:
    """replay_count and replay_info report nothing for an ordinary record."""
    assert replay_count([("traceparent", b"x")]) == 0
    assert replay_count(None) == 0
    assert replay_info([("traceparent", b"x")]) is None
    assert replay_info([("pa.replay.id", b"r"), ("pa.replay.count", b"2")]) == ReplayInfo("r", 2)


def test_replayed_headers_count_up_and_keep_only_foreign_headers() -> None:
    """A replayed record gets the run's id, the previous count + 1 and the original's
    non-pa.* headers; the failure metadata is not sent back to the command topic."""
    dead = [("traceparent", b"00-abc"), *build(replay=ReplayInfo("old", 1)), ("x-b", b"2")]
    assert replayed_headers(dead, "run-2") == [
        ("traceparent", b"00-abc"),
        ("x-b", b"2"),
        ("pa.replay.id", b"run-2"),
        ("pa.replay.count", b"2"),
    ]
    assert replay_count(replayed_headers(build(), "run-1")) == 1


# --- the publisher ---------------------------------------------------------------------------


async def _publish(
    producer: RecordingProducer, headers: Sequence[tuple[str, bytes]], **extra: Any
) -> None:
    publisher = DeadLetterPublisher(producer, KafkaSettings(), "points-adjuster", "0.1.0")
    future = await publisher.send(
        topic="commands",
        partition=1,
        offset=99,
        timestamp_ms=T0,
        key=b"acct-1",
        value=b"\xc3\x01original",
        headers=headers,
        failure=FAILURE,
        **extra,
    )
    assert await future == len(producer.sent) - 1


async def test_publisher_sends_the_original_bytes_with_metadata_to_the_dlt() -> None:
    """The dead letter is the original key and value on the DLT, foreign headers first."""
    producer = RecordingProducer()
    await _publish(producer, [("traceparent", b"00-abc")])
    [sent] = producer.sent
    assert sent.topic == KafkaSettings().dead_letter_topic
    assert (sent.key, sent.value) == (b"acct-1", b"\xc3\x01original")
    names = [name for name, _ in sent.headers]
    assert names == ["traceparent", *ALL_NAMES]
    meta = parse_headers(sent.headers)
    assert (meta.original_topic, meta.original_partition, meta.original_offset) == (
        "commands",
        1,
        99,
    )


async def test_publisher_carries_a_replayed_records_count_onto_the_new_dead_letter() -> None:
    """A replayed record that fails again keeps its replay id and count; stale pa.error
    headers of the incoming record are replaced by this failure's."""
    producer = RecordingProducer()
    incoming = [
        ("pa.replay.id", b"run-7"),
        ("pa.replay.count", b"2"),
        ("pa.error.reason", b"STALE"),
    ]
    await _publish(producer, incoming, target="review")
    [sent] = producer.sent
    assert sent.topic == KafkaSettings().review_topic
    meta = parse_headers(sent.headers)
    assert (meta.replay_id, meta.replay_count) == ("run-7", 2)
    assert meta.reason == "PAS_UNAVAILABLE"
    assert [n for n, _ in sent.headers].count("pa.error.reason") == 1


async def test_publisher_shortens_the_detail_when_carried_headers_are_large() -> None:
    """Large carried headers leave less room for pa.* metadata: the detail is cut, the
    rest stays whole, and the record's headers stay within the total cap."""
    producer = RecordingProducer()
    publisher = DeadLetterPublisher(producer, KafkaSettings(), "g" * 400, "0.1.0")
    failure = Failure("E", "R", "x" * 500, 1, T0, T0)
    await publisher.send(
        topic="commands",
        partition=1,
        offset=99,
        timestamp_ms=T0,
        key=None,
        value=None,
        headers=[("baggage", b"b" * 3000)],
        failure=failure,
    )
    [sent] = producer.sent
    assert headers_size(sent.headers) <= dl.TOTAL_CAP_BYTES
    meta = parse_headers(sent.headers)
    assert meta.detail is not None
    assert 100 < len(meta.detail) < 500
    assert meta.detail.endswith("…")
    assert meta.consumer_group == "g" * 400
    assert meta.foreign == (("baggage", b"b" * 3000),)


async def test_metadata_keeps_a_minimum_room_whatever_was_carried() -> None:
    """A carried header too large for its share is dropped and counted: the pa.* metadata
    stays whole and all headers stay within the total cap."""
    producer = RecordingProducer()
    await _publish(producer, [("baggage", b"b" * 5000)])
    headers = producer.sent[0].headers
    meta = parse_headers(headers)
    assert meta.detail == "PAS answered 503 six times"
    assert meta.reason == "PAS_UNAVAILABLE"
    assert meta.foreign == ()
    assert meta.truncated == ("headers:1",)
    assert headers_size(headers) <= dl.TOTAL_CAP_BYTES


# --- records too large to copy -------------------------------------------------------------


async def _letter_sent(
    *,
    key: bytes | None = b"acct-1",
    value: bytes | None = b"\xc3\x01original",
    headers: Sequence[tuple[str, bytes]] = (),
    limit: int = 1_000_000,
    script: Sequence[str] = (),
    target: Literal["dlt", "review"] = "dlt",
    topic_limits: dict[str, int] | None = None,
) -> tuple[RecordingProducer, Any]:
    """Dead-letter one record; return the producer and what the awaited future gave."""
    producer = RecordingProducer(list(script))
    settings = KafkaSettings(max_message_bytes=limit)
    publisher = DeadLetterPublisher(
        producer, settings, "points-adjuster", "0.1.0", topic_limits=topic_limits
    )
    delivery = await publisher.send(
        topic="commands",
        partition=1,
        offset=99,
        timestamp_ms=T0,
        key=key,
        value=value,
        headers=headers,
        failure=FAILURE,
        target=target,
    )
    return producer, await delivery


def _size(sent: Sent) -> int:
    return sent.size


async def test_a_dead_letter_exactly_at_the_limit_is_sent_whole() -> None:
    """A dead letter whose size equals the limit carries the original bytes, nothing cut."""
    value = b"v" * 50_000
    measured, _ = await _letter_sent(value=value, limit=100_000_000)
    size = _size(measured.sent[0])
    producer, _ = await _letter_sent(value=value, limit=size)
    [sent] = producer.sent
    assert (sent.key, sent.value) == (b"acct-1", value)
    assert parse_headers(sent.headers).truncated == ()


async def test_a_dead_letter_one_byte_over_the_limit_loses_its_value() -> None:
    """One byte over the limit, the value is replaced by its length and SHA-256."""
    value = b"v" * 50_000
    measured, _ = await _letter_sent(value=value, limit=100_000_000)
    size = _size(measured.sent[0])
    producer, _ = await _letter_sent(value=value, limit=size - 1)
    [sent] = producer.sent
    assert _size(sent) <= size - 1
    assert (sent.key, sent.value) == (b"acct-1", None)
    meta = parse_headers(sent.headers)
    assert meta.truncated == ("value",)
    assert meta.original_value_bytes == 50_000


async def test_a_999_000_byte_value_with_3_kb_of_headers_is_described_not_copied() -> None:
    """A value that leaves no room for the headers is cut: the dead letter keeps the key, the
    carried headers and the metadata, and says how long the value was and its SHA-256."""
    value = (b"\xc3\x01" + bytes(range(256)) * 3903)[:999_000]
    carried = [
        ("traceparent", b"00-" + b"a" * 52),
        ("baggage", b"b" * 1500),
        ("x-tenant", b"t" * 1400),
    ]
    producer, acked = await _letter_sent(value=value, headers=carried)
    [sent] = producer.sent
    assert acked == 0
    assert _size(sent) <= 1_000_000
    assert (sent.key, sent.value) == (b"acct-1", None)
    assert headers_size(sent.headers) <= dl.TOTAL_CAP_BYTES
    meta = parse_headers(sent.headers)
    assert meta.foreign == tuple(carried)
    assert meta.truncated == ("value",)
    assert meta.value_cut
    assert not meta.key_cut
    assert meta.original_value_bytes == 999_000
    assert meta.original_value_sha256 == hashlib.sha256(value).hexdigest()
    assert (meta.reason, meta.original_offset) == ("PAS_UNAVAILABLE", 99)


async def test_carried_headers_over_their_share_are_dropped_and_counted() -> None:
    """Carried headers are kept in order while they fit in 4 KiB less the metadata's
    minimum; the first that does not fit and all after it are dropped and counted."""
    carried = [(f"h{i}", bytes([65 + i]) * 1000) for i in range(5)] + [("small", b"s")]
    producer, _ = await _letter_sent(headers=carried)
    [sent] = producer.sent
    meta = parse_headers(sent.headers)
    assert meta.foreign == tuple(carried[:3])
    assert meta.truncated == ("headers:3",)
    assert headers_size(sent.headers) <= dl.TOTAL_CAP_BYTES
    assert sent.value == b"\xc3\x01original"
    assert meta.detail == "PAS answered 503 six times"


async def test_a_huge_key_is_cut_and_the_value_kept() -> None:
    """When the key alone is too large, it is the key that goes, not the value."""
    key = b"k" * 999_500
    producer, _ = await _letter_sent(key=key)
    [sent] = producer.sent
    assert (sent.key, sent.value) == (None, b"\xc3\x01original")
    meta = parse_headers(sent.headers)
    assert meta.truncated == ("key",)
    assert (meta.original_key_bytes, meta.original_key_sha256) == (
        999_500,
        hashlib.sha256(key).hexdigest(),
    )


async def test_a_huge_key_and_value_are_both_cut_into_an_empty_record() -> None:
    """With both cut, the value is sent empty (b"") as aiokafka refuses a record with
    neither key nor value."""
    producer, _ = await _letter_sent(key=b"k" * 999_800, value=b"v" * 999_800)
    [sent] = producer.sent
    assert (sent.key, sent.value) == (None, b"")
    assert parse_headers(sent.headers).truncated == ("value", "key")


async def test_a_record_with_neither_key_nor_value_is_dead_lettered() -> None:
    """An empty record without a key (undecodable: EMPTY_RECORD) goes out with an empty
    value instead of being refused by the producer."""
    producer, _ = await _letter_sent(key=None, value=None)
    [sent] = producer.sent
    assert (sent.key, sent.value) == (None, b"")
    assert parse_headers(sent.headers).truncated == ()


async def test_a_broker_refusal_sends_the_minimal_dead_letter() -> None:
    """When the broker refuses the dead letter as too large, the minimal form (key and value
    cut, no carried header) goes out once and the future resolves with its acknowledgement."""
    value = b"v" * 300_000
    producer, acked = await _letter_sent(
        value=value, headers=[("traceparent", b"00-abc")], script=["broker"]
    )
    first, second = producer.sent
    assert first.value == value
    assert acked == 1
    assert (second.key, second.value) == (None, b"")
    meta = parse_headers(second.headers)
    assert meta.truncated == ("value", "key", "headers:1")
    assert meta.original_value_bytes == 300_000
    assert meta.foreign == ()
    assert _size(second) < 8192


async def test_a_producer_refusal_sends_the_minimal_dead_letter() -> None:
    """aiokafka's max_request_size refusal, raised by send() itself, is handled the same."""
    producer, acked = await _letter_sent(value=b"v" * 300_000, script=["producer"])
    [sent] = producer.sent
    assert acked == 0
    assert parse_headers(sent.headers).truncated == ("value", "key")


async def test_a_refused_minimal_dead_letter_propagates() -> None:
    """When the minimal form is refused too, the error reaches the caller."""
    with pytest.raises(MessageSizeTooLargeError):
        await _letter_sent(script=["broker", "broker"])


async def test_review_copies_are_cut_down_the_same_way() -> None:
    """A review copy over the limit goes to the review topic with its value described."""
    producer, _ = await _letter_sent(value=b"v" * 1_000_000, target="review")
    [sent] = producer.sent
    assert sent.topic == KafkaSettings().review_topic
    assert parse_headers(sent.headers).value_cut


async def test_a_smaller_topic_limit_wins_for_dead_letters() -> None:
    """A known max.message.bytes of the dead-letter topic below the setting is the limit."""
    dlt = KafkaSettings().dead_letter_topic
    producer, _ = await _letter_sent(value=b"v" * 70_000, topic_limits={dlt: 65_536})
    [sent] = producer.sent
    assert _size(sent) <= 65_536
    assert parse_headers(sent.headers).value_cut


def test_parse_reads_garbled_cut_descriptions_as_missing() -> None:
    """Unreadable sizes and digests of a cut dead letter give None, never an error."""
    meta = parse_headers(
        [
            ("pa.original.value.bytes", b"lots"),
            ("pa.original.value.sha256", b"not-a-digest"),
            ("pa.original.key.bytes", b"\xff"),
            ("pa.truncated", b" value, ,headers:x "),
        ]
    )
    assert (meta.original_value_bytes, meta.original_value_sha256) == (None, None)
    assert meta.original_key_bytes is None
    assert meta.truncated == ("value", "headers:x")
    assert meta.value_cut


# --- reading dead letters and selecting them --------------------------------------------------


def test_read_dead_letter_decodes_commands_and_names_undecodable_values(
    codec: AvroCodec,
) -> None:
    """A command value is decoded; other values carry the decoder's reason code."""
    assert letter(codec).account == ACCOUNT
    assert letter(codec).masked_account == "************2345"
    for value, reason in [
        (b"", "EMPTY_RECORD"),
        (b"plain text", "UNKNOWN_FRAMING"),
        (b"\xc3\x01" + b"\x00" * 8 + b"body", "UNKNOWN_SCHEMA"),
    ]:
        dead = letter(codec, value=value)
        assert dead.command is None
        assert dead.undecodable == reason
        assert dead.masked_account == "undecodable"


def test_selection_by_reason(codec: AvroCodec) -> None:
    """--reason keeps only the listed reason codes; no reason given keeps everything."""
    dead = letter(codec, reason="UNAUTHORIZED")
    assert Selection().matches(dead)
    assert Selection(reasons=frozenset({"UNAUTHORIZED", "EXPIRED"})).matches(dead)
    assert not Selection(reasons=frozenset({"PAS_UNAVAILABLE"})).matches(dead)


def test_selection_by_time_window_uses_the_last_failure(codec: AvroCodec) -> None:
    """--since is inclusive and --until exclusive, on pa.failure.last, else on the dead
    letter's own timestamp."""
    dead = letter(codec, failed_at=T0)
    assert Selection(since_ms=T0, until_ms=T0 + 1).matches(dead)
    assert not Selection(since_ms=T0 + 1).matches(dead)
    assert not Selection(until_ms=T0).matches(dead)
    no_time = letter(codec, failed_at=None, timestamp_ms=T0 + 5000)
    assert Selection(since_ms=T0 + 5000).matches(no_time)
    assert not Selection(until_ms=T0 + 5000).matches(no_time)


def test_selection_by_partition_and_offset_range(codec: AvroCodec) -> None:
    """--from-offset and --to-offset include both ends; --partition narrows to one."""
    window = Selection(from_offset=10, to_offset=12)
    offsets = [o for o in range(8, 15) if window.matches(letter(codec, offset=o))]
    assert offsets == [10, 11, 12]
    assert not Selection(partition=1).matches(letter(codec, partition=0))
    assert Selection(partition=1, from_offset=3).matches(letter(codec, partition=1, offset=3))


def test_selection_by_account_matches_decoded_commands_only(codec: AvroCodec) -> None:
    """--account matches the command's bank_account_number; undecodable records never."""
    assert Selection(account=ACCOUNT).matches(letter(codec))
    assert not Selection(account="5123456789012346").matches(letter(codec))
    assert not Selection(account=ACCOUNT).matches(letter(codec, value=b"junk"))


def test_planner_refuses_records_at_the_replay_limit_and_stops_at_the_limit(
    codec: AvroCodec,
) -> None:
    """The loop guard refuses a record replayed max_replays times; --limit stops the plan
    after that many replays; skipped records are counted apart."""
    letters = [
        letter(codec, offset=0, replays=0),
        letter(codec, offset=1, replays=3),
        letter(codec, offset=2, reason="CORRUPT_AVRO"),
        letter(codec, offset=3, replays=2),
        letter(codec, offset=4),
        letter(codec, offset=5),
    ]
    selection = Selection(reasons=frozenset({"PAS_UNAVAILABLE"}))
    limited = ReplayPlanner(selection, max_replays=3, limit=3)
    plan = []
    for dead in letters:  # as ``dlq replay`` drives it: decide, stop once done
        plan.append((dead.offset, limited.decide(dead)))
        if limited.done:
            break
    assert plan == [
        (0, Verdict.REPLAY),
        (1, Verdict.REFUSED),
        (2, Verdict.SKIPPED),
        (3, Verdict.REPLAY),
        (4, Verdict.REPLAY),
    ]
    planner = ReplayPlanner(selection, max_replays=3)
    for dead in letters:
        planner.decide(dead)
    tally = planner.tally
    assert (tally.examined, tally.replayed, tally.refused, tally.skipped) == (6, 4, 1, 1)
    assert tally.matched == 5
    assert not planner.done


def test_a_dead_letter_cut_down_to_fit_is_refused_not_replayed(codec: AvroCodec) -> None:
    """A dead letter whose value was not kept (cut down to fit) is refused, counted apart,
    and never replayed as an empty command."""
    whole = letter(codec, offset=0)
    cut = read_dead_letter(
        codec,
        partition=0,
        offset=1,
        timestamp_ms=T0,
        key=b"acct-1",
        value=None,
        headers=[
            *build(),
            ("pa.original.value.bytes", b"1040000"),
            ("pa.original.value.sha256", b"ab" * 32),
            ("pa.truncated", b"value"),
        ],
    )
    planner = ReplayPlanner(Selection(), max_replays=3)
    assert [planner.decide(whole), planner.decide(cut)] == [Verdict.REPLAY, Verdict.CUT]
    assert (planner.tally.replayed, planner.tally.cut, planner.tally.matched) == (1, 1, 2)


# --- what is printed -------------------------------------------------------------------------


def test_list_line_shows_reason_attempts_replays_and_a_masked_account(codec: AvroCodec) -> None:
    """One list line per record: partition/offset, time, reason, attempts, replays, masked
    account, and never the full number."""
    line = list_line(letter(codec, partition=1, offset=7, replays=2))
    assert line.split() == [
        "1/7",
        "2025-01-01T10:00:00.000Z",
        "PAS_UNAVAILABLE",
        "1",
        "2",
        "************2345",
    ]
    assert "undecodable" in list_line(letter(codec, value=b"junk"))


def test_show_masks_the_account_wherever_it_appears(codec: AvroCodec) -> None:
    """The decoded command shows the masked number in every field that held it."""
    text = "\n".join(describe(letter(codec), "dlt"))
    assert ACCOUNT not in text
    assert '"bank_account_number": "************2345"' in text
    assert "goodwill for ************2345" in text
    assert "pa.failure.last: 1735725600000 (2025-01-01T10:00:00.000Z)" in text
    assert masked_command({"bank_account_number": "12", "x": 12}) == {
        "bank_account_number": "**",
        "x": 12,
    }


def test_show_prints_undecodable_values_as_hex(codec: AvroCodec) -> None:
    """An undecodable value shows its reason and first 64 bytes in hex."""
    value = bytes(range(100, 200))  # no ASCII digits: nothing for show to mask
    text = "\n".join(describe(letter(codec, value=value), "dlt"))
    assert "undecodable (UNKNOWN_FRAMING), 100 bytes" in text
    assert value[:64].hex(" ") in text
    assert value[:65].hex(" ") not in text


def test_summary_explains_that_terminal_commands_are_a_no_op() -> None:
    """The summary counts each outcome and words the already-terminal line as a no-op."""
    tally = Tally(examined=10, replayed=4, skipped=5, refused=1, terminal=2)
    text = "\n".join(summary_lines(tally, dry_run=False, store_note=None, remaining=0, limit=None))
    assert "matched the filters" in text
    assert "refused: replay limit" in text
    assert NO_OP_NOTE in text
    dry = "\n".join(
        summary_lines(tally, dry_run=True, store_note="no store at x", remaining=3, limit=4)
    )
    assert "would be replayed" in dry
    assert "not checked (no store at x)" in dry
    assert "stopped at --limit 4; 3 records left" in dry
    assert "nothing was published" in dry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T10:00:00Z", T0),
        ("2025-01-01T11:00:00+01:00", T0),
        ("2025-01-01T10:00:00", T0),
        ("2025-01-01T10:00:00.250Z", T0 + 250),
    ],
)
def test_parse_time_reads_iso_8601_as_utc_by_default(text: str, expected: int) -> None:
    """--since/--until take ISO-8601 with Z or an offset; a bare time is UTC."""
    assert parse_time(text) == expected


def test_parse_time_rejects_other_text() -> None:
    """A time that is not ISO-8601 is an argument error naming an example."""
    with pytest.raises(argparse.ArgumentTypeError, match="ISO-8601"):
        parse_time("yesterday")


# --- the command line ------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="points-adjuster")
    add_dlq_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dlq", *argv])


def test_the_cli_registers_dlq_with_its_three_actions() -> None:
    """points-adjuster dlq list|show|replay parse through the real CLI parser."""
    args = build_parser().parse_args(["dlq", "replay", "--dry-run", "--reason", "x"])
    assert (args.command, args.dlq_command, args.dry_run) == ("dlq", "replay", True)
    assert build_parser().parse_args(["dlq", "show", "--partition", "0", "--offset", "3"])
    assert build_parser().parse_args(["dlq", "list", "--limit", "5"]).limit == 5


def test_arguments_become_a_selection() -> None:
    """Reasons are upper-cased and repeatable; '--account -' reads the number from stdin."""
    args = _parse(
        ["replay", "--reason", "pas_unavailable", "--reason", "EXPIRED", "--account", "-"]
    )
    selection = selection_from_arguments(args, stdin=io.StringIO(f"{ACCOUNT}\n"))
    assert selection.reasons == {"PAS_UNAVAILABLE", "EXPIRED"}
    assert selection.account == ACCOUNT
    args = _parse(["list", "--since", "2025-01-01T10:00:00Z", "--from-offset", "3"])
    assert selection_from_arguments(args) == Selection(since_ms=T0, from_offset=3)


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "--limit", "0"],
        ["replay", "--rate", "0"],
        ["replay", "--from-offset", "-1"],
        ["list", "--since", "noon"],
        ["show", "--partition", "0"],
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Non-positive limits or rates, negative offsets, bad times and a missing --offset exit 2."""
    with pytest.raises(SystemExit) as exited:
        _parse(argv)
    assert exited.value.code == 2
    capsys.readouterr()


# --- progress and pacing ---------------------------------------------------------------------


def test_render_bar_fills_in_proportion() -> None:
    """The bar shows the share done in cells, then done/total."""
    assert render_bar(512, 1000, width=10) == "[#####.....] 512/1000"
    assert render_bar(0, 0, width=4) == "[####] 0/0"
    assert render_bar(3, 3, width=4) == "[####] 3/3"


def test_progress_bar_off_a_terminal_writes_a_line_per_interval() -> None:
    """With --progress on a pipe, the bar is a plain line at most once per interval, and a
    final line at the end."""
    clock = FakeClock()
    stream = io.StringIO()
    bar = ProgressBar(4, stream, enabled=True, width=4, clock=clock, interval_s=1.0)
    bar.update(1)
    bar.update(2)
    clock.now += 1.0
    bar.update(3)
    bar.finish()
    assert stream.getvalue().splitlines() == ["[#...] 1/4", "[###.] 3/4", "[###.] 3/4"]
    silent = io.StringIO()
    ProgressBar(4, silent, enabled=False).update(1)
    assert silent.getvalue() == ""


async def test_pacer_spaces_items_by_the_rate() -> None:
    """At 4 per second the pacer lets one through at once, then one each 0.25 s."""
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await pacer.wait()
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]
    unlimited = Pacer(None, clock=clock, sleep=clock.sleep)
    await unlimited.wait()
    assert len(clock.slept) == 4


async def test_the_store_is_not_consulted_when_it_cannot_know(tmp_path: Any) -> None:
    """The memory backend and a missing SQLite file give a note instead of a lookup, and no
    empty store is created on the operator's machine."""
    from service.settings import IdempotencySettings, Settings
    from service.tools.dlq.store import open_store_lookup

    memory = Settings(idempotency=IdempotencySettings(backend="memory"))
    assert await open_store_lookup(memory) == (
        None,
        "the memory backend keeps nothing between processes",
    )
    path = tmp_path / "absent.sqlite3"
    missing = Settings(idempotency=IdempotencySettings(backend="sqlite", sqlite_path=path))
    lookup, note = await open_store_lookup(missing)
    assert lookup is None
    assert note == f"no store at {path}"
    assert not path.exists()
