"""The shipped schemas: the current files, every released version, and what may change."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from service.codec.avro import COMMAND, HEADER_SIZE, MAGIC, AvroCodec, schema_fingerprint
from service.codec.released import SCHEMA_STEMS, current_schemas, released_schemas

RELEASED_FINGERPRINTS = {
    ("points_adjustment_requested", 1): "9923401cda1cc2ae",
    ("points_adjustment_requested", 2): "05ea3f7151442ba9",
    ("points_adjustment_completed", 1): "72422a59b1c28e5a",
    ("points_adjustment_failed", 1): "0c8efe858fa94b8b",
}
"""The standard fingerprint of every released version, as framed (8 bytes little-endian, in
hex): a released file never changes, so neither does its fingerprint. A new version is a new
file and a new line here (and in docs/schemas.md)."""

OCCURRED = datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)


def parsed(raw: dict[str, Any]) -> Any:
    return fastavro.parse_schema(raw, named_schemas={})


def v1_command() -> dict[str, Any]:
    return {
        "idempotency_key": "case-1-credit",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": 250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": OCCURRED,
        "metadata": {"case": "1"},
    }


def framed(raw: dict[str, Any], record: dict[str, Any]) -> bytes:
    schema = parsed(raw)
    out = io.BytesIO()
    out.write(MAGIC + schema_fingerprint(schema).to_bytes(8, "little"))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def released(stem: str, version: int) -> dict[str, Any]:
    return next(s.raw for s in released_schemas() if (s.stem, s.version) == (stem, version))


def test_each_current_schema_is_its_highest_released_version_byte_for_byte() -> None:
    """schemas/<stem>.avsc equals schemas/released/<stem>.v<highest>.avsc exactly."""
    shipped = released_schemas()
    for current in current_schemas():
        versions = [item for item in shipped if item.stem == current.stem]
        assert versions, f"{current.stem} has no released version"
        assert current.text == versions[-1].text, f"{current.stem}: not v{versions[-1].version}"


def test_released_versions_are_numbered_from_1_without_gaps() -> None:
    """Every schema has v1..vN, each keeping its full name (namespace and name)."""
    shipped = released_schemas()
    for stem in SCHEMA_STEMS:
        versions = [item for item in shipped if item.stem == stem]
        assert [item.version for item in versions] == list(range(1, len(versions) + 1))
        assert len({item.full_name for item in versions}) == 1, stem


def test_no_released_version_changes() -> None:
    """Each released file still has the fingerprint it was released with, and no version is
    released without being pinned here."""
    found = {
        (item.stem, item.version): schema_fingerprint(parsed(item.raw)).to_bytes(8, "little").hex()
        for item in released_schemas()
    }
    assert found == RELEASED_FINGERPRINTS


def test_command_v2_only_adds_an_optional_channel_with_a_default() -> None:
    """v2 of the command is v1 plus one field, a nullable string defaulting to null."""
    v1 = released("points_adjustment_requested", 1)
    v2 = released("points_adjustment_requested", 2)
    assert v2["fields"][: len(v1["fields"])] == v1["fields"]
    (added,) = v2["fields"][len(v1["fields"]) :]
    assert (added["name"], added["type"], added["default"]) == ("channel", ["null", "string"], None)
    assert (v1["name"], v1["namespace"]) == (v2["name"], v2["namespace"])


def test_a_v1_command_reads_with_the_current_reader_channel_defaulted() -> None:
    """An old writer (v1, framed with v1's fingerprint) with the new reader: channel is None."""
    codec = AvroCodec.from_directory()
    name, record = codec.decode(framed(released("points_adjustment_requested", 1), v1_command()))
    assert name == COMMAND
    assert record == {**v1_command(), "channel": None}


def test_a_v2_command_reads_with_a_v1_reader_channel_ignored() -> None:
    """A new writer (v2, with a channel) read by a service still on v1: the field is skipped."""
    v1, v2 = (released("points_adjustment_requested", n) for n in (1, 2))
    old_service = AvroCodec([v1], [v2])
    name, record = old_service.decode(framed(v2, {**v1_command(), "channel": "call-centre"}))
    assert name == COMMAND
    assert record == v1_command()


@pytest.mark.parametrize("version", [1, 2])
def test_the_current_codec_frames_with_the_current_fingerprint(version: int) -> None:
    """What the service writes carries the current version's fingerprint; both versions read."""
    codec = AvroCodec.from_directory()
    data = codec.encode(COMMAND, {**v1_command(), "channel": "web"})
    assert data[2:HEADER_SIZE].hex() == RELEASED_FINGERPRINTS[("points_adjustment_requested", 2)]
    raw = released("points_adjustment_requested", version)
    assert codec.decode(framed(raw, v1_command()))[1]["idempotency_key"] == "case-1-credit"
