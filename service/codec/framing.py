"""The framing of a record value, told from its first bytes.

==================  ============================================  ===========================
framing             header                                        names the writer schema by
==================  ============================================  ===========================
single-object       ``C3 01`` + 8 bytes                           its CRC-64-AVRO fingerprint
                                                                  (little-endian)
confluent           ``00`` + 4 bytes                              the registry's global id
                                                                  (big-endian)
==================  ============================================  ===========================

Then the Avro binary body. Anything else is refused with a reason naming what was expected
and what the value starts with; a header cut short says which framing it looks like.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from service.errors import UndecodableRecordError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4

Framing = Literal["single-object", "confluent"]

EXPECTED = (
    "expected Avro single-object encoding (C3 01 + an 8-byte schema fingerprint) or the"
    " Confluent wire format (00 + a 4-byte schema id)"
)


class Frame(NamedTuple):
    """A value's header read: its framing, what names the writer schema, and the body.

    A named tuple: one is made for every record read, and a frozen dataclass costs a
    microsecond more to build."""

    framing: Framing
    fingerprint: bytes
    """single-object: the 8 fingerprint bytes as framed; confluent: empty."""
    schema_id: int
    """confluent: the registry's schema id; single-object: -1."""
    data: bytes
    """The whole value; the body starts at ``offset`` (not copied out)."""
    offset: int

    @property
    def body_size(self) -> int:
        return len(self.data) - self.offset

    def names(self) -> str:
        """What names the writer schema, in words."""
        if self.framing == "confluent":
            return f"schema id {self.schema_id}"
        return f"fingerprint {self.fingerprint.hex()}"


def read_frame(data: bytes | None) -> Frame:
    """The frame of ``data``; raise ``UndecodableRecordError`` saying why there is none."""
    if not data:
        raise UndecodableRecordError("EMPTY_RECORD", "the record has no value")
    if data[:2] == SINGLE_OBJECT_MAGIC or data == SINGLE_OBJECT_MAGIC[:1]:
        if len(data) < SINGLE_OBJECT_HEADER:
            raise UndecodableRecordError(
                "TRUNCATED_FRAME",
                f"starts with {data[:2].hex(' ')}: Avro single-object encoding, whose header is"
                f" {SINGLE_OBJECT_HEADER} bytes (C3 01 + an 8-byte fingerprint); the value has"
                f" {len(data)}",
            )
        return Frame(
            "single-object", bytes(data[2:SINGLE_OBJECT_HEADER]), -1, data, SINGLE_OBJECT_HEADER
        )
    if data[:1] == CONFLUENT_MAGIC:
        if len(data) < CONFLUENT_HEADER:
            raise UndecodableRecordError(
                "TRUNCATED_FRAME",
                f"starts with 00: the Confluent wire format, whose header is {CONFLUENT_HEADER}"
                f" bytes (00 + a 4-byte schema id); the value has {len(data)}",
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER], "big")
        return Frame("confluent", b"", schema_id, data, CONFLUENT_HEADER)
    raise UndecodableRecordError(
        "UNKNOWN_FRAMING", f"{EXPECTED}; the value starts with {_looks_like(data)}"
    )


def _looks_like(data: bytes) -> str:
    head = data[:4].hex(" ")
    first = data[:1]
    if first in (b"{", b"["):
        return f"{head} (JSON text?)"
    if data[:2] == b"\xc3\x02" or first == b"\xc3":
        return f"{head} (C3 but not C3 01: another single-object version?)"
    if first == b"\x01" and data[1:2] == b"\xc3":
        return f"{head} (the single-object marker's bytes swapped?)"
    if data[:3] == b"Obj":
        return f"{head} (an Avro object container file, not one record)"
    return head


def single_object_header(fingerprint: bytes) -> bytes:
    """``C3 01`` + ``fingerprint`` (8 bytes, as framed)."""
    return SINGLE_OBJECT_MAGIC + fingerprint


def confluent_header(schema_id: int) -> bytes:
    """``00`` + ``schema_id`` as 4 bytes big-endian."""
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
