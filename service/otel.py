"""Our spans exported over OTLP/HTTP: the ``otel`` extra, loaded only when it is configured.

:mod:`service.tracing` makes the ids (the command's trace, a new span id for each span);
this module only hands each finished span to OpenTelemetry's batch processor as a span with
exactly those ids, so the exported trace is the one the headers carry. Nothing here imports
at start-up unless ``PA_TRACING__OTLP_ENDPOINT`` is set (``service.tracing.open_span_sink``).
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState

from service import __version__
from service.tracing import Attributes, Span

SERVICE_NAME = "points-adjuster"
_SCOPE = InstrumentationScope("service.tracing", __version__)


class OtlpSpans:
    """A ``SpanSink`` handing each span to an OpenTelemetry span processor (batched export)."""

    def __init__(self, processor: SpanProcessor, resource: Resource | None = None) -> None:
        self._processor = processor
        self._resource = resource or Resource.create(
            {"service.name": SERVICE_NAME, "service.version": __version__}
        )

    @classmethod
    def to(cls, endpoint: str) -> OtlpSpans:
        """Batched export to an OTLP/HTTP traces endpoint."""
        return cls(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    def finished(
        self, span: Span, name: str, start_ns: int, end_ns: int, attributes: Attributes
    ) -> None:
        flags = TraceFlags(int(span.flags, 16))
        state = TraceState.from_header([span.state]) if span.state else None
        trace_id = int(span.trace_id, 16)
        context = SpanContext(trace_id, int(span.span_id, 16), False, flags, state)
        parent = None
        if span.parent_id is not None:
            parent = SpanContext(trace_id, int(span.parent_id, 16), True, flags, state)
        kind = SpanKind.CLIENT if "http.request.method" in attributes else SpanKind.CONSUMER
        self._processor.on_end(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=dict(attributes),
                kind=kind,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=_SCOPE,
            )
        )

    def close(self) -> None:
        """Export what is left (bounded by the processor's own timeout), then stop."""
        self._processor.shutdown()
