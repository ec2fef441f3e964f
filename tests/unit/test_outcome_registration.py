"""Outcome schemas at start-up with Confluent framing: found, registered, waited for, refused
(registry over httpx.MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.codec.framing import read_frame
from service.errors import StartupError
from service.registry.client import SchemaRegistryClient
from service.registry.outcomes import outcome_schema_ids, outcome_topics

TOPICS = outcome_topics("done.v1", "failed.v1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def client(handler: httpx.MockTransport) -> SchemaRegistryClient:
    return SchemaRegistryClient(
        "http://registry.test", transport=handler, max_retries=0, retry_backoff_s=0
    )


async def test_schemas_found_are_used_and_missing_ones_registered() -> None:
    """The completed schema is already under done.v1-value (its id used); the failed one is
    not under failed.v1-value, so it is registered; the codec then frames outcomes 00 + id."""
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        schema = json.loads(request.content)["schema"]
        if request.url.path == "/subjects/done.v1-value":
            assert "PointsAdjustmentCompleted" in schema
            return httpx.Response(
                200, json={"subject": "s", "id": 31, "version": 1, "schema": schema}
            )
        if request.url.path == "/subjects/failed.v1-value":
            return httpx.Response(404, json={"error_code": 40401, "message": "no subject"})
        assert request.url.path == "/subjects/failed.v1-value/versions"
        return httpx.Response(200, json={"id": 32})

    registry = client(httpx.MockTransport(answer))
    codec = AvroCodec.from_directory()
    ids = await outcome_schema_ids(registry, codec, TOPICS, "topic", wait_s=1)
    assert ids == {COMPLETED: 31, FAILED: 32}
    assert ("POST", "/subjects/failed.v1-value/versions") in seen
    framed = codec.with_schema_ids(ids)
    event = framed.encode(FAILED, failed_event())
    assert read_frame(event).schema_id == 32
    assert framed.decode(event)[0] == FAILED
    await registry.aclose()


async def test_an_unreachable_registry_is_waited_for_then_a_startup_error() -> None:
    """Connection refused throughout: tried with growing pauses for wait_s, then a
    StartupError naming PA_SCHEMA_REGISTRY__URL."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    clock = Clock()
    registry = client(httpx.MockTransport(refuse))
    with pytest.raises(StartupError) as caught:
        await outcome_schema_ids(
            registry,
            AvroCodec.from_directory(),
            TOPICS,
            "topic",
            wait_s=10,
            sleep=clock.sleep,
            clock=clock,
        )
    assert caught.value.setting == "PA_SCHEMA_REGISTRY__URL"
    assert "unreachable for 10 s" in str(caught.value)
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0]
    await registry.aclose()


async def test_a_refusal_ends_startup_at_once_saying_what_was_refused() -> None:
    """A 409 (the schema is incompatible with the subject's versions): no waiting, a
    StartupError quoting the registry's answer."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/versions"):
            return httpx.Response(409, json={"error_code": 409, "message": "incompatible"})
        return httpx.Response(404, json={"error_code": 40403, "message": "not found"})

    clock = Clock()
    registry = client(httpx.MockTransport(answer))
    with pytest.raises(StartupError, match=r"refused the outcome schemas: .*HTTP 409"):
        await outcome_schema_ids(
            registry,
            AvroCodec.from_directory(),
            TOPICS,
            "record",
            wait_s=10,
            sleep=clock.sleep,
            clock=clock,
        )
    assert clock.pauses == []
    await registry.aclose()


def failed_event() -> dict[str, object]:
    return {
        "event_id": "e",
        "idempotency_key": "k",
        "correlation_id": "c",
        "requested_by": "r",
        "account_ref": None,
        "account_masked": None,
        "reason_code": "VALIDATION_FAILED",
        "description": "d",
        "retryable": False,
        "errors": [],
        "http_status": None,
        "attempts": 0,
        "command_occurred_at": 0,
        "received_at": 0,
        "failed_at": 0,
        "source": {"topic": "t", "partition": 0, "offset": 1},
        "duplicate": False,
        "metadata": {},
        "service_version": "1",
    }
