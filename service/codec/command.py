"""Reading a command record's value: a typed decoded command, or why it cannot be read.

The one place where a command's Avro record becomes a domain value. The writer schema is
the one the record's fingerprint names, resolved to the current command schema, and only the
command schema is accepted, so the record holds exactly the current command's fields with
the types that schema gives them (a value of another type does not decode: ``CORRUPT_AVRO``;
a field the writer did not have takes its default).
"""

from __future__ import annotations

from service.codec.avro import COMMAND, AvroCodec
from service.domain.inbound import Decoded, DecodedCommand, Undecodable
from service.errors import UndecodableRecordError


class CommandDecoder:
    """Decodes command record values with ``codec``; never raises for what a value holds."""

    def __init__(self, codec: AvroCodec) -> None:
        self._codec = codec

    def __call__(self, value: bytes | None) -> Decoded:
        try:
            name, record = self._codec.decode(value)
        except UndecodableRecordError as exc:
            return Undecodable(exc.reason, exc.detail)
        if name != COMMAND:
            return Undecodable("UNEXPECTED_SCHEMA", f"a {name} is not a command")
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
