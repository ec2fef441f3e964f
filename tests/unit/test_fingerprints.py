"""Canonical forms and fingerprints: ours against fastavro's and Apache avro-python's own."""

from __future__ import annotations

import io
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro.schema import to_parsing_canonical_form

from service.app import command_decoder
from service.codec.avro import AvroCodec
from service.codec.fingerprints import canonical_form, fingerprint, fingerprints
from service.codec.released import released_schemas
from service.domain.inbound import DecodedCommand

ODD_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "R",
    "namespace": "n",
    "doc": "constructs where the libraries disagree",
    "fields": [
        {"name": "a", "type": {"type": "string", "avro.java.string": "String"}},
        {"name": "b", "type": {"type": "string"}},
        {"name": "c", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "d",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        },
        {"name": "e", "type": {"type": "fixed", "name": "F", "size": 16}},
        {"name": "f", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "g", "type": {"type": "enum", "name": "E", "symbols": ["X"], "default": "X"}},
        {"name": "h", "type": "F"},
        {"name": "i", "type": ["null", {"type": "array", "items": "other.Q"}], "default": None},
    ],
}
"""Every construct the styles treat differently: annotated primitives, a named type used
twice, a union, an array of a name in another namespace (defined below)."""

ODD_SCHEMA["fields"].insert(
    0,
    {"name": "q", "type": {"type": "enum", "name": "Q", "namespace": "other", "symbols": ["Y"]}},
)

SHIPPED = {f"{item.stem}.v{item.version}": item for item in released_schemas()}

PINNED = {
    # standard, then avro-python and goavro (equal for these schemas): as framed, in hex
    "points_adjustment_requested.v1": ("9923401cda1cc2ae", "77b9b8088bbad78b"),
    "points_adjustment_requested.v2": ("05ea3f7151442ba9", "f91eb9ecba54f7bf"),
    "points_adjustment_completed.v1": ("72422a59b1c28e5a", "328449c6116bcf54"),
    "points_adjustment_failed.v1": ("0c8efe858fa94b8b", "173932050601eddb"),
}
"""The fingerprints of every released version in every style, as docs/schemas.md lists them."""


def apache_form(raw: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # avro warns about logical types it ignores
        parsed = avro.schema.parse(json.dumps(raw))
    form: str = parsed.canonical_form
    return form


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_standard_form_of_each_shipped_schema_is_fastavros(name: str) -> None:
    """Our standard form equals fastavro's Parsing Canonical Form."""
    raw = SHIPPED[name].raw
    assert canonical_form(raw) == to_parsing_canonical_form(raw)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_avro_python_form_of_each_shipped_schema_is_apache_avros(name: str) -> None:
    """Our avro-python form equals what Apache avro-python computes: timestamp-millis kept
    as {"type":"long"}, so its fingerprint differs from the standard one."""
    raw = SHIPPED[name].raw
    assert canonical_form(raw, "avro-python") == apache_form(raw)
    assert '"type":{"type":"long"}' in canonical_form(raw, "avro-python")


def test_the_styles_agree_with_their_libraries_where_they_differ() -> None:
    """On a schema with every disputed construct: standard = fastavro, avro-python =
    Apache avro (named types written in full at each use, every annotated primitive an
    object)."""
    assert canonical_form(ODD_SCHEMA) == to_parsing_canonical_form(ODD_SCHEMA)
    assert canonical_form(ODD_SCHEMA, "avro-python") == apache_form(ODD_SCHEMA)
    assert canonical_form(ODD_SCHEMA, "avro-python").count('"size":16') == 2
    assert canonical_form(ODD_SCHEMA).count('"size":16') == 1


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_released_version_has_its_pinned_fingerprints(name: str) -> None:
    """Standard, avro-python and goavro fingerprints of each released version, pinned."""
    found = {style: value.hex() for style, value in fingerprints(SHIPPED[name].raw).items()}
    standard, logical = PINNED[name]
    assert found == {"standard": standard, "avro-python": logical, "goavro": logical}


def test_the_fingerprint_is_the_crc_of_the_form_little_endian() -> None:
    """fingerprint() = CRC-64-AVRO of the form, 8 bytes little-endian (the framed order)."""
    raw = SHIPPED["points_adjustment_requested.v2"].raw
    assert fingerprint(raw).hex() == PINNED["points_adjustment_requested.v2"][0]


def test_docs_list_every_pinned_fingerprint() -> None:
    """docs/schemas.md shows each pinned fingerprint, spaced as bytes."""
    page = (Path(__file__).parents[2] / "docs" / "schemas.md").read_text(encoding="utf-8")
    for pair in PINNED.values():
        for value in pair:
            spaced = " ".join(value[i : i + 2] for i in range(0, 16, 2))
            assert spaced in page, spaced


@pytest.mark.parametrize("version", [1, 2])
def test_a_command_framed_by_apache_avro_python_is_read(version: int) -> None:
    """A command written by Apache avro-python (DatumWriter), framed C3 01 + the library's
    own CRC-64-AVRO fingerprint: the service reads it (the fingerprint is not the standard
    one)."""
    raw = SHIPPED[f"points_adjustment_requested.v{version}"].raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = avro.schema.parse(json.dumps(raw))
    record: dict[str, Any] = {
        "idempotency_key": "py-1",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": -40,
        "adjustment_type_code": "CORRECTION",
        "adjustment_reason": "Double credit",
        "adjusted_by": "agent-7",
        "correlation_id": "corr-py",
        "requested_by": "python-service",
        "occurred_at": datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC),
        "metadata": {"case": "9"},
    }
    if version == 2:
        record["channel"] = "web"
    out = io.BytesIO()
    avro.io.DatumWriter(parsed).write(record, avro.io.BinaryEncoder(out))
    framed = b"\xc3\x01" + parsed.fingerprint("CRC-64-AVRO") + out.getvalue()
    assert framed[2:10] != fingerprint(raw)  # not the standard fingerprint
    decoded = command_decoder(AvroCodec.from_directory())(framed)
    assert isinstance(decoded, DecodedCommand), decoded
    assert (decoded.idempotency_key, decoded.points_to_adjust) == ("py-1", -40)
    assert decoded.occurred_at == record["occurred_at"]
    assert decoded.channel == record.get("channel")
