"""Avro encoding of the project's records, on fastavro: both framings, and schema resolution.

A record is framed (``service.codec.framing``) as Avro single-object encoding, ``C3 01`` +
the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical
Form + the Avro binary body (Avro specification, "Single-object encoding"), or in the
Confluent wire format, ``00`` + the registry's 4-byte schema id + the body.

The codec writes with the current schemas (``schemas/<name>.avsc``), single-object unless a
schema was given a registry id (:meth:`AvroCodec.with_schema_ids`). It reads a single-object
record whose fingerprint is any known schema's: the current ones and every released version
(``schemas/released``), each under its standard fingerprint and the non-standard ones of
popular libraries (``service.codec.fingerprints``), so no registry is needed for those; and
a Confluent record whose id it was given a schema for. A record is read with writer/reader
resolution (Avro specification, "Schema Resolution"): the writer schema its header names,
resolved to the current schema of the same full name, so a record of an older or newer
compatible version reads as the current version.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import fastavro

from service.codec.fingerprints import fingerprints
from service.codec.framing import (
    SINGLE_OBJECT_HEADER,
    SINGLE_OBJECT_MAGIC,
    Frame,
    confluent_header,
    read_frame,
    single_object_header,
)
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
    "parse_entry",
    "schema_fingerprint",
]

MAGIC = SINGLE_OBJECT_MAGIC
HEADER_SIZE = SINGLE_OBJECT_HEADER

COMMAND = "loyalty.points.adjustment.v1.PointsAdjustmentRequested"
COMPLETED = "loyalty.points.adjustment.v1.PointsAdjustmentCompleted"
FAILED = "loyalty.points.adjustment.v1.PointsAdjustmentFailed"

SCHEMA_FILES = tuple(f"{stem}.avsc" for stem in SCHEMA_STEMS)


@dataclass(frozen=True)
class SchemaEntry:
    """One known schema: its full name, parsed form, standard fingerprint, and its JSON."""

    name: str
    parsed: Any
    fingerprint: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The schema's JSON as given (for its canonical forms and for registering it)."""

    @property
    def fingerprint_bytes(self) -> bytes:
        """The standard fingerprint as a single-object header carries it."""
        return self.fingerprint.to_bytes(8, "little")

    def all_fingerprints(self) -> set[bytes]:
        """The standard fingerprint and the non-standard ones (``fingerprints``)."""
        return set(fingerprints(self.raw).values()) | {self.fingerprint_bytes}

    @property
    def text(self) -> str:
        """The schema as compact JSON text (what is registered)."""
        return json.dumps(self.raw, separators=(",", ":"), ensure_ascii=False)


def schema_fingerprint(parsed: Any) -> int:
    """CRC-64-AVRO of the Parsing Canonical Form of a schema (its standard fingerprint)."""
    return int.from_bytes(fingerprints(parsed)["standard"], "little")


def parse_entry(raw: Mapping[str, Any]) -> SchemaEntry:
    """A schema's JSON as a :class:`SchemaEntry`; ``ValueError`` when it is not a record
    schema fastavro accepts."""
    try:
        parsed = fastavro.parse_schema(dict(raw), named_schemas={})
    except Exception as exc:  # fastavro raises many types on a bad schema
        raise ValueError(f"not a valid Avro schema: {type(exc).__name__}: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") not in ("record", "error"):
        raise ValueError("a top-level schema must be a record")
    return SchemaEntry(str(parsed["name"]), parsed, schema_fingerprint(raw), dict(raw))


class AvroCodec:
    """Encodes records by schema name; decodes any record framed with a known schema."""

    def __init__(
        self,
        schemas: Iterable[Mapping[str, Any]],
        writers: Iterable[Mapping[str, Any]] = (),
        *,
        schema_ids: Mapping[str, int] | None = None,
    ) -> None:
        """``schemas``: the current schemas (written with, and read into); ``writers``: other
        schemas records may have been written with (older or newer versions of them);
        ``schema_ids``: the registry id of some of the current schemas, by full name: those
        are written in the Confluent wire format."""
        self._by_name: dict[str, SchemaEntry] = {}
        self._by_fingerprint: dict[bytes, SchemaEntry] = {}
        for raw in schemas:
            entry = parse_entry(raw)
            self._by_name[entry.name] = entry
            self._by_fingerprint[entry.fingerprint_bytes] = entry
        for raw in writers:
            self.add_writer(parse_entry(raw))
        for entry in list(self._by_name.values()):
            self.add_writer(entry)
        self._ids: dict[str, int] = dict(schema_ids or {})
        self._by_id: dict[int, SchemaEntry] = {
            schema_id: self._by_name[name] for name, schema_id in self._ids.items()
        }

    @classmethod
    def from_directory(cls, directory: Path | Traversable | None = None) -> AvroCodec:
        """The current schemas of ``directory`` (the shipped ones by default), and every
        released version of them as writers."""
        current = [item.raw for item in current_schemas(directory)]
        return cls(current, [item.raw for item in released_schemas(directory)])

    def with_schema_ids(self, schema_ids: Mapping[str, int]) -> AvroCodec:
        """This codec writing the schemas of ``schema_ids`` (full name → registry id) in the
        Confluent wire format; it reads those ids too."""
        twin = object.__new__(AvroCodec)
        twin._by_name = self._by_name
        twin._by_fingerprint = self._by_fingerprint
        twin._ids = {**self._ids, **schema_ids}
        twin._by_id = {**self._by_id}
        for name, schema_id in schema_ids.items():
            twin._by_id[schema_id] = self._by_name[name]
        return twin

    def add_writer(self, entry: SchemaEntry) -> None:
        """Know ``entry`` as a writer schema under each of its fingerprints (a fingerprint
        already known keeps its schema)."""
        for value in entry.all_fingerprints():
            self._by_fingerprint.setdefault(value, entry)

    def entry(self, name: str) -> SchemaEntry:
        return self._by_name[name]

    def writer(self, fingerprint: bytes) -> SchemaEntry | None:
        """The known writer schema framed with ``fingerprint``, if any."""
        return self._by_fingerprint.get(fingerprint)

    def expected_fingerprints(self, name: str) -> list[str]:
        """The fingerprints (hex, as framed) records of schema ``name`` may carry."""
        found = sorted(
            {value.hex() for value, entry in self._by_fingerprint.items() if entry.name == name}
        )
        return found

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Frame ``record`` with the header of schema ``name``: Confluent when the codec was
        given its registry id, single-object otherwise."""
        entry = self._by_name[name]
        out = io.BytesIO()
        schema_id = self._ids.get(name)
        if schema_id is None:
            out.write(single_object_header(entry.fingerprint_bytes))
        else:
            out.write(confluent_header(schema_id))
        fastavro.schemaless_writer(out, entry.parsed, dict(record))
        return out.getvalue()

    def decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        """Return ``(schema name, record)``; raise ``UndecodableRecordError`` with a reason."""
        frame = read_frame(data)
        if frame.framing == "confluent":
            writer = self._by_id.get(frame.schema_id)
            if writer is None:
                raise UndecodableRecordError(
                    "UNKNOWN_SCHEMA_ID",
                    f"starts with 00: the Confluent wire format, schema id {frame.schema_id},"
                    " which this reader was given no schema for (it reads the ids of:"
                    f" {_ids_text(self._by_id)})",
                )
        else:
            writer = self._by_fingerprint.get(frame.fingerprint)
            if writer is None:
                raise UndecodableRecordError(
                    "UNKNOWN_SCHEMA",
                    f"no known schema has fingerprint {frame.fingerprint.hex()}",
                )
        return writer.name, self.read(writer, frame)

    def read(self, writer: SchemaEntry, frame: Frame) -> dict[str, Any]:
        """The body of ``frame`` written with ``writer``, resolved to the current schema of
        the same full name (or read as written when there is none)."""
        reader = self._by_name.get(writer.name, writer)
        body = io.BytesIO(frame.data)
        body.seek(frame.offset)
        try:
            record = fastavro.schemaless_reader(
                body, writer.parsed, None if reader is writer else reader.parsed
            )
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise UndecodableRecordError(
                "CORRUPT_AVRO",
                f"the body does not match {writer.name} ({frame.names()}): {type(exc).__name__}",
            ) from exc
        if body.tell() != len(frame.data):
            raise UndecodableRecordError(
                "CORRUPT_AVRO", f"{len(frame.data) - body.tell()} trailing bytes"
            )
        if not isinstance(record, dict):
            raise UndecodableRecordError("CORRUPT_AVRO", "the body is not a record")
        return record


def _ids_text(by_id: Mapping[int, SchemaEntry]) -> str:
    if not by_id:
        return "none"
    return ", ".join(f"{schema_id} ({entry.name})" for schema_id, entry in sorted(by_id.items()))
