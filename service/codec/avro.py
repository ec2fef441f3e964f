"""Avro single-object encoding of the project's records, on fastavro.

A framed record is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form + the Avro binary body (Avro specification,
"Single-object encoding"). The fingerprint names the writer schema, so no registry is needed
to read a record: the decoder knows every schema it was built with, the current ones and
every released version (``schemas/released``). A record is written with the current schema
and read with writer/reader resolution: the writer schema its fingerprint names, resolved to
the current schema of the same full name (Avro specification, "Schema Resolution"), so a
record of an older or newer compatible version reads as the current version.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from service.codec.crc64 import crc64_avro
from service.codec.released import (
    SCHEMA_STEMS,
    current_schemas,
    default_schema_dir,
    released_schemas,
)
from service.errors import UndecodableRecordError

__all__ = [
    "COMMAND",
    "COMPLETED",
    "FAILED",
    "HEADER_SIZE",
    "MAGIC",
    "SCHEMA_FILES",
    "AvroCodec",
    "SchemaEntry",
    "default_schema_dir",
    "schema_fingerprint",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

COMMAND = "loyalty.points.adjustment.v1.PointsAdjustmentRequested"
COMPLETED = "loyalty.points.adjustment.v1.PointsAdjustmentCompleted"
FAILED = "loyalty.points.adjustment.v1.PointsAdjustmentFailed"

SCHEMA_FILES = tuple(f"{stem}.avsc" for stem in SCHEMA_STEMS)


@dataclass(frozen=True)
class SchemaEntry:
    """One known schema: its full name, parsed form and fingerprint."""

    name: str
    parsed: Any
    fingerprint: int

    @property
    def fingerprint_bytes(self) -> bytes:
        return self.fingerprint.to_bytes(8, "little")


def schema_fingerprint(parsed: Any) -> int:
    """CRC-64-AVRO of the Parsing Canonical Form of a parsed schema."""
    canonical: str = to_parsing_canonical_form(parsed)
    return crc64_avro(canonical.encode("utf-8"))


class AvroCodec:
    """Encodes records by schema name; decodes any record framed with a known schema."""

    def __init__(
        self,
        schemas: Iterable[Mapping[str, Any]],
        writers: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """``schemas``: the current schemas (written with, and read into); ``writers``: other
        schemas records may have been written with (older or newer versions of them)."""
        self._by_name: dict[str, SchemaEntry] = {}
        self._by_fingerprint: dict[bytes, SchemaEntry] = {}
        for raw in schemas:
            entry = _entry(raw)
            self._by_name[entry.name] = entry
            self._by_fingerprint[entry.fingerprint_bytes] = entry
        for raw in writers:
            entry = _entry(raw)
            self._by_fingerprint.setdefault(entry.fingerprint_bytes, entry)

    @classmethod
    def from_directory(cls, directory: Path | Traversable | None = None) -> AvroCodec:
        """The current schemas of ``directory`` (the shipped ones by default), and every
        released version of them as writers."""
        current = [item.raw for item in current_schemas(directory)]
        return cls(current, [item.raw for item in released_schemas(directory)])

    def entry(self, name: str) -> SchemaEntry:
        return self._by_name[name]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Frame ``record`` with the single-object header of schema ``name``."""
        entry = self._by_name[name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(entry.fingerprint_bytes)
        fastavro.schemaless_writer(out, entry.parsed, dict(record))
        return out.getvalue()

    def decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        """Return ``(schema name, record)``; raise ``UndecodableRecordError`` with a reason."""
        if not data:
            raise UndecodableRecordError("EMPTY_RECORD", "the record has no value")
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise UndecodableRecordError(
                "NOT_SINGLE_OBJECT_ENCODED",
                "the value does not start with the Avro single-object marker C3 01",
            )
        writer = self._by_fingerprint.get(data[2:HEADER_SIZE])
        if writer is None:
            raise UndecodableRecordError(
                "UNKNOWN_SCHEMA",
                f"no known schema has fingerprint {data[2:HEADER_SIZE].hex()}",
            )
        reader = self._by_name.get(writer.name, writer)
        body = io.BytesIO(data[HEADER_SIZE:])
        try:
            record = fastavro.schemaless_reader(
                body, writer.parsed, None if reader is writer else reader.parsed
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise UndecodableRecordError(
                "CORRUPT_AVRO", f"the body does not match {writer.name}: {type(exc).__name__}"
            ) from exc
        if body.tell() != len(data) - HEADER_SIZE:
            raise UndecodableRecordError(
                "CORRUPT_AVRO", f"{len(data) - HEADER_SIZE - body.tell()} trailing bytes"
            )
        if not isinstance(record, dict):
            raise UndecodableRecordError("CORRUPT_AVRO", "the body is not a record")
        return writer.name, record


def _entry(raw: Mapping[str, Any]) -> SchemaEntry:
    parsed = fastavro.parse_schema(dict(raw), named_schemas={})
    if not isinstance(parsed, dict):
        raise TypeError("a top-level schema must be a record")
    return SchemaEntry(str(parsed["name"]), parsed, schema_fingerprint(parsed))
