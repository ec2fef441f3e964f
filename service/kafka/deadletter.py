"""Dead letters: the original record, unchanged when it fits, with typed ``pa.*`` headers.

A dead letter carries the failed record's key and value byte for byte, so replaying it
re-publishes exactly what the producer sent. What went wrong travels in headers, each a UTF-8
string (integers in decimal, timestamps in epoch milliseconds):

============================  ==========================================================
``pa.original.topic``         topic the record was read from
``pa.original.partition``     its partition
``pa.original.offset``        its offset
``pa.original.timestamp``     its record timestamp
``pa.consumer.group``         the consumer group that gave up on it
``pa.error.class``            e.g. ``UndecodableRecordError``, ``RetriesExhausted``
``pa.error.reason``           a reason code, e.g. ``CORRUPT_AVRO``, ``PAS_UNAVAILABLE``
``pa.error.detail``           short text, sanitized (long digit runs and tokens masked)
``pa.attempts``               how many times it was tried
``pa.failure.first``          time of the first failure
``pa.failure.last``           time of the last failure
``pa.service.version``        version of the service that wrote the dead letter
``pa.replay.id``              (replayed records) the replay run that re-published it
``pa.replay.count``           (replayed records) how many times it has been replayed
``pa.original.value.bytes``   (value cut) the original value's length
``pa.original.value.sha256``  (value cut) its SHA-256, 64 hex digits
``pa.original.key.bytes``     (key cut) the original key's length
``pa.original.key.sha256``    (key cut) its SHA-256, 64 hex digits
``pa.truncated``              (something cut) what: ``value``, ``key``, ``headers:N``
============================  ==========================================================

Headers of the original record that are not ``pa.*`` (tracing, for instance) are carried over
unchanged, in order, while they fit in ``TOTAL_CAP_BYTES - MIN_METADATA_BYTES``; the first
that does not fit and all after it are dropped and counted (``headers:N`` in
``pa.truncated``). Each ``pa.*`` value is capped at ``VALUE_CAP_BYTES`` (cut on a UTF-8
boundary, ending in ``…``), and all headers of the dead letter together, names included, at
``TOTAL_CAP_BYTES``: the detail is shortened, then dropped, before any other ``pa.*`` value is
cut, and the ``pa.*`` headers always keep at least ``MIN_METADATA_BYTES``.

**Records too large to copy.** When the whole dead letter (key + value + headers, sized as in
:mod:`service.kafka.sizing`) would exceed ``PA_KAFKA__MAX_MESSAGE_BYTES`` (or the topic's
``max.message.bytes``, when known and smaller), the first of these that fits goes out: the
value cut, the key cut, both cut. A cut part is sent empty (``None``; the value is ``b""``
when the key is absent too, as aiokafka refuses a record with neither) and described by its
``pa.original.*.bytes`` and ``.sha256`` headers. Such a dead letter cannot be replayed: the
bytes are gone (:attr:`DeadLetterMeta.value_cut`). If the producer or the broker still
refuses the dead letter as too large, the minimal form (key and value cut, no carried header)
is sent once. Reading (:func:`parse_headers`) never raises.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from service.domain.command import mask_account
from service.errors import UndecodableRecordError
from service.kafka.sizing import (
    TRUNCATED,
    OutgoingRecord,
    RecordSender,
    cut,
    effective_limit,
    headers_size,
    send_fitting,
    sha256_hex,
)
from service.settings import KafkaSettings

log = structlog.get_logger("service.kafka")

PREFIX = "pa."
ORIGINAL_TOPIC = "pa.original.topic"
ORIGINAL_PARTITION = "pa.original.partition"
ORIGINAL_OFFSET = "pa.original.offset"
ORIGINAL_TIMESTAMP = "pa.original.timestamp"
CONSUMER_GROUP = "pa.consumer.group"
ERROR_CLASS = "pa.error.class"
ERROR_REASON = "pa.error.reason"
ERROR_DETAIL = "pa.error.detail"
ATTEMPTS = "pa.attempts"
FAILURE_FIRST = "pa.failure.first"
FAILURE_LAST = "pa.failure.last"
SERVICE_VERSION = "pa.service.version"
REPLAY_ID = "pa.replay.id"
REPLAY_COUNT = "pa.replay.count"
ORIGINAL_VALUE_BYTES = "pa.original.value.bytes"
ORIGINAL_VALUE_SHA256 = "pa.original.value.sha256"
ORIGINAL_KEY_BYTES = "pa.original.key.bytes"
ORIGINAL_KEY_SHA256 = "pa.original.key.sha256"

VALUE_CAP_BYTES = 512
TOTAL_CAP_BYTES = 4096
MIN_METADATA_BYTES = 1024
CARRIED_CAP_BYTES = TOTAL_CAP_BYTES - MIN_METADATA_BYTES
"""Room for the carried (non-``pa.*``) headers, names included."""
# Below this many bytes a detail says nothing useful: it is dropped instead.
_MIN_DETAIL_BYTES = 16
# When the total is over the cap, these are cut in this order (integers never are).
_SHRINK_ORDER = (
    ERROR_DETAIL,
    CONSUMER_GROUP,
    ORIGINAL_TOPIC,
    ERROR_CLASS,
    SERVICE_VERSION,
    REPLAY_ID,
    ERROR_REASON,
)

# A token-like run (JWE segment, base64 key material, bearer token): never worth keeping.
_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{40,}")
# Twelve or more digits, optionally grouped by single spaces or dashes (card/account numbers).
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){11,}(?![0-9])")
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Failure:
    """Why a record is dead-lettered, and how hard we tried."""

    error_class: str
    reason: str
    detail: str
    attempts: int
    first_failure_ms: int
    last_failure_ms: int

    @classmethod
    def undecodable(cls, error: UndecodableRecordError, at_ms: int) -> Failure:
        """The failure of a record that could not be decoded (tried once)."""
        return cls(type(error).__name__, error.reason, error.detail, 1, at_ms, at_ms)


@dataclass(frozen=True)
class ReplayInfo:
    """Which replay run re-published a record, and how many replays it has been through."""

    replay_id: str
    count: int


@dataclass(frozen=True)
class DeadLetterMeta:
    """The ``pa.*`` headers of a dead letter, read leniently: ``None`` when missing or garbled."""

    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp_ms: int | None = None
    consumer_group: str | None = None
    error_class: str | None = None
    reason: str | None = None
    detail: str | None = None
    attempts: int | None = None
    first_failure_ms: int | None = None
    last_failure_ms: int | None = None
    service_version: str | None = None
    replay_id: str | None = None
    replay_count: int = 0
    foreign: tuple[tuple[str, bytes], ...] = field(default=())
    """Headers that are not ``pa.*``, in order (carried over from the original record)."""
    original_value_bytes: int | None = None
    original_value_sha256: str | None = None
    original_key_bytes: int | None = None
    original_key_sha256: str | None = None
    truncated: tuple[str, ...] = ()
    """What was cut from the dead letter (``pa.truncated``): ``value``, ``key``, ``headers:N``."""

    @property
    def value_cut(self) -> bool:
        """The original value is not in the dead letter (too large): it cannot be replayed."""
        return "value" in self.truncated

    @property
    def key_cut(self) -> bool:
        """The original key is not in the dead letter (too large)."""
        return "key" in self.truncated


def sanitize(text: str) -> str:
    """One line of printable text without token-like runs or long digit runs."""
    flat = "".join(
        " " if unicodedata.category(char)[0] in "CZ" and char != " " else char for char in text
    )
    flat = _TOKEN.sub(_redact_token, flat)
    return _DIGIT_RUN.sub(lambda match: mask_account(re.sub(r"[ -]", "", match[0])), flat)


def _redact_token(match: re.Match[str]) -> str:
    run = match[0]
    mixed = any(char.isdigit() for char in run) and any(char.isalpha() for char in run)
    return "[redacted]" if mixed else run


def dead_letter_headers(
    source_topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    group: str,
    failure: Failure,
    version: str,
    replay: ReplayInfo | None = None,
    *,
    total_cap: int = TOTAL_CAP_BYTES,
) -> list[tuple[str, bytes]]:
    """The ``pa.*`` headers of a dead letter, each value capped, all within ``total_cap``
    bytes (names and values) as far as cutting text values can get them."""
    texts: list[tuple[str, str]] = [
        (ORIGINAL_TOPIC, source_topic),
        (ORIGINAL_PARTITION, str(partition)),
        (ORIGINAL_OFFSET, str(offset)),
        (ORIGINAL_TIMESTAMP, str(timestamp_ms)),
        (CONSUMER_GROUP, group),
        (ERROR_CLASS, sanitize(failure.error_class)),
        (ERROR_REASON, sanitize(failure.reason)),
        (ERROR_DETAIL, sanitize(failure.detail)),
        (ATTEMPTS, str(failure.attempts)),
        (FAILURE_FIRST, str(failure.first_failure_ms)),
        (FAILURE_LAST, str(failure.last_failure_ms)),
        (SERVICE_VERSION, version),
    ]
    if replay is not None:
        texts += [(REPLAY_ID, replay.replay_id), (REPLAY_COUNT, str(replay.count))]
    values = {name: cut(text, VALUE_CAP_BYTES) for name, text in texts}
    _fit_total(values, total_cap)
    return [(name, values[name]) for name, _ in texts if name in values]


def _fit_total(values: dict[str, bytes], total_cap: int) -> None:
    """Shorten (then, for the detail, drop) values until the total is within the cap."""
    for name in _SHRINK_ORDER:
        over = headers_size(values.items()) - total_cap
        if over <= 0:
            return
        if name not in values:
            continue
        value = values[name]
        room = max(len(value) - over, 0)
        if name == ERROR_DETAIL and room < _MIN_DETAIL_BYTES:
            del values[name]
            continue
        values[name] = cut(value.decode("utf-8", "replace"), room)


def _text(value: object) -> str | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return None


def _digest(value: object) -> str | None:
    text = _text(value)
    return text if text is not None and _SHA256.fullmatch(text) else None


def _names(value: object) -> tuple[str, ...]:
    text = _text(value)
    if not text:
        return ()
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _integer(value: object) -> int | None:
    text = _text(value)
    if text is None or not _INTEGER.fullmatch(text.strip()):
        return None
    return int(text.strip())


def header_pairs(headers: object) -> list[tuple[str, bytes]]:
    """Well-formed ``(str, bytes)`` pairs of whatever was passed; the rest is ignored."""
    pairs: list[tuple[str, bytes]] = []
    if not isinstance(headers, Iterable):
        return pairs
    try:
        for item in headers:
            if not isinstance(item, tuple | list) or len(item) != 2:
                continue
            name, value = item
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if not isinstance(name, str):
                continue
            if value is None:
                value = b""
            if isinstance(value, bytes | bytearray | memoryview):
                pairs.append((name, bytes(value)))
    except Exception:  # a broken iterable: keep what was read
        return pairs
    return pairs


def parse_headers(headers: object) -> DeadLetterMeta:
    """Read the ``pa.*`` headers; the last occurrence of a name wins. Never raises."""
    pairs = header_pairs(headers)
    found = {name: value for name, value in pairs if name.startswith(PREFIX)}
    count = _integer(found.get(REPLAY_COUNT))
    return DeadLetterMeta(
        original_topic=_text(found.get(ORIGINAL_TOPIC)),
        original_partition=_integer(found.get(ORIGINAL_PARTITION)),
        original_offset=_integer(found.get(ORIGINAL_OFFSET)),
        original_timestamp_ms=_integer(found.get(ORIGINAL_TIMESTAMP)),
        consumer_group=_text(found.get(CONSUMER_GROUP)),
        error_class=_text(found.get(ERROR_CLASS)),
        reason=_text(found.get(ERROR_REASON)),
        detail=_text(found.get(ERROR_DETAIL)),
        attempts=_integer(found.get(ATTEMPTS)),
        first_failure_ms=_integer(found.get(FAILURE_FIRST)),
        last_failure_ms=_integer(found.get(FAILURE_LAST)),
        service_version=_text(found.get(SERVICE_VERSION)),
        replay_id=_text(found.get(REPLAY_ID)),
        replay_count=max(count or 0, 0),
        foreign=tuple((name, value) for name, value in pairs if not name.startswith(PREFIX)),
        original_value_bytes=_integer(found.get(ORIGINAL_VALUE_BYTES)),
        original_value_sha256=_digest(found.get(ORIGINAL_VALUE_SHA256)),
        original_key_bytes=_integer(found.get(ORIGINAL_KEY_BYTES)),
        original_key_sha256=_digest(found.get(ORIGINAL_KEY_SHA256)),
        truncated=_names(found.get(TRUNCATED)),
    )


def replay_count(headers: object) -> int:
    """How many times a record has been replayed (0 when it never was, or unreadable)."""
    return parse_headers(headers).replay_count


def replay_info(headers: object) -> ReplayInfo | None:
    """The replay id and count a record carries, if it came from a replay."""
    meta = parse_headers(headers)
    if meta.replay_id is None and meta.replay_count == 0:
        return None
    return ReplayInfo(meta.replay_id or "", meta.replay_count)


def replayed_headers(headers: object, replay_id: str) -> list[tuple[str, bytes]]:
    """Headers of a record re-published by a replay run: the original's non-``pa.*``
    headers, then ``pa.replay.id`` and ``pa.replay.count`` (the previous count + 1)."""
    meta = parse_headers(headers)
    return [
        *meta.foreign,
        (REPLAY_ID, cut(replay_id, VALUE_CAP_BYTES)),
        (REPLAY_COUNT, str(meta.replay_count + 1).encode("ascii")),
    ]


class DeadLetterPublisher:
    """Sends failed records to the dead-letter (or review) topic with metadata, unchanged when
    they fit, cut down when they do not."""

    def __init__(
        self,
        producer: RecordSender,
        settings: KafkaSettings,
        group_id: str,
        version: str,
        *,
        topic_limits: Mapping[str, int] | None = None,
    ) -> None:
        """``topic_limits``: known ``max.message.bytes`` of topics; a smaller one wins."""
        self._producer = producer
        self._topics = {"dlt": settings.dead_letter_topic, "review": settings.review_topic}
        self._group_id = group_id
        self._version = version
        self._max_message_bytes = settings.max_message_bytes
        self._topic_limits = dict(topic_limits or {})

    async def send(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        failure: Failure,
        target: Literal["dlt", "review"] = "dlt",
    ) -> asyncio.Future[Any]:
        """Queue the dead letter; the returned future resolves when the broker acknowledged
        the record that finally went out.

        ``topic``/``partition``/``offset``/``timestamp_ms``/``headers`` are those of the
        failed record; its ``pa.replay.*`` headers and its non-``pa.*`` headers (as many as
        fit) are carried over, any other ``pa.*`` header is replaced by this failure's.
        """
        destination = self._topics[target]

        def metadata(total_cap: int) -> list[tuple[str, bytes]]:
            return dead_letter_headers(
                topic,
                partition,
                offset,
                timestamp_ms,
                self._group_id,
                failure,
                self._version,
                replay_info(headers),
                total_cap=total_cap,
            )

        letter = _Letter(destination, key, value, parse_headers(headers).foreign, metadata)
        limit = effective_limit(self._max_message_bytes, destination, self._topic_limits)
        record, minimal = letter.fitting(limit)
        if record.size > limit or TRUNCATED in dict(record.headers):
            log.warning(
                "dead_letter.cut_down" if record.size <= limit else "dead_letter.cannot_fit",
                target=target,
                source_topic=topic,
                source_partition=partition,
                source_offset=offset,
                cut=dict(record.headers).get(TRUNCATED, b"").decode("utf-8"),
                size=letter.whole().size,
                sent_size=record.size,
                limit=limit,
            )
        return await send_fitting(self._producer, record, minimal)


class _Letter:
    """One dead letter and its cut-down forms."""

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        foreign: Sequence[tuple[str, bytes]],
        metadata: Callable[[int], list[tuple[str, bytes]]],
    ) -> None:
        self._topic = topic
        self._key = key
        self._value = value
        self._foreign = tuple(foreign)
        self._carried = _carried(self._foreign)
        self._metadata = metadata

    def fitting(self, limit: int) -> tuple[OutgoingRecord, Callable[[], OutgoingRecord] | None]:
        """The record to send under ``limit``: whole, else with the value cut, the key cut,
        both; and the minimal form to fall back on (``None`` when it is the record itself)."""
        whole = self.whole()
        if whole.size <= limit:
            return whole, self.minimal
        minimal = self.minimal()
        for cut_key, cut_value in ((False, True), (True, False), (True, True)):
            record = self.build(cut_key=cut_key, cut_value=cut_value)
            if record.size <= limit:
                return record, (None if record == minimal else self.minimal)
        return minimal, None

    def whole(self) -> OutgoingRecord:
        return self.build()

    def minimal(self) -> OutgoingRecord:
        """Key and value cut, no carried header: the smallest dead letter of this record."""
        return self.build(cut_key=True, cut_value=True, carried=())

    def build(
        self,
        *,
        cut_key: bool = False,
        cut_value: bool = False,
        carried: tuple[tuple[str, bytes], ...] | None = None,
    ) -> OutgoingRecord:
        kept = self._carried if carried is None else carried
        described: list[tuple[str, bytes]] = []
        cut_names: list[str] = []
        key, value = self._key, self._value
        if cut_value and value:
            described += _described(ORIGINAL_VALUE_BYTES, ORIGINAL_VALUE_SHA256, value)
            cut_names.append("value")
            value = None
        if cut_key and key:
            described += _described(ORIGINAL_KEY_BYTES, ORIGINAL_KEY_SHA256, key)
            cut_names.append("key")
            key = None
        dropped = len(self._foreign) - len(kept)
        if dropped:
            cut_names.append(f"headers:{dropped}")
        if cut_names:
            described.append((TRUNCATED, ",".join(cut_names).encode("ascii")))
        budget = TOTAL_CAP_BYTES - headers_size(kept) - headers_size(described)
        headers = (*kept, *self._metadata(budget), *described)
        if key is None and value is None:
            value = b""  # aiokafka refuses a record with neither key nor value
        return OutgoingRecord(self._topic, key, value, headers)


def _carried(foreign: Sequence[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """The leading carried headers that fit in ``CARRIED_CAP_BYTES`` together."""
    kept: list[tuple[str, bytes]] = []
    used = 0
    for name, value in foreign:
        used += headers_size([(name, value)])
        if used > CARRIED_CAP_BYTES:
            break
        kept.append((name, value))
    return tuple(kept)


def _described(size_name: str, digest_name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [
        (size_name, str(len(data)).encode("ascii")),
        (digest_name, sha256_hex(data).encode("ascii")),
    ]
