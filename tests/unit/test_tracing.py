"""W3C trace context: parsed strictly, continued through the processor to PAS and the event."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from service.app import command_decoder
from service.codec.avro import COMMAND, AvroCodec
from service.domain.decisions import InboundRecord, Publish
from service.domain.ports import PasRequest
from service.domain.processor import Processor
from service.idempotency.memory import MemoryStore
from service.kafka.publisher import OutcomePublisher
from service.kafka.runner import log_context
from service.pas.client import PasClient
from service.pas.credentials import load_credentials
from service.settings import KafkaSettings, PasSettings
from service.tracing import (
    MAX_TRACESTATE_CHARS,
    Attributes,
    Span,
    Trace,
    continue_trace,
    parse_traceparent,
    trace_of,
    valid_tracestate,
)
from tests.conftest import CONSUMER_KEY
from tests.fakes import FakeWallClock, RecordingProducer, ScriptedPas
from tests.http_support import Recorder, streamed
from tests.unit.test_processor import APPLIED, CONFIG, T0, raw_command

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@dataclass
class RecordingSpans:
    """A span sink that keeps what it is given."""

    spans: list[tuple[Span, str, Attributes]] = field(default_factory=list)

    def finished(
        self, span: Span, name: str, start_ns: int, end_ns: int, attributes: Attributes
    ) -> None:
        assert start_ns <= end_ns
        self.spans.append((span, name, attributes))


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def counter_bytes() -> Any:
    """Deterministic "random" bytes: 1, 2, 3... as big-endian numbers of the size asked."""
    numbers = itertools.count(1)
    return lambda size: next(numbers).to_bytes(size, "big")


# -- parsing ------------------------------------------------------------------------------


def test_a_valid_traceparent_is_continued_with_its_tracestate() -> None:
    """A version-00 traceparent gives its trace id, its parent id and flags; tracestate kept."""
    trace = continue_trace(TRACEPARENT, STATE)
    assert trace == Trace(TRACE_ID, PARENT_ID, "01", STATE)
    assert trace.problem is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"01-{TRACE_ID}-{PARENT_ID}-01", "not 00-"),  # another version
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", "not 00-"),  # uppercase hex
        (f"00-{'0' * 32}-{PARENT_ID}-01", "trace id all zeros"),
        (f"00-{TRACE_ID}-{'0' * 16}-01", "parent id all zeros"),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", "not 00-"),  # too long for version 00
        (f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", "not 00-"),
        (f" {TRACEPARENT}", "not 00-"),
        ("", "not 00-"),
        (f"00-{TRACE_ID}-{PARENT_ID}-0g", "not 00-"),
    ],
)
def test_an_invalid_traceparent_is_refused_with_a_reason(value: str, problem: str) -> None:
    """Strict parsing: version 00, lowercase hex, exact length, no all-zero id."""
    parsed = parse_traceparent(value)
    assert isinstance(parsed, str)
    assert parsed.startswith(problem)


def test_an_invalid_traceparent_starts_a_new_trace_logged_once_at_debug() -> None:
    """An invalid header starts a random new trace, drops tracestate, logs why (not the value)."""
    value = f"00-{'0' * 32}-{PARENT_ID}-01"
    with structlog.testing.capture_logs() as logs:
        trace = trace_of([("traceparent", value.encode()), ("tracestate", STATE.encode())])
    assert trace.trace_id != "0" * 32
    assert len(trace.trace_id) == 32
    assert trace.parent_id is None
    assert trace.state is None
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("trace.traceparent_invalid", "debug")
    ]
    assert value not in str(logs)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", b"\xff\xfe")],
        [("traceparent", TRACEPARENT.encode()), ("traceparent", TRACEPARENT.encode())],
        [("traceparent", b"x" * 10_000)],
        [("Traceparent", TRACEPARENT.encode())],
    ],
)
def test_a_record_without_one_valid_traceparent_gets_a_new_trace(
    headers: list[tuple[str, bytes | None]],
) -> None:
    """No header, undecodable bytes, two headers, a huge one: a new trace, never an error."""
    first, second = trace_of(headers), trace_of(headers)
    assert first.parent_id is None
    assert len(first.trace_id) == 32
    assert first.trace_id != second.trace_id


@pytest.mark.parametrize(
    ("state", "valid"),
    [
        (STATE, True),
        ("1abc=value", False),  # a simple key starts with a letter
        ("tenant@vendor=value", True),
        ("a=1, b=2", True),
        ("novalue", False),
        ("A=1", False),
        ("a=" + "x" * (MAX_TRACESTATE_CHARS - 1), False),
        ("a=with space", True),
        ("a=1 , b=2\t", True),  # spaces and tabs around members are allowed
        ("a=1,a=" + "\u00e9", False),
        (",".join(f"k{i}=v" for i in range(33)), False),
    ],
)
def test_tracestate_is_carried_only_when_valid(state: str, valid: bool) -> None:
    """A tracestate of at most 512 characters and well-formed members is carried unchanged."""
    assert valid_tracestate(state) is valid
    assert continue_trace(TRACEPARENT, state).state == (state if valid else None)


def test_spans_are_new_ids_in_the_same_trace() -> None:
    """A span of a trace and a span's child: the same trace id, each a new span id."""
    ids = counter_bytes()
    trace = continue_trace(TRACEPARENT, STATE)
    span = trace.span(ids)
    child = span.child(ids)
    assert span == Span(TRACE_ID, "0000000000000001", PARENT_ID, "01", STATE)
    assert child == Span(TRACE_ID, "0000000000000002", span.span_id, "01", STATE)
    assert child.headers() == [
        ("traceparent", f"00-{TRACE_ID}-0000000000000002-01"),
        ("tracestate", STATE),
    ]


def test_a_new_id_is_never_all_zeros() -> None:
    """Random bytes that happen to be all zeros are drawn again."""
    draws = iter([b"\x00" * 8, b"\x00" * 7 + b"\x05"])
    assert Trace(TRACE_ID).span(lambda size: next(draws)).span_id == "0000000000000005"


# -- carried through ----------------------------------------------------------------------


def record(codec: AvroCodec, headers: tuple[tuple[str, bytes], ...]) -> InboundRecord:
    value = codec.encode(COMMAND, raw_command())
    return InboundRecord("commands", 0, 7, b"k", value, 1_700_000_000_000, headers)


async def decide(
    codec: AvroCodec, headers: tuple[tuple[str, bytes], ...]
) -> tuple[InboundRecord, Publish, PasRequest, RecordingSpans]:
    pas = ScriptedPas()
    pas.then(APPLIED)
    spans = RecordingSpans()
    processor = Processor(
        decode=command_decoder(codec),
        store=MemoryStore(),
        pas=pas,
        history=None,
        config=CONFIG,
        clock=FakeWallClock(T0),
        spans=spans,
    )
    inbound = record(codec, headers)
    decision = await processor.handle(inbound)
    assert isinstance(decision, Publish)
    (request,) = pas.requests
    return inbound, decision, request, spans


async def test_the_pas_call_and_the_outcome_continue_the_commands_trace(
    codec: AvroCodec,
) -> None:
    """The handling span (the event's traceparent) and the request's span share the command's
    trace id; each has a new span id; the handling span is a child of the producer's."""
    headers = (("traceparent", TRACEPARENT.encode()), ("tracestate", STATE.encode()))
    inbound, decision, request, spans = await decide(codec, headers)
    assert decision.trace is not None
    assert request.trace is not None
    assert decision.trace is request.trace  # the PAS client makes the call a child of it
    assert decision.trace.trace_id == TRACE_ID
    assert decision.trace.parent_id == PARENT_ID
    assert decision.trace.span_id != PARENT_ID
    assert decision.trace.state == STATE
    assert log_context(inbound)["trace_id"] == TRACE_ID
    ((span, name, attributes),) = spans.spans
    assert span is decision.trace
    assert name == "points-adjuster handle"
    assert attributes["points_adjuster.decision"] == "completed"


async def test_a_command_without_a_traceparent_is_a_trace_of_its_own(codec: AvroCodec) -> None:
    """No traceparent: a new trace, the same one in the log context, the request and event."""
    inbound, decision, request, _ = await decide(codec, ())
    assert decision.trace is not None
    assert decision.trace.parent_id is None
    assert decision.trace.trace_id == inbound.trace.trace_id == log_context(inbound)["trace_id"]
    assert request.trace == decision.trace


async def test_the_outcome_event_carries_the_deciding_span_as_its_traceparent(
    codec: AvroCodec,
) -> None:
    """The event's headers hold traceparent (the deciding span) and the tracestate."""
    headers = (("traceparent", TRACEPARENT.encode()), ("tracestate", STATE.encode()))
    _, decision, _, _ = await decide(codec, headers)
    producer = RecordingProducer()
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    await (await publisher.send(decision))
    (sent,) = producer.sent
    assert decision.trace is not None
    assert sent.header["traceparent"] == decision.trace.traceparent.encode()
    assert sent.header["tracestate"] == STATE.encode()


async def test_an_event_without_a_trace_has_no_trace_headers(codec: AvroCodec) -> None:
    """A decision built without a span (a tool, a test) goes out without trace headers."""
    _, decision, _, _ = await decide(codec, ())
    producer = RecordingProducer()
    publisher = OutcomePublisher(producer, codec, KafkaSettings())
    await (await publisher.send(replace(decision, trace=None)))
    assert "traceparent" not in producer.sent[0].header


async def test_the_pas_request_is_a_child_span_of_the_handling_span(
    dev_keyset: DevKeySet,
) -> None:
    """The HTTP request's traceparent: the same trace, a new span id, the handling span its
    parent (the exported PAS span says so); tracestate carried through."""
    credentials = load_credentials(
        PasSettings(
            consumer_key=CONSUMER_KEY,
            signing_key_path=dev_keyset.client_signing_p12,
            signing_key_password=DEV_P12_PASSWORD,
            encryption_certificate_path=dev_keyset.pas_encryption_certificate,
            decryption_key_path=dev_keyset.client_decryption_key,
        ),
        now=datetime.now(UTC),
    )
    handling = continue_trace(TRACEPARENT, STATE).span()
    request = PasRequest("5123456789012345000", 1, "GOODWILL", "r", "agent", "corr", handling)
    recorder = Recorder(streamed(httpx.Response(200, json={"pointsAdjusted": 1})))
    spans = RecordingSpans()
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = PasClient(http, PasSettings(), credentials, spans=spans)
        await client.adjust(request, deadline=time.monotonic() + 30)
    (sent,) = recorder.requests
    ((span, name, attributes),) = spans.spans
    assert name == "PAS adjust"
    assert attributes["http.request.method"] == "POST"
    assert span.trace_id == TRACE_ID
    assert span.parent_id == handling.span_id
    assert span.span_id not in (handling.span_id, PARENT_ID)
    assert sent.headers["traceparent"] == span.traceparent
    assert sent.headers["tracestate"] == STATE
