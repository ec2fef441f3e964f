"""Settings of the PAS sandbox.

Every choice the contract marks [ours] (limits, allowed type codes, the path prefix) is a
field here, so tests and the demo can tighten or loosen the sandbox without code changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MAX_POINTS = 1_000_000
DEFAULT_TYPE_CODES: frozenset[str] = frozenset({"GOODWILL", "CORRECTION", "PROMO", "REVERSAL"})
DEFAULT_MAX_BODY_BYTES = 64 * 1024

TYPE_CODE_PATTERN = re.compile(r"[A-Z0-9_]{1,20}")
"""The shape every ``adjustmentTypeCode`` must have, before the allowed-set check."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox listens and which requests it accepts.

    Attributes:
        host: interface to bind.
        port: TCP port; 0 asks the OS for a free one (read it back from the running
            sandbox's ``base_url``).
        latency_ms: fixed delay added before a valid adjustment is applied.
        max_points: largest accepted absolute value of ``pointsToAdjust``.
        allowed_type_codes: the ``adjustmentTypeCode`` values PAS accepts.
        unknown_accounts: account numbers answered with 404 ``ACCOUNT_NOT_FOUND``; every
            other well-formed account is treated as existing.
        max_body_bytes: request bodies larger than this are answered with 413.
        path_prefix: prepended to the PAS paths, ``""`` or e.g. ``"/loyalty"`` (no trailing
            slash). The admin routes under ``/_sandbox/`` are never prefixed.
    """

    host: str = "127.0.0.1"
    port: int = 8081
    latency_ms: float = 0
    max_points: int = DEFAULT_MAX_POINTS
    allowed_type_codes: frozenset[str] = DEFAULT_TYPE_CODES
    unknown_accounts: frozenset[str] = field(default_factory=frozenset)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    path_prefix: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, got {self.latency_ms}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be positive, got {self.max_points}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        if not self.allowed_type_codes:
            raise ValueError("allowed_type_codes must not be empty")
        malformed = sorted(c for c in self.allowed_type_codes if not TYPE_CODE_PATTERN.fullmatch(c))
        if malformed:
            raise ValueError(f"allowed_type_codes must match [A-Z0-9_]{{1,20}}: {malformed}")
        prefix = self.path_prefix
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(
                f"path_prefix must be empty or start with '/' and not end with '/', got {prefix!r}"
            )
        if prefix == "/_sandbox" or prefix.startswith("/_sandbox/"):
            raise ValueError("path_prefix must not shadow the /_sandbox admin routes")
