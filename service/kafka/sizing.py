"""Fitting a record under a byte limit.

Both publishers (outcome events, dead letters) measure what they are about to send and, when
it would not fit, send a *cut-down* form instead: the large parts replaced by a short marker
of their size and SHA-256 (:func:`marker`, e.g. ``<cut 614400 bytes sha256:ab12cd34ef56>``)
and the header ``pa.truncated`` naming what was cut. A record that cannot be published must
never stop its partition, so there is always a form small enough.

**Size of a record** (:func:`record_size`): key + value + each header's name (UTF-8) and
value + ``RECORD_OVERHEAD_BYTES``. The overhead allowance covers what Kafka adds around
those bytes: the record batch header (61 bytes, one record per batch in the worst case), the
record's attributes, timestamp and offset deltas and its length varints (up to about 20
bytes), and two length varints per header (the ``pa.*`` set is under 20 headers; carried
headers, 3 KiB at most together, are usually a handful). Compare
it with ``PA_KAFKA__MAX_MESSAGE_BYTES``, itself kept at or under the topics'
``max.message.bytes`` (which Kafka applies to the whole batch).

**Refusals.** The limit may still be too high for a topic: aiokafka's producer refuses a
record over its ``max_request_size`` from ``send()`` itself, and the broker refuses one over
the topic's ``max.message.bytes`` by failing the delivery future; both raise
``MessageSizeTooLargeError`` (a batch over the segment size: ``RecordListTooLargeError``).
:func:`send_fitting` then sends the minimal form once; only when that fails too does the
error reach the caller.

Caveat (aiokafka 0.14): after the *broker* refused a batch, an idempotent producer does not
rewind that partition's sequence number (the Java producer does), so once it has written to
that partition, every later record it sends there, the minimal form included, fails with
``OutOfOrderSequenceNumber`` until the producer is restarted
(``tests/integration/test_publish_limits.py`` shows it). With the service's idempotent
producer the broker must therefore never see a record over the topic's limit: give the
publishers each topic's ``max.message.bytes`` (their ``topic_limits`` argument), which
:func:`effective_limit` takes into account. The producer-side refusal has no such effect.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

log = structlog.get_logger("service.kafka")

RECORD_OVERHEAD_BYTES = 512
"""Allowance for Kafka's framing of one record (see the module docstring)."""
TRUNCATED = "pa.truncated"
"""Header naming what a cut-down record lost, comma-separated (e.g. ``correlation_id,metadata``
on an event, ``value,headers:3`` on a dead letter). Absent on a record sent whole."""
DIGEST_CHARS = 12
"""Hex digits of SHA-256 shown in a marker."""
ELLIPSIS = "…"
_ELLIPSIS_BYTES = ELLIPSIS.encode("utf-8")

TOO_LARGE: tuple[type[Exception], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)
"""What aiokafka raises for a record (or batch) that the producer or the broker finds too large."""


class RecordSender(Protocol):
    """What the publishers need of a producer (``AIOKafkaProducer`` fits)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


@dataclass(frozen=True)
class OutgoingRecord:
    """One record as it will be handed to the producer."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        """Its size as counted against a limit (:func:`record_size`)."""
        return record_size(self.key, self.value, self.headers)


def headers_size(headers: Iterable[tuple[str, bytes]]) -> int:
    """Bytes of header names (UTF-8) and values together."""
    return sum(len(name.encode("utf-8")) + len(value) for name, value in headers)


def record_size(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] = ()
) -> int:
    """Key + value + header names and values + ``RECORD_OVERHEAD_BYTES``."""
    return len(key or b"") + len(value or b"") + headers_size(headers) + RECORD_OVERHEAD_BYTES


def effective_limit(max_message_bytes: int, topic: str, topic_limits: Mapping[str, int]) -> int:
    """The smaller of our own limit and the topic's ``max.message.bytes``, when known."""
    known = topic_limits.get(topic)
    return max_message_bytes if known is None else min(max_message_bytes, known)


def sha256_hex(data: bytes) -> str:
    """The full SHA-256 of ``data``, in lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def marker(data: bytes) -> str:
    """What stands for a cut value: ``<cut N bytes sha256:XXXXXXXXXXXX>``."""
    return f"<cut {len(data)} bytes sha256:{sha256_hex(data)[:DIGEST_CHARS]}>"


def marker_size(byte_count: int) -> int:
    """Length of the marker of a value of ``byte_count`` bytes (without hashing it)."""
    return len(f"<cut {byte_count} bytes sha256:>") + DIGEST_CHARS


def entries_marker(count: int, data: bytes) -> str:
    """What stands for a cut collection of ``count`` entries serialized as ``data``."""
    return f"<cut {count} entries, {len(data)} bytes sha256:{sha256_hex(data)[:DIGEST_CHARS]}>"


def cut(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 in at most ``limit`` bytes, cut on a character boundary with ``…``."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    if limit < len(_ELLIPSIS_BYTES):
        return b""
    head = data[: limit - len(_ELLIPSIS_BYTES)].decode("utf-8", "ignore").encode("utf-8")
    return head + _ELLIPSIS_BYTES


async def send_fitting(
    producer: RecordSender,
    record: OutgoingRecord,
    minimal: Callable[[], OutgoingRecord] | None,
) -> asyncio.Future[Any]:
    """Queue ``record``; the returned future resolves when the broker acknowledged the record
    that finally went out.

    When the producer or the broker refuses ``record`` as too large, ``minimal()`` is sent
    once instead (``None``: ``record`` is already the smallest form, nothing else to try);
    when that is refused too, or fails otherwise, the error propagates.
    """
    try:
        delivery = await _send(producer, record)
    except TOO_LARGE as exc:
        if minimal is None:
            raise
        return await _send(producer, _fallback(record, minimal, exc, "producer"))
    if minimal is None:
        return delivery
    return asyncio.ensure_future(_acknowledged(producer, record, delivery, minimal))


async def _acknowledged(
    producer: RecordSender,
    record: OutgoingRecord,
    delivery: asyncio.Future[Any],
    minimal: Callable[[], OutgoingRecord],
) -> Any:
    try:
        return await delivery
    except TOO_LARGE as exc:
        return await (await _send(producer, _fallback(record, minimal, exc, "broker")))


def _fallback(
    record: OutgoingRecord,
    minimal: Callable[[], OutgoingRecord],
    error: Exception,
    refused_by: str,
) -> OutgoingRecord:
    smaller = minimal()
    log.warning(
        "publish.refused_too_large",
        topic=record.topic,
        refused_by=refused_by,
        error=type(error).__name__,
        size=record.size,
        minimal_size=smaller.size,
    )
    return smaller


async def _send(producer: RecordSender, record: OutgoingRecord) -> asyncio.Future[Any]:
    return await producer.send(
        record.topic, value=record.value, key=record.key, headers=list(record.headers)
    )
