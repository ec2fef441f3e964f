"""W3C Trace Context: continue a command's trace, or start one, and name the spans we make.

A command record may carry ``traceparent`` (``00-<trace id>-<parent id>-<flags>``) and
``tracestate`` headers. :func:`trace_of` reads them into a :class:`Trace`: the producer's
trace continued, or, when the traceparent is missing or not valid, a new trace with a random
id (a ``tracestate`` is then dropped, as the recommendation says). Parsing is strict: version
``00`` only, exactly 55 characters, lowercase hex, neither id all zeros; anything else starts a
new trace and is logged once at debug level, never raised.

Each span we make (the handling of a record, a PAS call) is a :class:`Span`: the trace's id,
a new random span id, and its parent's. ``Span.traceparent`` is what goes out in a header, so
whoever receives it continues the same trace under that span.

Spans are exported only when a :class:`SpanSink` is given: :func:`open_span_sink` opens the
OTLP one (``service.otel``, behind the ``otel`` extra) when ``PA_TRACING__OTLP_ENDPOINT`` is
set; otherwise nothing is recorded and no OpenTelemetry package is loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from service.errors import StartupError
from service.redact import redact_url

log = structlog.get_logger("service.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE_CHARS = 512
MAX_TRACESTATE_MEMBERS = 32
SAMPLED = "01"

RandomBytes = Callable[[int], bytes]
"""Where new ids come from (``os.urandom``; a test injects its own)."""

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# A tracestate list member: key=value (W3C Trace Context, section 3.3.1).
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

Attributes = Mapping[str, str | int | bool]


def new_id(size: int, random_bytes: RandomBytes = os.urandom) -> str:
    """``size`` random bytes as lowercase hex, never all zeros (an invalid id)."""
    while True:
        value = random_bytes(size).hex()
        if value.strip("0"):
            return value


@dataclass(frozen=True, slots=True)
class Span:
    """One span of ours: its trace, its own id, and the span it is a child of."""

    trace_id: str
    span_id: str
    parent_id: str | None
    flags: str = SAMPLED
    state: str | None = None

    @property
    def traceparent(self) -> str:
        """The header value that makes whoever receives it a child of this span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self, random_bytes: RandomBytes = os.urandom) -> Span:
        """A new span under this one, in the same trace."""
        return Span(self.trace_id, new_id(8, random_bytes), self.span_id, self.flags, self.state)

    def headers(self) -> list[tuple[str, str]]:
        """``traceparent``, and ``tracestate`` when there is one, for an outgoing message."""
        headers = [(TRACEPARENT, self.traceparent)]
        if self.state is not None:
            headers.append((TRACESTATE, self.state))
        return headers


@dataclass(frozen=True, slots=True)
class Trace:
    """The trace a record belongs to: the producer's (``parent_id`` set) or one started here."""

    trace_id: str
    parent_id: str | None = None
    flags: str = SAMPLED
    state: str | None = None
    problem: str | None = field(default=None, compare=False)
    """Why the record's traceparent was not continued (None: continued, or there was none)."""

    @classmethod
    def start(cls, random_bytes: RandomBytes = os.urandom) -> Trace:
        return cls(new_id(16, random_bytes))

    def span(self, random_bytes: RandomBytes = os.urandom) -> Span:
        """A new span of this trace, a child of the producer's span (a root when started)."""
        return Span(self.trace_id, new_id(8, random_bytes), self.parent_id, self.flags, self.state)


def parse_traceparent(value: str) -> tuple[str, str, str] | str:
    """``(trace id, parent id, flags)`` of a version-00 traceparent, or why it is not one."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return "not 00-<32 hex>-<16 hex>-<2 hex> in lowercase"
    trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE:
        return "trace id all zeros"
    if parent_id == _ZERO_SPAN:
        return "parent id all zeros"
    return trace_id, parent_id, flags


def valid_tracestate(value: str) -> bool:
    """True for a tracestate list (at most 512 characters and 32 ``key=value`` members)."""
    if len(value) > MAX_TRACESTATE_CHARS:
        return False
    members = [member.strip(" \t") for member in value.split(",")]
    present = [member for member in members if member]
    if not present or len(present) > MAX_TRACESTATE_MEMBERS:
        return False
    return all(_MEMBER.fullmatch(member) for member in present)


def continue_trace(
    traceparent: str | None,
    tracestate: str | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> Trace:
    """The trace ``traceparent`` names, or a new one when it is missing or not valid."""
    if traceparent is None:
        return Trace.start(random_bytes)
    parsed = parse_traceparent(traceparent)
    if isinstance(parsed, str):
        return _started(parsed, random_bytes)
    trace_id, parent_id, flags = parsed
    state = tracestate if tracestate is not None and valid_tracestate(tracestate) else None
    return Trace(trace_id, parent_id, flags, state)


def trace_of(
    headers: Sequence[tuple[str, bytes | None]], random_bytes: RandomBytes = os.urandom
) -> Trace:
    """The trace of a record with these headers (a message's, such as Kafka's).

    One ``traceparent`` header at most: two make it ambiguous, and a new trace is started.
    """
    parents = [value for name, value in headers if name == TRACEPARENT]
    states = [value for name, value in headers if name == TRACESTATE]
    if not parents:
        return Trace.start(random_bytes)
    if len(parents) > 1:
        return _started(f"{len(parents)} traceparent headers", random_bytes)
    parent, state = _text(parents[0]), _text(states[0]) if len(states) == 1 else None
    if parent is None:
        return _started("not ASCII, or too long", random_bytes)
    return continue_trace(parent, state, random_bytes)


def _text(value: bytes | None) -> str | None:
    if value is None or len(value) > 4 * MAX_TRACESTATE_CHARS:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _started(problem: str, random_bytes: RandomBytes) -> Trace:
    # Only the reason: the value came from a producer, and is never printed.
    log.debug("trace.traceparent_invalid", problem=problem)
    trace = Trace.start(random_bytes)
    return Trace(trace.trace_id, problem=problem)


class SpanSink(Protocol):
    """Receives each span once it ended (an exporter; ``service.otel`` has the OTLP one)."""

    def finished(
        self, span: Span, name: str, start_ns: int, end_ns: int, attributes: Attributes
    ) -> None: ...


class NoSpans:
    """The default sink: spans are not recorded anywhere."""

    def finished(
        self, span: Span, name: str, start_ns: int, end_ns: int, attributes: Attributes
    ) -> None:
        return None


NO_SPANS = NoSpans()


ENDPOINT_SETTING = "PA_TRACING__OTLP_ENDPOINT"


@contextlib.contextmanager
def open_span_sink(otlp_endpoint: str | None) -> Iterator[SpanSink]:
    """The sink spans go to: none without an endpoint; with one, OTLP export (flushed on exit).

    Raises ``StartupError`` naming the setting and the extra when OpenTelemetry is missing.
    """
    if otlp_endpoint is None:
        yield NO_SPANS
        return
    try:
        from service.otel import OtlpSpans  # only when export is configured
    except ImportError as exc:
        raise StartupError(
            "tracing",
            f"{ENDPOINT_SETTING} is set but OpenTelemetry is not installed ({exc.name or exc}):"
            " install the otel extra (pip install 'points-adjuster[otel]'), or unset it",
            setting=ENDPOINT_SETTING,
        ) from exc
    sink = OtlpSpans.to(otlp_endpoint)
    log.info("tracing.export_enabled", endpoint=redact_url(otlp_endpoint))
    try:
        yield sink
    finally:
        sink.close()
