"""Dead letters: the original record, unchanged, with typed ``pa.*`` metadata headers.

A dead letter carries the failed record's key and value byte for byte, so replaying it
re-publishes exactly what the producer sent. What went wrong travels in headers, each a UTF-8
string (integers in decimal, timestamps in epoch milliseconds):

==========================  ============================================================
``pa.original.topic``       topic the record was read from
``pa.original.partition``   its partition
``pa.original.offset``      its offset
``pa.original.timestamp``   its record timestamp
``pa.consumer.group``       the consumer group that gave up on it
``pa.error.class``          e.g. ``UndecodableRecordError``, ``RetriesExhausted``
``pa.error.reason``         a reason code, e.g. ``CORRUPT_AVRO``, ``PAS_UNAVAILABLE``
``pa.error.detail``         short text, sanitized (long digit runs and tokens masked)
``pa.attempts``             how many times it was tried
``pa.failure.first``        time of the first failure
``pa.failure.last``         time of the last failure
``pa.service.version``      version of the service that wrote the dead letter
``pa.replay.id``            (replayed records) the replay run that re-published it
``pa.replay.count``         (replayed records) how many times it has been replayed
==========================  ============================================================

Headers of the original record that are not ``pa.*`` (tracing, for instance) are carried
over unchanged. Each ``pa.*`` value is capped at ``VALUE_CAP_BYTES`` (cut on a UTF-8 boundary,
ending in ``…``), and all headers of the dead letter together, names included, at
``TOTAL_CAP_BYTES``: the detail is shortened, then dropped, before any other ``pa.*`` value is
cut; carried headers are never cut, and the ``pa.*`` headers keep at least
``MIN_METADATA_BYTES`` whatever was carried. Reading (:func:`parse_headers`) never raises.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from service.domain.command import mask_account
from service.errors import UndecodableRecordError
from service.settings import KafkaSettings

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

VALUE_CAP_BYTES = 512
TOTAL_CAP_BYTES = 4096
MIN_METADATA_BYTES = 1024
MARKER = "…"
_MARKER_BYTES = MARKER.encode("utf-8")
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


def cut(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 in at most ``limit`` bytes, cut on a character boundary with ``…``."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    if limit < len(_MARKER_BYTES):
        return b""
    head = data[: limit - len(_MARKER_BYTES)].decode("utf-8", "ignore").encode("utf-8")
    return head + _MARKER_BYTES


def headers_size(headers: Iterable[tuple[str, bytes]]) -> int:
    """Bytes of header names and values together."""
    return sum(len(name.encode("utf-8")) + len(value) for name, value in headers)


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


class RecordSender(Protocol):
    """What the publisher needs of a producer (``AIOKafkaProducer`` fits)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


class DeadLetterPublisher:
    """Sends failed records, unchanged, to the dead-letter (or review) topic with metadata."""

    def __init__(
        self, producer: RecordSender, settings: KafkaSettings, group_id: str, version: str
    ) -> None:
        self._producer = producer
        self._topics = {"dlt": settings.dead_letter_topic, "review": settings.review_topic}
        self._group_id = group_id
        self._version = version

    def topic(self, target: Literal["dlt", "review"] = "dlt") -> str:
        return self._topics[target]

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
        """Queue the dead letter; the returned future resolves when the broker acknowledged it.

        ``topic``/``partition``/``offset``/``timestamp_ms``/``headers`` are those of the
        failed record; its ``pa.replay.*`` headers and its non-``pa.*`` headers are carried
        over, any other ``pa.*`` header is replaced by this failure's.
        """
        incoming = parse_headers(headers)
        budget = max(TOTAL_CAP_BYTES - headers_size(incoming.foreign), MIN_METADATA_BYTES)
        metadata = dead_letter_headers(
            topic,
            partition,
            offset,
            timestamp_ms,
            self._group_id,
            failure,
            self._version,
            replay_info(headers),
            total_cap=budget,
        )
        future: asyncio.Future[Any] = await self._producer.send(
            self._topics[target],
            value=value,
            key=key,
            headers=[*incoming.foreign, *metadata],
        )
        return future
