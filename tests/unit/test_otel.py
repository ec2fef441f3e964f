"""OTLP export: off by default with nothing of OpenTelemetry loaded; on, the same trace ids."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from service.app import command_decoder
from service.codec.avro import AvroCodec
from service.domain.decisions import Publish
from service.domain.processor import Processor
from service.errors import StartupError
from service.idempotency.memory import MemoryStore
from service.pas.credentials import Credentials, load_credentials
from service.settings import PasSettings, load_settings
from service.tracing import NO_SPANS, continue_trace, open_span_sink
from tests.conftest import CONSUMER_KEY
from tests.fakes import FakeWallClock, ScriptedPas
from tests.http_support import streamed
from tests.unit.test_processor import APPLIED, CONFIG, T0
from tests.unit.test_tracing import PARENT_ID, TRACE_ID, TRACEPARENT, record


def credentials(keyset: DevKeySet) -> Credentials:
    return load_credentials(
        PasSettings(
            consumer_key=CONSUMER_KEY,
            signing_key_path=keyset.client_signing_p12,
            signing_key_password=DEV_P12_PASSWORD,
            encryption_certificate_path=keyset.pas_encryption_certificate,
            decryption_key_path=keyset.client_decryption_key,
        ),
        now=datetime.now(UTC),
    )


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def test_the_service_loads_no_opentelemetry_module_by_default() -> None:
    """A fresh interpreter importing the service (and opening the default sink) holds no
    opentelemetry module, even where the extra is installed."""
    code = (
        "import sys, service.app\n"
        "from service.tracing import open_span_sink\n"
        "with open_span_sink(None): pass\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    modules = result.stdout.split()
    assert "service.app" in modules
    assert [m for m in modules if m.startswith(("opentelemetry", "service.otel"))] == []


def test_the_endpoint_is_a_setting_unset_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """PA_TRACING__OTLP_ENDPOINT is read from the environment; unset, it is None."""
    monkeypatch.delenv("PA_TRACING__OTLP_ENDPOINT", raising=False)
    assert load_settings().tracing.otlp_endpoint is None
    monkeypatch.setenv("PA_TRACING__OTLP_ENDPOINT", "http://collector:4318/v1/traces")
    assert load_settings().tracing.otlp_endpoint == "http://collector:4318/v1/traces"
    with open_span_sink(None) as sink:
        assert sink is NO_SPANS


def test_an_endpoint_without_the_extra_is_a_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the endpoint set and OpenTelemetry not importable, start-up fails naming the
    setting and the extra."""
    loaded = [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]
    for name in {"opentelemetry", *loaded}:  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "service.otel", raising=False)
    with (
        pytest.raises(StartupError) as raised,
        open_span_sink("http://collector:4318/v1/traces"),
    ):
        pass
    message = str(raised.value)
    assert "PA_TRACING__OTLP_ENDPOINT" in message
    assert "points-adjuster[otel]" in message
    assert raised.value.setting == "PA_TRACING__OTLP_ENDPOINT"


async def test_exported_spans_carry_the_commands_trace(
    codec: AvroCodec, dev_keyset: DevKeySet
) -> None:
    """With the extra: the handling span and the PAS call span are exported with the
    command's trace id, the handling span a child of the producer's, the call a child of it,
    and the outcome's traceparent naming the exported handling span."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from service.otel import OtlpSpans
    from service.pas.client import PasClient

    exporter = InMemorySpanExporter()
    sink = OtlpSpans(SimpleSpanProcessor(exporter))
    pas = ScriptedPas()
    pas.then(APPLIED)
    processor = Processor(
        decode=command_decoder(codec),
        store=MemoryStore(),
        pas=pas,
        history=None,
        config=CONFIG,
        clock=FakeWallClock(T0),
        spans=sink,
    )
    decision = await processor.handle(record(codec, (("traceparent", TRACEPARENT.encode()),)))
    assert isinstance(decision, Publish)
    assert decision.trace is not None
    (handle,) = exporter.get_finished_spans()
    assert handle.context is not None
    assert handle.parent is not None
    assert f"{handle.context.trace_id:032x}" == TRACE_ID
    assert f"{handle.context.span_id:016x}" == decision.trace.span_id
    assert f"{handle.parent.span_id:016x}" == PARENT_ID
    assert handle.kind is SpanKind.CONSUMER
    assert handle.name == "points-adjuster handle"

    # The call itself (the real client, its request answered by a mock transport).
    (request,) = pas.requests
    sent: list[httpx.Request] = []

    def answer(req: httpx.Request) -> httpx.Response:
        sent.append(req)
        response = streamed(httpx.Response(503))
        assert isinstance(response, httpx.Response)
        return response

    client_span_sink = OtlpSpans(SimpleSpanProcessor(exporter))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = PasClient(http, PasSettings(), credentials(dev_keyset), spans=client_span_sink)
        await client.adjust(request, deadline=time.monotonic() + 30)
    call = exporter.get_finished_spans()[-1]
    assert call.context is not None
    assert call.parent is not None
    assert call.kind is SpanKind.CLIENT
    assert f"{call.context.trace_id:032x}" == TRACE_ID
    assert f"{call.parent.span_id:016x}" == decision.trace.span_id
    assert sent[0].headers["traceparent"] == f"00-{TRACE_ID}-{call.context.span_id:016x}-01"
    assert call.attributes is not None
    assert call.attributes["http.response.status_code"] == 503
    sink.close()


def test_a_new_trace_exports_a_root_span() -> None:
    """A command that started its trace here: its handling span is exported without a parent."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.otel import OtlpSpans

    exporter = InMemorySpanExporter()
    span = continue_trace(None).span()
    OtlpSpans(SimpleSpanProcessor(exporter)).finished(span, "x", 1, 2, {})
    (exported,) = exporter.get_finished_spans()
    assert exported.parent is None
    assert exported.context is not None
    assert f"{exported.context.span_id:016x}" == span.span_id
