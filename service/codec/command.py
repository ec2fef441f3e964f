"""Reading a command record's value: a typed decoded command, or why it cannot be read.

The one place where a command's Avro record becomes a domain value. The record's framing is
told from its first bytes (``service.codec.framing``); its writer schema is the one its
header names (a shipped schema by fingerprint, or the registry's by id or by fingerprint:
``service.codec.writers``), resolved to the current command schema, and only the command
schema is accepted, so the record holds exactly the current command's fields with the types
that schema gives them (a value of another type does not decode: ``CORRUPT_AVRO``; a field
the writer did not have takes its default).

A writer schema to be fetched from the registry first makes the value ``Unresolved``:
:meth:`CommandDecoder.prepare` fetches it (or raises while the registry cannot answer), and
decoding again then gives the command, or why it cannot be read.
"""

from __future__ import annotations

from service.codec.avro import COMMAND, AvroCodec, SchemaEntry
from service.codec.framing import Frame, read_frame
from service.codec.writers import Missing, RegistryWriters
from service.domain.inbound import Decoded, DecodedCommand, Undecodable, Unresolved
from service.errors import UndecodableRecordError


class CommandDecoder:
    """Decodes command record values with ``codec`` (and the registry's schemas, through
    ``writers``, when one is configured); never raises for what a value holds."""

    def __init__(self, codec: AvroCodec, writers: RegistryWriters | None = None) -> None:
        self._codec = codec
        self._writers = writers

    async def prepare(self, value: bytes | None) -> None:
        """Fetch the writer schema ``value`` needs from the registry, if any; raise
        ``RegistryError`` (``RegistryUnavailable`` when unreachable) while it cannot be had."""
        if self._writers is None:
            return
        try:
            frame = read_frame(value)
        except UndecodableRecordError:
            return  # nothing to fetch: decoding says why
        await self._writers.fetch(frame)

    def __call__(self, value: bytes | None) -> Decoded:
        try:
            frame = read_frame(value)
        except UndecodableRecordError as exc:
            return Undecodable(exc.reason, exc.detail)
        writer = self._writer(frame)
        if not isinstance(writer, SchemaEntry):
            return writer
        try:
            record = self._codec.read(writer, frame)
        except UndecodableRecordError as exc:
            return Undecodable(exc.reason, exc.detail)
        if writer.name != COMMAND:
            return Undecodable(
                "UNEXPECTED_SCHEMA",
                f"a {writer.name} ({frame.names()}) is not a command ({COMMAND})",
            )
        return DecodedCommand(
            idempotency_key=record["idempotency_key"],
            bank_account_number=record["bank_account_number"],
            points_to_adjust=record["points_to_adjust"],
            adjustment_type_code=record["adjustment_type_code"],
            adjustment_reason=record["adjustment_reason"],
            adjusted_by=record["adjusted_by"],
            correlation_id=record["correlation_id"],
            requested_by=record["requested_by"],
            occurred_at=record["occurred_at"],
            metadata=record["metadata"],
            channel=record.get("channel"),
        )

    def _writer(self, frame: Frame) -> SchemaEntry | Undecodable | Unresolved:
        if frame.framing == "confluent":
            return self._registered(frame)
        writer = self._codec.writer(frame.fingerprint)
        if writer is not None:
            return writer
        if self._writers is not None and self._writers.needs_scan(frame.fingerprint):
            return Unresolved(frame.names())
        expected = ", ".join(self._codec.expected_fingerprints(COMMAND))
        if self._writers is None:
            further = "; no schema registry is configured to look further (PA_SCHEMA_REGISTRY__URL)"
        else:
            further = (
                f"; nor has any of the {self._writers.scanned_versions()} versions registered"
                f" under {self._writers.subject} at {self._writers.where}"
            )
        return Undecodable(
            "UNKNOWN_SCHEMA",
            f"starts with C3 01: Avro single-object encoding with {frame.names()}, which no known"
            f" schema has; a command's is one of {expected} (every released version, standard"
            f" and avro-python/goavro fingerprints){further}",
        )

    def _registered(self, frame: Frame) -> SchemaEntry | Undecodable | Unresolved:
        """The writer schema of a Confluent frame: the registry's, by id."""
        if self._writers is None:
            return Undecodable(
                "CONFLUENT_WITHOUT_REGISTRY",
                f"starts with 00: the Confluent wire format ({frame.names()}), but no schema"
                " registry is configured (PA_SCHEMA_REGISTRY__URL)",
            )
        found = self._writers.by_id(frame.schema_id)
        if found is None:
            return Unresolved(frame.names())
        if isinstance(found, Missing):
            return Undecodable(found.reason, found.detail)
        return found
