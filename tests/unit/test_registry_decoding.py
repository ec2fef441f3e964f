"""Commands whose writer schema comes from a registry: Confluent ids, fingerprints the shipped
schemas lack, a registry that is down, and the dead-letter reasons (registry over
httpx.MockTransport)."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import httpx
import pytest

from service.codec.avro import AvroCodec
from service.codec.command import CommandDecoder
from service.codec.fingerprints import fingerprint
from service.codec.framing import confluent_header, single_object_header
from service.codec.released import released_schemas
from service.codec.writers import RegistryWriters
from service.domain.inbound import DecodedCommand, Undecodable, Unresolved
from service.registry.client import SchemaRegistryClient
from service.registry.errors import RegistryUnavailable

URL = "http://registry.test"
SUBJECT = "points-adjustments.requested.v1-value"
OCCURRED = datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)


def released(version: int) -> dict[str, Any]:
    return next(
        s.raw
        for s in released_schemas()
        if (s.stem, s.version) == ("points_adjustment_requested", version)
    )


def v3() -> dict[str, Any]:
    """A version this build does not ship: v2 plus a field with a default."""
    schema = copy.deepcopy(released(2))
    schema["fields"].append({"name": "priority", "type": "int", "default": 0})
    return schema


def command(**extra: Any) -> dict[str, Any]:
    return {
        "idempotency_key": "reg-1",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": 75,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-reg",
        "requested_by": "java-service",
        "occurred_at": OCCURRED,
        "metadata": {},
        **extra,
    }


def body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


class FakeRegistry:
    """The Confluent API's few paths the decoder uses, over MockTransport; ``down`` makes
    every request fail to connect."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.down = False
        self.requests: list[str] = []
        self.transport = httpx.MockTransport(self._answer)

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        schema_id = 100 + len(self.schemas)
        self.schemas[schema_id] = json.dumps(schema)
        self.subjects.setdefault(subject, []).append(schema_id)
        return schema_id

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        parts = path.strip("/").split("/")
        if parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            return httpx.Response(200, json={"schema": self.schemas[int(parts[2])]})
        if parts[0] == "subjects" and parts[1] in self.subjects:
            ids = self.subjects[parts[1]]
            if len(parts) == 3:
                return httpx.Response(200, json=list(range(1, len(ids) + 1)))
            number = int(parts[3])
            schema_id = ids[number - 1]
            return httpx.Response(
                200,
                json={"id": schema_id, "version": number, "schema": self.schemas[schema_id]},
            )
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})


async def no_sleep(seconds: float) -> None:
    return None


def decoder_over(
    fake: FakeRegistry, codec: AvroCodec | None = None
) -> tuple[CommandDecoder, SchemaRegistryClient]:
    codec = codec or AvroCodec.from_directory()
    client = SchemaRegistryClient(
        URL, transport=fake.transport, max_retries=1, retry_backoff_s=0, sleep=no_sleep
    )
    return CommandDecoder(codec, RegistryWriters(codec, client, SUBJECT)), client


async def decoded_after_prepare(decoder: CommandDecoder, value: bytes) -> Any:
    first = decoder(value)
    assert isinstance(first, Unresolved), first
    await decoder.prepare(value)
    return decoder(value)


async def test_a_confluent_v1_command_is_fetched_once_and_read_as_the_current_version() -> None:
    """Old writer, new reader: a v1 command framed 00 + id reads as v2, channel None; the
    schema is fetched by id once, the next record of that id decodes from the cache."""
    fake = FakeRegistry()
    schema_id = fake.register(SUBJECT, released(1))
    decoder, client = decoder_over(fake)
    value = confluent_header(schema_id) + body(released(1), command())
    result = await decoded_after_prepare(decoder, value)
    assert result == DecodedCommand(**command(), channel=None)
    assert decoder(value) == result
    assert fake.requests == [f"/schemas/ids/{schema_id}"]
    await client.aclose()


async def test_a_confluent_v2_command_read_by_a_v1_service_skips_the_channel() -> None:
    """New writer, old reader: a service whose current schema is v1 reads a v2 command
    framed by id, the channel skipped."""
    fake = FakeRegistry()
    schema_id = fake.register(SUBJECT, released(2))
    old_codec = AvroCodec([released(1), *[s.raw for s in released_schemas()][2:]])
    decoder, client = decoder_over(fake, old_codec)
    value = confluent_header(schema_id) + body(released(2), command(channel="web"))
    result = await decoded_after_prepare(decoder, value)
    assert result == DecodedCommand(**command())
    await client.aclose()


async def test_an_id_the_registry_does_not_have_is_dead_lettered_saying_so() -> None:
    """A 404 for the id: UNKNOWN_SCHEMA_ID naming the framing, the id and the registry."""
    fake = FakeRegistry()
    decoder, client = decoder_over(fake)
    result = await decoded_after_prepare(decoder, confluent_header(4242) + b"\x02")
    assert isinstance(result, Undecodable)
    assert result.reason == "UNKNOWN_SCHEMA_ID"
    assert "Confluent wire format, schema id 4242" in result.detail
    assert f"registry at {URL} does not have (HTTP 404, error 40403)" in result.detail
    await client.aclose()


def test_a_confluent_record_without_a_registry_names_the_setting() -> None:
    """No registry configured: CONFLUENT_WITHOUT_REGISTRY, naming PA_SCHEMA_REGISTRY__URL."""
    decoder = CommandDecoder(AvroCodec.from_directory())
    result = decoder(confluent_header(7) + b"\x02")
    assert result == Undecodable(
        "CONFLUENT_WITHOUT_REGISTRY",
        "starts with 00: the Confluent wire format (schema id 7), but no schema registry is"
        " configured (PA_SCHEMA_REGISTRY__URL)",
    )


async def test_while_the_registry_is_down_the_record_stays_unresolved_then_decodes() -> None:
    """An id not cached while the registry is unreachable: prepare raises RegistryUnavailable
    (retriable) and the value stays Unresolved, never Undecodable; once the registry answers
    it decodes."""
    fake = FakeRegistry()
    schema_id = fake.register(SUBJECT, released(2))
    decoder, client = decoder_over(fake)
    value = confluent_header(schema_id) + body(released(2), command(channel="batch"))
    fake.down = True
    for _ in range(3):
        with pytest.raises(RegistryUnavailable) as caught:
            await decoder.prepare(value)
        assert caught.value.retriable
        assert isinstance(decoder(value), Unresolved)
    fake.down = False
    await decoder.prepare(value)
    assert decoder(value) == DecodedCommand(**command(), channel="batch")
    await client.aclose()


async def test_cached_schemas_keep_working_while_the_registry_is_down() -> None:
    """Once fetched, an id needs no registry: records of it decode with the registry down."""
    fake = FakeRegistry()
    schema_id = fake.register(SUBJECT, released(2))
    decoder, client = decoder_over(fake)
    value = confluent_header(schema_id) + body(released(2), command())
    await decoded_after_prepare(decoder, value)
    fake.down = True
    await decoder.prepare(value)  # nothing to fetch: no request
    assert isinstance(decoder(value), DecodedCommand)
    await client.aclose()


@pytest.mark.parametrize("style", ["standard", "avro-python", "goavro"])
async def test_an_unshipped_version_framed_single_object_is_found_under_the_subject(
    style: str,
) -> None:
    """A single-object command of a version this build does not ship (v3), with the standard
    or a library's non-standard fingerprint: the versions under the command subject are read,
    v3 found by its fingerprint and resolved to the current reader (its new field skipped)."""
    fake = FakeRegistry()
    fake.register(SUBJECT, released(1))
    fake.register(SUBJECT, v3())
    decoder, client = decoder_over(fake)
    value = single_object_header(fingerprint(v3(), style)) + body(  # type: ignore[arg-type]
        v3(), command(channel="web", priority=3)
    )
    assert await decoded_after_prepare(decoder, value) == DecodedCommand(**command(), channel="web")
    await client.aclose()


async def test_an_unknown_fingerprint_is_dead_lettered_with_the_fingerprints_expected() -> None:
    """A fingerprint neither shipped nor registered: UNKNOWN_SCHEMA, naming the fingerprint
    found, every fingerprint a command may carry, and the subject read."""
    fake = FakeRegistry()
    fake.register(SUBJECT, released(1))
    decoder, client = decoder_over(fake)
    unknown = bytes.fromhex("0102030405060708")
    result = await decoded_after_prepare(decoder, single_object_header(unknown) + b"\x02")
    assert isinstance(result, Undecodable)
    assert result.reason == "UNKNOWN_SCHEMA"
    assert "fingerprint 0102030405060708" in result.detail
    for version in (1, 2):
        for style in ("standard", "avro-python"):
            assert fingerprint(released(version), style).hex() in result.detail
    assert f"nor has any of the 1 versions registered under {SUBJECT}" in result.detail
    await client.aclose()


def test_an_unknown_fingerprint_without_a_registry_says_none_is_configured() -> None:
    """Without a registry the same record is dead-lettered at once, naming the setting."""
    decoder = CommandDecoder(AvroCodec.from_directory())
    result = decoder(single_object_header(bytes(8)) + b"\x02")
    assert isinstance(result, Undecodable)
    assert result.reason == "UNKNOWN_SCHEMA"
    assert "no schema registry is configured to look further (PA_SCHEMA_REGISTRY__URL)" in (
        result.detail
    )


async def test_a_registered_schema_that_is_not_avro_is_dead_lettered_as_unusable() -> None:
    """An id whose schema text is no Avro record schema: UNUSABLE_SCHEMA, saying why."""
    fake = FakeRegistry()
    fake.schemas[77] = json.dumps({"type": "enum", "name": "E", "symbols": ["A"]})
    decoder, client = decoder_over(fake)
    result = await decoded_after_prepare(decoder, confluent_header(77) + b"\x00")
    assert isinstance(result, Undecodable)
    assert result.reason == "UNUSABLE_SCHEMA"
    assert "a top-level schema must be a record" in result.detail
    await client.aclose()
