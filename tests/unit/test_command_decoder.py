"""Reading command records: a typed decoded command, or a typed reason why not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.app import command_decoder
from service.codec.avro import COMMAND, COMPLETED, AvroCodec
from service.domain.inbound import DecodedCommand, Undecodable

OCCURRED = datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def command_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "idempotency_key": "case-1234-credit",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": -250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": OCCURRED,
        "metadata": {"case": "1234"},
    }
    record.update(overrides)
    return record


def test_a_command_record_decodes_into_its_fields(codec: AvroCodec) -> None:
    """A command record becomes a DecodedCommand of exactly its fields, the instant aware."""
    decoded = command_decoder(codec)(codec.encode(COMMAND, command_record()))
    assert decoded == DecodedCommand(**command_record())
    assert isinstance(decoded, DecodedCommand)
    assert decoded.occurred_at.tzinfo is not None


def test_values_of_any_content_decode_as_they_are(codec: AvroCodec) -> None:
    """Decoding judges nothing but the encoding: an invalid command decodes unchanged, for
    validation to refuse field by field."""
    odd = command_record(
        idempotency_key="k" * 1_000,
        points_to_adjust=2**63 - 1,
        adjustment_reason="\u202e",
        metadata={str(index): "v" for index in range(100)},
    )
    assert command_decoder(codec)(codec.encode(COMMAND, odd)) == DecodedCommand(**odd)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "EMPTY_RECORD"),
        (b"", "EMPTY_RECORD"),
        (b'{"idempotency_key": "k"}', "UNKNOWN_FRAMING"),
        (b"\xc3\x01" + bytes(8) + b"\x00", "UNKNOWN_SCHEMA"),
    ],
    ids=["none", "empty", "json", "unknown-schema"],
)
def test_a_value_that_is_no_command_is_undecodable_with_a_reason(
    value: bytes | None, reason: str
) -> None:
    """What cannot be read is answered with its reason and detail, never raised."""
    decoded = command_decoder(AvroCodec.from_directory())(value)
    assert isinstance(decoded, Undecodable)
    assert decoded.reason == reason
    assert decoded.detail


def test_a_truncated_command_is_corrupt(codec: AvroCodec) -> None:
    """A command body cut short is CORRUPT_AVRO."""
    data = codec.encode(COMMAND, command_record())
    decoded = command_decoder(codec)(data[:-3])
    assert isinstance(decoded, Undecodable)
    assert decoded.reason == "CORRUPT_AVRO"


def test_another_known_schema_is_not_a_command(codec: AvroCodec) -> None:
    """A well-formed record of another schema (an outcome event) is UNEXPECTED_SCHEMA."""
    event = {
        "event_id": "e-1",
        "idempotency_key": "case-1",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "account_ref": "acct-1",
        "account_masked": "****",
        "adjustment_type_code": "GOODWILL",
        "points_requested": 1,
        "points_adjusted": 1,
        "attempts": 1,
        "command_occurred_at": OCCURRED,
        "received_at": OCCURRED,
        "completed_at": OCCURRED,
        "pas_duration_ms": 1,
        "source": {"topic": "t", "partition": 0, "offset": 0},
        "service_version": "1",
    }
    decoded = command_decoder(codec)(codec.encode(COMPLETED, event))
    assert decoded == Undecodable(
        "UNEXPECTED_SCHEMA",
        f"a {COMPLETED} (fingerprint {codec.entry(COMPLETED).fingerprint_bytes.hex()})"
        f" is not a command ({COMMAND})",
    )
