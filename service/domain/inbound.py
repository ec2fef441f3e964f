"""What a command record is once read: a decoded command, or the reason it cannot be read.

The Kafka adapter decodes each record's value once (``service.codec.command``) and hands the
processor one of these typed values; nothing of the wire format (Avro, a dict of fields)
reaches the domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime


@dataclass(frozen=True, slots=True)
class DecodedCommand:
    """A command's fields as read, not yet validated.

    Each field has the type the command's Avro schema gives it (the reader guarantees it:
    a value of another type does not decode), but any value of that type: texts of any
    length and content, any 64-bit number, any instant. :func:`service.domain.command.
    validate_command` decides whether the values make a valid command.
    """

    idempotency_key: str
    bank_account_number: str
    points_to_adjust: int
    adjustment_type_code: str
    adjustment_reason: str
    adjusted_by: str
    correlation_id: str
    requested_by: str
    occurred_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    """As read: possibly huge. Never mutated by the service."""
    channel: str | None = None
    """Since version 2 of the command schema; None when absent (a version 1 writer)."""


COMMAND_FIELDS: tuple[str, ...] = tuple(item.name for item in fields(DecodedCommand))
"""The names of a command's fields, in the schema's order."""


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record whose value is not a readable command: why (a reason code) and in words."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A record whose writer schema is not at hand yet (``what`` names it: a schema id, a
    fingerprint): it is to be fetched (``Processor.prepare``) before the record can be read.
    Never a reason to dead-letter: while it cannot be fetched, the record waits."""

    what: str


Decoded = DecodedCommand | Undecodable | Unresolved
"""What decoding one command record gives."""
