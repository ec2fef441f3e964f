"""The points-adjustment command and its validation rules (docs: pas-api.md)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

OUR_SOURCE = "points-adjuster"

ACCOUNT_PATTERN = re.compile(r"[0-9]{1,30}")
TYPE_CODE_PATTERN = re.compile(r"[A-Z0-9_]{1,20}")
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")

# One reason code per field, used in failed outcomes and metrics.
FIELD_REASONS: dict[str, str] = {
    "idempotency_key": "INVALID_IDEMPOTENCY_KEY",
    "bank_account_number": "INVALID_BANK_ACCOUNT_NUMBER",
    "points_to_adjust": "INVALID_POINTS",
    "adjustment_type_code": "INVALID_ADJUSTMENT_TYPE_CODE",
    "adjustment_reason": "INVALID_ADJUSTMENT_REASON",
    "adjusted_by": "INVALID_ADJUSTED_BY",
    "correlation_id": "INVALID_CORRELATION_ID",
    "requested_by": "INVALID_REQUESTED_BY",
    "occurred_at": "INVALID_OCCURRED_AT",
    "metadata": "INVALID_METADATA",
}


@dataclass(frozen=True)
class CommandRules:
    """The configurable limits of a valid command."""

    max_points: int
    allowed_type_codes: frozenset[str]


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field of a command."""

    field: str
    reason_code: str
    description: str


class AdjustmentCommand(BaseModel):
    """A decoded, validated command."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    idempotency_key: str = Field(pattern=f"^{IDEMPOTENCY_KEY_PATTERN.pattern}$")
    bank_account_number: str = Field(pattern=r"^[0-9]{1,30}$")
    points_to_adjust: int
    adjustment_type_code: str = Field(pattern=r"^[A-Z0-9_]{1,20}$")
    adjustment_reason: str = Field(min_length=1, max_length=256)
    adjusted_by: str = Field(min_length=1, max_length=64)
    correlation_id: str = Field(min_length=1, max_length=128)
    requested_by: str = Field(min_length=1, max_length=128)
    occurred_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("adjustment_reason", "adjusted_by")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def fingerprint(self) -> str:
        """SHA-256 over the business fields: what makes two commands 'the same request'."""
        return business_fingerprint(self.model_dump())


BUSINESS_FIELDS = (
    "bank_account_number",
    "points_to_adjust",
    "adjustment_type_code",
    "adjustment_reason",
    "adjusted_by",
)


def business_fingerprint(raw: Mapping[str, Any]) -> str:
    """SHA-256 over the five PAS fields of a command, valid or not."""
    body = json.dumps(
        [raw.get(name) for name in BUSINESS_FIELDS], separators=(",", ":"), default=str
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def validate_command(
    raw: Mapping[str, Any], rules: CommandRules
) -> AdjustmentCommand | list[FieldError]:
    """Return the valid command, or every field error found (never raises on bad input)."""
    errors: list[FieldError] = []
    command: AdjustmentCommand | None = None
    try:
        command = AdjustmentCommand.model_validate(dict(raw))
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            field = str(problem["loc"][0]) if problem["loc"] else "command"
            errors.append(
                FieldError(field, FIELD_REASONS.get(field, "INVALID_FIELD"), problem["msg"])
            )
    points = raw.get("points_to_adjust")
    if isinstance(points, int) and not isinstance(points, bool):
        if points == 0:
            errors.append(FieldError("points_to_adjust", "INVALID_POINTS", "must not be zero"))
        elif abs(points) > rules.max_points:
            errors.append(
                FieldError(
                    "points_to_adjust",
                    "INVALID_POINTS",
                    f"absolute value must be at most {rules.max_points}",
                )
            )
    code = raw.get("adjustment_type_code")
    if (
        isinstance(code, str)
        and TYPE_CODE_PATTERN.fullmatch(code)
        and code not in rules.allowed_type_codes
    ):
        errors.append(
            FieldError(
                "adjustment_type_code",
                "INVALID_ADJUSTMENT_TYPE_CODE",
                f"{code!r} is not an allowed type code",
            )
        )
    if errors or command is None:
        return errors
    return command


def account_ref(account_number: str) -> str:
    """Opaque, stable account reference used as a record key and in outcomes."""
    return "acct-" + hashlib.sha256(account_number.encode("utf-8")).hexdigest()[:32]


def mask_account(account_number: str) -> str:
    """Mask all but the last four characters (fewer when the number is short)."""
    visible = min(4, max(len(account_number) - 4, 0))
    tail = account_number[-visible:] if visible else ""
    return "*" * (len(account_number) - visible) + tail


def identify(raw: Mapping[str, Any]) -> tuple[str, str, str]:
    """Best-effort (idempotency key, correlation id, requested_by) of a possibly invalid command."""

    def text(name: str) -> str:
        value = raw.get(name)
        return value if isinstance(value, str) else ""

    return text("idempotency_key"), text("correlation_id"), text("requested_by")
