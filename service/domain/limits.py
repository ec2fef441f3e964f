"""The size limits of a command: what the service accepts, and what it ever copies.

Every field the service copies into an outcome event or a header has a limit, so a hostile or
broken producer cannot make an outcome too large to publish (docs/pas.md for the PAS
fields; ours for the rest). A command past any limit fails validation, and the copies made of
an invalid command (``identify``, ``safe_metadata``) are cut to the same limits.

=====================  ===========================================  ============================
field                  limit                                        where it comes from
=====================  ===========================================  ============================
idempotency_key        1-128 printable ASCII characters, no space   ours (record key, store key)
bank_account_number    1-30 ASCII digits                            docs/pas.md
adjustment_reason      1-256 characters, not blank                  docs/pas.md
adjusted_by            1-64 characters, not blank                   docs/pas.md
correlation_id         1-128 characters                             ours (Correlation-Id header)
requested_by           1-128 characters                             ours
metadata               at most 32 entries                           ours
metadata key           at most 64 characters                        ours
metadata value         at most 256 characters                       ours
channel                absent (null), or 1-64 characters            ours (schema v2; never sent
                                                                    to PAS)
record                 at most ``max_record_bytes`` (key, value     setting
                       and headers; default 65,536)                 PA_PROCESSING__MAX_RECORD_BYTES
=====================  ===========================================  ============================

Characters are Python characters (code points), not bytes. The text fields (all but the key
and the account number, which have patterns of their own) refuse control, format and surrogate
characters (Unicode categories Cc, Cf and Cs): newlines, bidi overrides, zero-width joiners,
the BOM, lone surrogates.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

MAX_IDEMPOTENCY_KEY_CHARS: Final = 128
MAX_ACCOUNT_DIGITS: Final = 30
MAX_REASON_CHARS: Final = 256
MAX_ADJUSTED_BY_CHARS: Final = 64
MAX_CORRELATION_ID_CHARS: Final = 128
MAX_REQUESTED_BY_CHARS: Final = 128
MAX_METADATA_ENTRIES: Final = 32
MAX_METADATA_KEY_CHARS: Final = 64
MAX_METADATA_VALUE_CHARS: Final = 256
MAX_CHANNEL_CHARS: Final = 64
DEFAULT_MAX_RECORD_BYTES: Final = 65_536

TEXT_LIMITS: Final = MappingProxyType(
    {
        "idempotency_key": MAX_IDEMPOTENCY_KEY_CHARS,
        "bank_account_number": MAX_ACCOUNT_DIGITS,
        "adjustment_reason": MAX_REASON_CHARS,
        "adjusted_by": MAX_ADJUSTED_BY_CHARS,
        "correlation_id": MAX_CORRELATION_ID_CHARS,
        "requested_by": MAX_REQUESTED_BY_CHARS,
    }
)
"""The character limit of each string field of a command."""

REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})
"""Unicode categories refused in text fields and replaced in safe copies."""

CUT_MARKER: Final = "\u2026"
"""Ends a safe copy that was cut to its limit ("…"); it counts within the limit."""

REPLACEMENT: Final = "\ufffd"
"""Stands in a safe copy for each refused character."""
