"""Reading Mastercard's error envelope: ``{"Errors": {"Error": [{...}, ...]}}``."""

from __future__ import annotations

import json
from typing import Any

from service.domain.outcome import ErrorDetail

MAX_DESCRIPTION = 500


def parse_envelope(body: bytes) -> tuple[ErrorDetail, ...]:
    """The envelope's entries; an empty tuple when the body is not an envelope."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a hostile answer nesting deeply
        return ()
    if not isinstance(document, dict):
        return ()
    errors = document.get("Errors")
    entries: Any = errors.get("Error") if isinstance(errors, dict) else None
    if isinstance(entries, dict):  # some gateways send a single object
        entries = [entries]
    if not isinstance(entries, list):
        return ()
    details: list[ErrorDetail] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        recoverable = entry.get("Recoverable")
        details.append(
            ErrorDetail(
                source=str(entry.get("Source") or "unknown"),
                reason_code=str(entry.get("ReasonCode") or "UNKNOWN"),
                description=str(entry.get("Description") or "")[:MAX_DESCRIPTION],
                recoverable=recoverable is True or recoverable == "true",
                field=_field_of(entry.get("Details")),
            )
        )
    return tuple(details)


def _field_of(details: Any) -> str | None:
    if isinstance(details, str) and details:
        return details[:100]
    return None
