"""The Avro single-object codec: CRC-64-AVRO fingerprints, framing, round trips and errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from service.codec.avro import (
    COMMAND,
    COMPLETED,
    FAILED,
    HEADER_SIZE,
    MAGIC,
    SCHEMA_FILES,
    AvroCodec,
    default_schema_dir,
)
from service.codec.crc64 import crc64_avro
from service.errors import UndecodableRecordError

NAMESPACE = "loyalty.points.adjustment.v1"
SCHEMA_NAME_OF_FILE = {
    "points_adjustment_requested.avsc": COMMAND,
    "points_adjustment_completed.avsc": COMPLETED,
    "points_adjustment_failed.avsc": FAILED,
}
PRIMITIVE_SCHEMAS = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
# Timestamps with whole milliseconds: timestamp-millis keeps nothing finer.
OCCURRED = datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)
RECEIVED = datetime(2025, 3, 4, 5, 6, 8, 12_000, tzinfo=UTC)
DECIDED = datetime(2025, 3, 4, 5, 6, 8, 345_000, tzinfo=UTC)


def schema_text(file_name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (default_schema_dir() / file_name).read_text(encoding="utf-8")
    )
    return loaded


def le_hex(value: int) -> str:
    """The fingerprint as fastavro prints it: the 8 little-endian bytes in hex."""
    return value.to_bytes(8, "little").hex()


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def requested_record() -> dict[str, Any]:
    return {
        "idempotency_key": "case-1234-credit",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": -2_500,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery, order 991 (é ✓)",
        "adjusted_by": "agent-0042",
        "correlation_id": "3f2b9c1e-0000-4000-8000-000000000001",
        "requested_by": "crm",
        "occurred_at": OCCURRED,
        "metadata": {"case": "1234", "channel": "phone"},
        "channel": "call-centre",
    }


def completed_record() -> dict[str, Any]:
    return {
        "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "idempotency_key": "case-1234-credit",
        "correlation_id": "3f2b9c1e-0000-4000-8000-000000000001",
        "requested_by": "crm",
        "account_ref": "acct-0123456789abcdef0123456789abcdef",
        "account_masked": "***************5000",
        "adjustment_type_code": "GOODWILL",
        "points_requested": -2_500,
        "points_adjusted": -2_500,
        "attempts": 1,
        "command_occurred_at": OCCURRED,
        "received_at": RECEIVED,
        "completed_at": DECIDED,
        "pas_duration_ms": 42,
        "pas_correlation_id": "mc-corr-1",
        "source": {"topic": "points-adjustments.requested.v1", "partition": 2, "offset": 2**40},
        "duplicate": True,
        "metadata": {"case": "1234"},
        "service_version": "0.1.0",
    }


def failed_record() -> dict[str, Any]:
    return {
        "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae8",
        "idempotency_key": "case-1234-credit",
        "correlation_id": "3f2b9c1e-0000-4000-8000-000000000001",
        "requested_by": "crm",
        "account_ref": None,
        "account_masked": "****5",
        "reason_code": "PAS_REJECTED",
        "description": "PAS refused the adjustment with HTTP 400",
        "retryable": False,
        "errors": [
            {
                "source": "rewards-points-api",
                "reason_code": "INVALID_POINTS",
                "description": "pointsToAdjust must not be zero",
                "recoverable": False,
                "field": "pointsToAdjust",
            },
            {
                "source": "Gateway",
                "reason_code": "DECLINED",
                "description": "",
                "recoverable": True,
                "field": None,
            },
        ],
        "http_status": 400,
        "attempts": 0,
        "command_occurred_at": OCCURRED,
        "received_at": RECEIVED,
        "failed_at": DECIDED,
        "source": {"topic": "points-adjustments.requested.v1", "partition": 0, "offset": 0},
        "duplicate": False,
        "metadata": {},
        "service_version": "0.1.0",
    }


RECORDS = {COMMAND: requested_record, COMPLETED: completed_record, FAILED: failed_record}


# -- CRC-64-AVRO ------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_crc64_of_each_schema_agrees_with_fastavro(file_name: str) -> None:
    """Our CRC-64-AVRO of a schema's canonical form equals fastavro's independent one."""
    canonical = to_parsing_canonical_form(schema_text(file_name))
    assert le_hex(crc64_avro(canonical.encode("utf-8"))) == fastavro_fingerprint(
        canonical, "CRC-64-AVRO"
    )


@pytest.mark.parametrize("primitive", PRIMITIVE_SCHEMAS)
def test_crc64_of_primitive_schemas_agrees_with_fastavro(primitive: str) -> None:
    """Our CRC-64-AVRO of each primitive schema equals fastavro's."""
    canonical = json.dumps(primitive)
    assert le_hex(crc64_avro(canonical.encode())) == fastavro_fingerprint(canonical, "CRC-64-AVRO")


def test_crc64_of_arbitrary_bytes_agrees_with_fastavro() -> None:
    """The CRC is over raw bytes, including the empty input and non-ASCII text."""
    for text in ("", "a", '{"type":"enum","name":"E","symbols":["A","B"]}', "é✓" * 100):
        assert le_hex(crc64_avro(text.encode("utf-8"))) == fastavro_fingerprint(
            text, "CRC-64-AVRO"
        ), text


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_codec_knows_each_schema_by_its_fastavro_fingerprint(
    codec: AvroCodec, file_name: str
) -> None:
    """The codec files each schema under its full name with the standard fingerprint."""
    entry = codec.entry(SCHEMA_NAME_OF_FILE[file_name])
    expected = fastavro_fingerprint(
        to_parsing_canonical_form(schema_text(file_name)), "CRC-64-AVRO"
    )
    assert entry.fingerprint_bytes.hex() == expected


# -- framing and round trips --------------------------------------------------------------


@pytest.mark.parametrize("name", [COMMAND, COMPLETED, FAILED])
def test_encode_writes_the_single_object_header(codec: AvroCodec, name: str) -> None:
    """An encoded record starts with C3 01 and the 8-byte little-endian fingerprint."""
    file_name = next(f for f, n in SCHEMA_NAME_OF_FILE.items() if n == name)
    expected = bytes.fromhex(
        fastavro_fingerprint(to_parsing_canonical_form(schema_text(file_name)), "CRC-64-AVRO")
    )
    data = codec.encode(name, RECORDS[name]())
    assert data[:2] == b"\xc3\x01" == MAGIC
    assert data[2:HEADER_SIZE] == expected
    assert len(data) > HEADER_SIZE


@pytest.mark.parametrize("name", [COMMAND, COMPLETED, FAILED])
def test_each_schema_round_trips(codec: AvroCodec, name: str) -> None:
    """decode(encode(record)) gives back the schema name and an equal record."""
    record = RECORDS[name]()
    decoded_name, decoded = codec.decode(codec.encode(name, record))
    assert decoded_name == name
    assert decoded == record


def test_defaults_are_filled_on_encode(codec: AvroCodec) -> None:
    """A command without metadata decodes with the schema default, an empty map."""
    record = requested_record()
    del record["metadata"]
    _, decoded = codec.decode(codec.encode(COMMAND, record))
    assert decoded["metadata"] == {}


def test_encode_refuses_a_record_that_does_not_fit(codec: AvroCodec) -> None:
    """A value of the wrong type is refused at encode time, not written half-way."""
    record = requested_record()
    record["points_to_adjust"] = "many"
    with pytest.raises((ValueError, TypeError)):
        codec.encode(COMMAND, record)


def test_unknown_schema_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Loading from a folder without the schema files names the missing file."""
    with pytest.raises(FileNotFoundError, match=r"points_adjustment_requested\.avsc"):
        AvroCodec.from_directory(tmp_path)


# -- decode errors ------------------------------------------------------------------------


def command_bytes(codec: AvroCodec) -> bytes:
    return codec.encode(COMMAND, requested_record())


def expect_reason(codec: AvroCodec, data: bytes | None, reason: str) -> UndecodableRecordError:
    with pytest.raises(UndecodableRecordError) as caught:
        codec.decode(data)
    assert caught.value.reason == reason
    assert caught.value.detail
    return caught.value


@pytest.mark.parametrize("data", [None, b""], ids=["none", "empty"])
def test_decode_of_nothing_is_empty_record(codec: AvroCodec, data: bytes | None) -> None:
    """A tombstone or empty value is reported as EMPTY_RECORD."""
    expect_reason(codec, data, "EMPTY_RECORD")


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b'{"idempotency_key": "k"}', "7b 22 69 64 (JSON text?)"),
        (b"\xc3\x02" + bytes(8) + b"\x00", "c3 02 00 00 (C3 but not C3 01"),
        (
            b"\x01\xc3" + bytes(8) + b"\x00",
            "01 c3 00 00 (the single-object marker's bytes swapped?)",
        ),
        (b"Obj\x01" + bytes(8), "4f 62 6a 01 (an Avro object container file"),
    ],
    ids=["json", "wrong-second-byte", "swapped-magic", "container-file"],
)
def test_decode_of_an_unknown_framing_names_both_framings_and_what_it_found(
    codec: AvroCodec, data: bytes, found: str
) -> None:
    """Bytes starting with neither C3 01 nor 00 are UNKNOWN_FRAMING: the detail names both
    framings expected and the first bytes found, with what they look like."""
    error = expect_reason(codec, data, "UNKNOWN_FRAMING")
    assert "C3 01 + an 8-byte schema fingerprint" in error.detail
    assert "00 + a 4-byte schema id" in error.detail
    assert found in error.detail


@pytest.mark.parametrize(
    ("data", "framing"),
    [
        (b"\xc3\x01\x00\x01\x02", "Avro single-object encoding, whose header is 10 bytes"),
        (b"\xc3", "Avro single-object encoding, whose header is 10 bytes"),
        (b"\x00\x00\x01", "the Confluent wire format, whose header is 5 bytes"),
        (b"\x00", "the Confluent wire format, whose header is 5 bytes"),
    ],
    ids=["short-single-object", "one-byte-c3", "short-confluent", "one-byte-00"],
)
def test_a_header_cut_short_is_a_truncated_frame_naming_its_framing(
    codec: AvroCodec, data: bytes, framing: str
) -> None:
    """A value shorter than its framing's header is TRUNCATED_FRAME: which framing it looks
    like, the header's size and the value's."""
    error = expect_reason(codec, data, "TRUNCATED_FRAME")
    assert framing in error.detail
    assert f"the value has {len(data)}" in error.detail


def test_decode_with_unknown_fingerprint_is_unknown_schema(codec: AvroCodec) -> None:
    """A header naming a schema the codec was not built with is UNKNOWN_SCHEMA, with the id."""
    data = command_bytes(codec)
    unknown = bytes.fromhex("0102030405060708")
    error = expect_reason(codec, MAGIC + unknown + data[HEADER_SIZE:], "UNKNOWN_SCHEMA")
    assert unknown.hex() in error.detail


def test_decode_of_a_big_endian_fingerprint_is_unknown_schema(codec: AvroCodec) -> None:
    """The fingerprint is read little-endian: the same number big-endian is not recognised."""
    data = command_bytes(codec)
    big_endian = codec.entry(COMMAND).fingerprint.to_bytes(8, "big")
    expect_reason(codec, MAGIC + big_endian + data[HEADER_SIZE:], "UNKNOWN_SCHEMA")


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_decode_of_a_truncated_body_is_corrupt(codec: AvroCodec, cut: int) -> None:
    """A body cut short is CORRUPT_AVRO."""
    expect_reason(codec, command_bytes(codec)[:-cut], "CORRUPT_AVRO")


def test_decode_of_a_header_without_body_is_corrupt(codec: AvroCodec) -> None:
    """A bare header with a known fingerprint is CORRUPT_AVRO."""
    expect_reason(codec, command_bytes(codec)[:HEADER_SIZE], "CORRUPT_AVRO")


def test_decode_with_trailing_bytes_is_corrupt(codec: AvroCodec) -> None:
    """Bytes after a complete record are CORRUPT_AVRO and the detail says how many."""
    error = expect_reason(codec, command_bytes(codec) + b"\x00\x00\x00", "CORRUPT_AVRO")
    assert "3 trailing bytes" in error.detail


@pytest.mark.parametrize(
    "body",
    [b"\xff" * 20, b"\x01", b"\x02\xff\xfe" + b"\x00" * 40],
    ids=["varint-overflow", "negative-length", "invalid-utf8"],
)
def test_decode_of_a_garbage_body_is_corrupt(codec: AvroCodec, body: bytes) -> None:
    """A known header followed by garbage is CORRUPT_AVRO, never another exception."""
    header = command_bytes(codec)[:HEADER_SIZE]
    expect_reason(codec, header + body, "CORRUPT_AVRO")


def test_decode_error_message_holds_no_record_content(codec: AvroCodec) -> None:
    """A decode error's text does not echo the account number it could not read."""
    data = command_bytes(codec)
    with pytest.raises(UndecodableRecordError) as caught:
        codec.decode(data[:-3])
    assert "5123456789012345000" not in str(caught.value)


# -- schema documentation ------------------------------------------------------------------


def named_types(schema: Any) -> list[dict[str, Any]]:
    """Every record definition inside ``schema`` (the schema itself included)."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            found.append(schema)
            for field in schema.get("fields", []):
                found.extend(named_types(field["type"]))
        else:
            for key in ("items", "values", "type"):
                if key in schema:
                    found.extend(named_types(schema[key]))
    elif isinstance(schema, list):
        for branch in schema:
            found.extend(named_types(branch))
    return found


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_schema_has_namespace_and_doc(file_name: str) -> None:
    """Each schema file declares the v1 namespace and documents the record."""
    schema = schema_text(file_name)
    assert schema["namespace"] == NAMESPACE
    assert f"{schema['namespace']}.{schema['name']}" == SCHEMA_NAME_OF_FILE[file_name]
    assert schema["doc"].strip()


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_every_field_is_documented(file_name: str) -> None:
    """Every field of every record in the schema, nested ones included, has a doc."""
    records = named_types(schema_text(file_name))
    assert records
    undocumented = [
        f"{record['name']}.{field['name']}"
        for record in records
        for field in record["fields"]
        if not str(field.get("doc", "")).strip()
    ]
    undocumented += [record["name"] for record in records if not record.get("doc", "").strip()]
    assert undocumented == []
