"""CRC-64-AVRO: the 64-bit Rabin fingerprint the Avro specification defines for schemas."""

from __future__ import annotations

EMPTY = 0xC15D213AA4D7A795


def _table() -> tuple[int, ...]:
    rows: list[int] = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        rows.append(fp)
    return tuple(rows)


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """Return the CRC-64-AVRO fingerprint of ``data`` as an unsigned 64-bit integer."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp
