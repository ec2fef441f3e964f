"""Publishing outcome events: Avro single-object encoded, keyed by account reference.

An event goes out whole when it fits under the limit (``PA_KAFKA__MAX_MESSAGE_BYTES``, or the
topic's own ``max.message.bytes`` when smaller and known; sizes as in
:mod:`service.kafka.sizing`). Otherwise it goes out *cut down*, losing as little as it can:

- **texts** first, those that save most first, each replaced by
  ``<cut N bytes sha256:XXXXXXXXXXXX>`` (N bytes of UTF-8, the first 12 hex digits of their
  SHA-256): ``correlation_id``, ``requested_by``, ``description``, ``pas_correlation_id``, the
  keys and values of ``metadata``, the texts of ``errors``;
- when cutting texts is not enough, **collections** (the larger of ``metadata`` and ``errors``,
  then both; never one under ``COLLAPSE_MIN_BYTES``): ``metadata`` becomes
  ``{"pa.cut": "<cut N entries, M bytes sha256:...>"}``, ``errors`` one entry of reason code
  ``ERRORS_CUT`` with that marker as its description (M bytes and the digest are those of the
  collection as compact JSON with sorted keys, so a holder of the command can check them);
- last, **identity** texts over ``IDENTITY_GUARD_BYTES`` (and such a record key): only
  garbage from an invalid command is that long (idempotency keys are at most 128
  characters), and nothing else makes such an event fit.

Identity fields (``event_id``, ``idempotency_key``, ``account_ref``, ``account_masked``, the
points, ``reason_code``, ``source``...) are otherwise never cut. A cut-down event carries the
header ``pa.truncated``: the fields cut, comma-separated, in schema order (``key`` and
``source.topic`` included). The *minimal* form (every text cut, large collections collapsed,
oversized identities cut) is under 12 KiB whatever the command held, below the smallest
allowed limit (16 KiB): a completed event always goes out. If the producer or the broker
still refuses an event as too large, the minimal form is sent once
(:func:`service.kafka.sizing.send_fitting`).

The ``correlation_id`` header repeats the event's correlation id, capped at
``CORRELATION_HEADER_BYTES`` (cut on a UTF-8 boundary, ending in ``…``); capping it alone
does not make an event cut down.

The ``traceparent`` header (and ``tracestate``, when the command had a valid one) names the
span that decided the outcome (``Publish.trace``): the command's trace, a span of our own.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.codec.outcome import outcome_record
from service.domain.decisions import Publish
from service.kafka.sizing import (
    TRUNCATED,
    OutgoingRecord,
    RecordSender,
    cut,
    effective_limit,
    entries_marker,
    marker,
    marker_size,
    send_fitting,
)
from service.settings import KafkaSettings

log = structlog.get_logger("service.kafka")

CORRELATION_HEADER_BYTES = 256
IDENTITY_GUARD_BYTES = 512
COLLAPSE_MIN_BYTES = 256
"""A collection smaller than this (as compact JSON) is never collapsed: it would not save."""
COLLAPSED_METADATA_KEY = "pa.cut"
COLLAPSED_ERRORS_REASON = "ERRORS_CUT"

CUTTABLE_FIELDS = ("correlation_id", "requested_by", "description", "pas_correlation_id")
IDENTITY_FIELDS = (
    "event_id",
    "idempotency_key",
    "account_ref",
    "account_masked",
    "adjustment_type_code",
    "reason_code",
    "service_version",
)
_ERROR_TEXTS = ("source", "reason_code", "description", "field")
_COLLECTIONS = ("metadata", "errors")
# The order of the names in pa.truncated (the schemas' field order).
_NAME_ORDER = (
    "key",
    "event_id",
    "idempotency_key",
    "correlation_id",
    "requested_by",
    "account_ref",
    "account_masked",
    "adjustment_type_code",
    "reason_code",
    "description",
    "errors",
    "pas_correlation_id",
    "source.topic",
    "metadata",
    "service_version",
)

# Where a cut text sits: ("field", name, ""), ("meta_key" | "meta_value", key, ""), or
# ("error", index, attribute).
_Where = tuple[str, str, str]


class OutcomePublisher:
    """Sends decisions to the completed or failed topic, cut down when they would not fit."""

    def __init__(
        self,
        producer: RecordSender,
        codec: AvroCodec,
        settings: KafkaSettings,
        *,
        topic_limits: Mapping[str, int] | None = None,
    ) -> None:
        """``topic_limits``: known ``max.message.bytes`` of topics; a smaller one wins."""
        self._producer = producer
        self._codec = codec
        self._topics = {"completed": settings.completed_topic, "failed": settings.failed_topic}
        self._schemas = {"completed": COMPLETED, "failed": FAILED}
        self._max_message_bytes = settings.max_message_bytes
        self._topic_limits = dict(topic_limits or {})

    async def send(self, decision: Publish) -> asyncio.Future[Any]:
        """Queue the event (cut down if need be); the returned future resolves when the broker
        acknowledged the record that finally went out."""
        topic = self._topics[decision.kind]
        event = _Event(self._codec, self._schemas[decision.kind], topic, decision)
        limit = effective_limit(self._max_message_bytes, topic, self._topic_limits)
        record, minimal = event.fitting(limit)
        return await send_fitting(self._producer, record, minimal)


@dataclass(frozen=True)
class _Plan:
    """Which parts of an event to cut."""

    texts: frozenset[_Where] = frozenset()
    collapse: frozenset[str] = frozenset()
    guard: bool = False


@dataclass(frozen=True)
class _Leaf:
    """A text that may be cut: where it is, the field named for it, the bytes cutting saves."""

    where: _Where
    name: str
    saving: int


class _Event:
    """One outcome event and its cut-down forms."""

    def __init__(self, codec: AvroCodec, schema: str, topic: str, decision: Publish) -> None:
        self.codec = codec
        self.schema = schema
        self.topic = topic
        self.decision = decision
        self.payload = outcome_record(
            decision.outcome,
            event_id=decision.event_id,
            source=decision.source,
            duplicate=decision.duplicate,
        )
        """The event as a record of the schema's fields: what the cut-down forms cut."""

    @functools.cached_property
    def _leaves(self) -> list[_Leaf]:
        """The texts that may be cut, those saving most first (computed only when needed)."""
        return sorted(_cuttable_texts(self.payload), key=lambda leaf: -leaf.saving)

    def fitting(self, limit: int) -> tuple[OutgoingRecord, Callable[[], OutgoingRecord] | None]:
        """The record to send under ``limit``, and the minimal form to fall back on (``None``
        when the record is the minimal form already)."""
        whole = self.build(_Plan())
        if whole.size <= limit:
            return whole, self.minimal
        for level in self._levels():
            record = self.build(self._fewest_texts(level, limit))
            if record.size <= limit:
                self._log("outcome.cut_down", whole, record, limit)
                return record, (None if record == self.minimal() else self.minimal)
        record = self.minimal()
        self._log("outcome.cannot_fit", whole, record, limit)
        return record, None

    def minimal(self) -> OutgoingRecord:
        """The smallest form: every text cut, large collections collapsed, oversized
        identities cut."""
        collapse = frozenset(self._large_collections())
        texts = frozenset(leaf.where for leaf in self._leaves if leaf.name not in collapse)
        return self.build(_Plan(texts, collapse, guard=True))

    def build(self, plan: _Plan) -> OutgoingRecord:
        payload, names = _apply(self.payload, plan)
        key = self.decision.record_key
        key_bytes = key.encode("utf-8") if key else None
        if plan.guard and key_bytes is not None and len(key_bytes) > IDENTITY_GUARD_BYTES:
            key_bytes = marker(key_bytes).encode("utf-8")
            names.add("key")
        correlation = str(self.payload.get("correlation_id") or "")
        headers = [
            ("event_type", self.decision.kind.encode("utf-8")),
            ("correlation_id", cut(correlation, CORRELATION_HEADER_BYTES)),
        ]
        if self.decision.trace is not None:
            headers += [
                (name, value.encode("ascii")) for name, value in self.decision.trace.headers()
            ]
        if names:
            listed = ",".join(name for name in _NAME_ORDER if name in names)
            headers.append((TRUNCATED, listed.encode("utf-8")))
        value = self.codec.encode(self.schema, payload)
        return OutgoingRecord(self.topic, key_bytes, value, tuple(headers))

    def _levels(self) -> Iterator[_Plan]:
        """Ever harsher starting points for cutting texts: nothing else cut, then the larger
        collection collapsed, then both; the same again with oversized identities cut."""
        for guard in (False, True):
            collapsed: frozenset[str] = frozenset()
            yield _Plan(frozenset(), collapsed, guard)
            for name in self._large_collections():
                collapsed |= {name}
                yield _Plan(frozenset(), collapsed, guard)

    def _fewest_texts(self, level: _Plan, limit: int) -> _Plan:
        """``level`` plus the texts that save most, until the record fits (sizes computed,
        not encoded: cutting a text saves exactly its Avro size less its marker's)."""
        start = self.build(level)
        listed = _truncated_names(start)
        names = set(listed)
        chosen: set[_Where] = set()
        size = start.size - _truncated_header_size(listed)
        for leaf in self._leaves:
            if size + _truncated_header_size(names) <= limit:
                break
            if leaf.name in level.collapse:
                continue
            chosen.add(leaf.where)
            names.add(leaf.name)
            size -= leaf.saving
        return _Plan(frozenset(chosen), level.collapse, level.guard)

    def _large_collections(self) -> list[str]:
        """``metadata`` and ``errors`` when worth collapsing, the larger first."""
        sizes = {name: len(_canonical(self.payload.get(name) or {})) for name in _COLLECTIONS}
        large = [name for name in _COLLECTIONS if sizes[name] > COLLAPSE_MIN_BYTES]
        return sorted(large, key=lambda name: -sizes[name])

    def _log(self, event: str, whole: OutgoingRecord, sent: OutgoingRecord, limit: int) -> None:
        cut_fields = dict(sent.headers).get(TRUNCATED, b"").decode("utf-8")
        source = self.payload.get("source") or {}
        log.warning(
            event,
            kind=self.decision.kind,
            topic=self.topic,
            fields=cut_fields,
            size=whole.size,
            sent_size=sent.size,
            limit=limit,
            source_partition=source.get("partition"),
            source_offset=source.get("offset"),
        )


def _cuttable_texts(payload: Mapping[str, Any]) -> list[_Leaf]:
    """Every text that may be cut and saves bytes when it is."""
    found: list[tuple[_Where, str, str]] = []
    for name in CUTTABLE_FIELDS:
        value = payload.get(name)
        if isinstance(value, str):
            found.append((("field", name, ""), name, value))
    for key, value in (payload.get("metadata") or {}).items():
        found.append((("meta_key", key, ""), "metadata", key))
        found.append((("meta_value", key, ""), "metadata", value))
    for index, error in enumerate(payload.get("errors") or []):
        for attribute in _ERROR_TEXTS:
            text = error.get(attribute)
            if isinstance(text, str):
                found.append((("error", str(index), attribute), "errors", text))
    leaves = []
    for where, name, text in found:
        size = len(text.encode("utf-8"))
        saving = _avro_text_size(size) - _avro_text_size(marker_size(size))
        if saving > 0:
            leaves.append(_Leaf(where, name, saving))
    return leaves


def _apply(payload: Mapping[str, Any], plan: _Plan) -> tuple[dict[str, Any], set[str]]:
    """A copy of ``payload`` with the plan's cuts, and the names of the fields cut."""
    out = dict(payload)
    names: set[str] = set()
    for name in CUTTABLE_FIELDS:
        value = out.get(name)
        if ("field", name, "") in plan.texts and isinstance(value, str):
            out[name] = _marked(value)
            names.add(name)
    if _cut_metadata(out, plan):
        names.add("metadata")
    if _cut_errors(out, plan):
        names.add("errors")
    if plan.guard:
        names |= _guard_identities(out)
    return out, names


def _cut_metadata(out: dict[str, Any], plan: _Plan) -> bool:
    metadata: Mapping[str, str] = out.get("metadata") or {}
    if not metadata:
        return False
    if "metadata" in plan.collapse:
        summary = entries_marker(len(metadata), _canonical(metadata))
        out["metadata"] = {COLLAPSED_METADATA_KEY: summary}
        return True
    touched = False
    result: dict[str, str] = {}
    for key, value in metadata.items():
        cut_key = ("meta_key", key, "") in plan.texts
        cut_value = ("meta_value", key, "") in plan.texts
        touched = touched or cut_key or cut_value
        result[_marked(key) if cut_key else key] = _marked(value) if cut_value else value
    if touched:
        out["metadata"] = result
    return touched


def _cut_errors(out: dict[str, Any], plan: _Plan) -> bool:
    errors: list[dict[str, Any]] = out.get("errors") or []
    if not errors:
        return False
    if "errors" in plan.collapse:
        summary = entries_marker(len(errors), _canonical(errors))
        out["errors"] = [
            {
                "source": "points-adjuster",
                "reason_code": COLLAPSED_ERRORS_REASON,
                "description": summary,
                "recoverable": False,
                "field": None,
            }
        ]
        return True
    touched = False
    result = []
    for index, error in enumerate(errors):
        entry = dict(error)
        for attribute in _ERROR_TEXTS:
            text = entry.get(attribute)
            if ("error", str(index), attribute) in plan.texts and isinstance(text, str):
                entry[attribute] = _marked(text)
                touched = True
        result.append(entry)
    if touched:
        out["errors"] = result
    return touched


def _guard_identities(out: dict[str, Any]) -> set[str]:
    """Cut identity texts no valid command produces (over ``IDENTITY_GUARD_BYTES``)."""
    names = set()
    for name in IDENTITY_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and len(value.encode("utf-8")) > IDENTITY_GUARD_BYTES:
            out[name] = _marked(value)
            names.add(name)
    source = out.get("source")
    if isinstance(source, Mapping):
        topic = source.get("topic")
        if isinstance(topic, str) and len(topic.encode("utf-8")) > IDENTITY_GUARD_BYTES:
            out["source"] = {**source, "topic": _marked(topic)}
            names.add("source.topic")
    return names


def _marked(text: str) -> str:
    return marker(text.encode("utf-8"))


def _canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys: what a collection's marker measures and digests."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


def _avro_text_size(length: int) -> int:
    """Bytes of an Avro string of ``length`` UTF-8 bytes (zig-zag varint length + bytes)."""
    zigzag = length << 1
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size + length


def _truncated_names(record: OutgoingRecord) -> set[str]:
    listed = dict(record.headers).get(TRUNCATED, b"").decode("utf-8")
    return {name for name in listed.split(",") if name}


def _truncated_header_size(names: set[str]) -> int:
    if not names:
        return 0
    return len(TRUNCATED) + sum(len(name) for name in names) + len(names) - 1
