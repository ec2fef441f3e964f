"""The sandbox's own check of a plaintext points-adjustment request.

The rules are the contract's table (docs/pas.md): all five fields mandatory, nothing
else allowed. Every problem becomes one :class:`FieldError`, so a request with three bad
fields is answered with three entries in the error envelope, each naming its field in
``Details``. A field sent as JSON ``null`` counts as missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pa_devkit.sandbox.config import DEFAULT_MAX_POINTS, DEFAULT_TYPE_CODES, TYPE_CODE_PATTERN
from pa_devkit.sandbox.envelope import ErrorItem, ReasonCode

BANK_ACCOUNT_NUMBER = "bankAccountNumber"
POINTS_TO_ADJUST = "pointsToAdjust"
ADJUSTMENT_TYPE_CODE = "adjustmentTypeCode"
ADJUSTMENT_REASON = "adjustmentReason"
ADJUSTED_BY = "adjustedBy"

FIELDS: tuple[str, ...] = (
    BANK_ACCOUNT_NUMBER,
    POINTS_TO_ADJUST,
    ADJUSTMENT_TYPE_CODE,
    ADJUSTMENT_REASON,
    ADJUSTED_BY,
)
"""The mandatory fields, in the order their errors are reported."""

MAX_ACCOUNT_DIGITS = 30
MAX_REASON_CHARS = 256
MAX_ADJUSTED_BY_CHARS = 64

# [0-9], not \d: \d also matches non-ASCII digits such as Arabic-Indic ones.
_ACCOUNT_PATTERN = re.compile(rf"[0-9]{{1,{MAX_ACCOUNT_DIGITS}}}")


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """The configurable limits of the check."""

    max_points: int = DEFAULT_MAX_POINTS
    allowed_type_codes: frozenset[str] = DEFAULT_TYPE_CODES


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of the request."""

    field: str
    reason_code: ReasonCode
    description: str

    def to_error_item(self) -> ErrorItem:
        """The envelope entry for this problem; ``Details`` names the field."""
        return ErrorItem(self.reason_code, self.description, details=self.field)


@dataclass(frozen=True, slots=True)
class AdjustmentRequest:
    """A request that passed every check."""

    bank_account_number: str
    points_to_adjust: int
    adjustment_type_code: str
    adjustment_reason: str
    adjusted_by: str


class InvalidAdjustmentError(ValueError):
    """The request broke one or more rules; ``errors`` lists them all."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(", ".join(f"{e.field}: {e.reason_code}" for e in errors))
        self.errors = errors


def validate_adjustment(
    payload: Mapping[str, object], rules: ValidationRules | None = None
) -> list[FieldError]:
    """Every rule the payload breaks, in field order then unknown fields; empty when valid."""
    rules = rules or ValidationRules()
    errors: list[FieldError] = []
    for name in FIELDS:
        value = payload.get(name)
        if value is None:
            errors.append(FieldError(name, ReasonCode.MISSING_FIELD, f"{name} is mandatory"))
            continue
        problem = _check_field(name, value, rules)
        if problem is not None:
            errors.append(problem)
    errors.extend(
        FieldError(name, ReasonCode.UNKNOWN_FIELD, f"{name} is not a field of this request")
        for name in sorted(set(payload) - set(FIELDS))
    )
    return errors


def parse_adjustment(
    payload: Mapping[str, object], rules: ValidationRules | None = None
) -> AdjustmentRequest:
    """The validated request, or :class:`InvalidAdjustmentError` listing every problem."""
    errors = validate_adjustment(payload, rules)
    if errors:
        raise InvalidAdjustmentError(errors)
    # validate_adjustment has checked each type; the asserts narrow them for mypy.
    account = payload[BANK_ACCOUNT_NUMBER]
    points = payload[POINTS_TO_ADJUST]
    type_code = payload[ADJUSTMENT_TYPE_CODE]
    reason = payload[ADJUSTMENT_REASON]
    adjusted_by = payload[ADJUSTED_BY]
    assert isinstance(account, str)
    assert isinstance(points, int)
    assert isinstance(type_code, str)
    assert isinstance(reason, str)
    assert isinstance(adjusted_by, str)
    return AdjustmentRequest(account, points, type_code, reason, adjusted_by)


def is_valid_account_number(value: str) -> bool:
    """True for a string of 1 to 30 ASCII digits."""
    return _ACCOUNT_PATTERN.fullmatch(value) is not None


def _check_field(name: str, value: object, rules: ValidationRules) -> FieldError | None:
    if name == BANK_ACCOUNT_NUMBER:
        return _check_account(value)
    if name == POINTS_TO_ADJUST:
        return _check_points(value, rules.max_points)
    if name == ADJUSTMENT_TYPE_CODE:
        return _check_type_code(value, rules.allowed_type_codes)
    if name == ADJUSTMENT_REASON:
        return _check_text(name, value, MAX_REASON_CHARS, ReasonCode.INVALID_ADJUSTMENT_REASON)
    return _check_text(name, value, MAX_ADJUSTED_BY_CHARS, ReasonCode.INVALID_ADJUSTED_BY)


def _check_account(value: object) -> FieldError | None:
    if isinstance(value, str) and is_valid_account_number(value):
        return None
    return FieldError(
        BANK_ACCOUNT_NUMBER,
        ReasonCode.INVALID_BANK_ACCOUNT_NUMBER,
        f"{BANK_ACCOUNT_NUMBER} must be a string of 1 to {MAX_ACCOUNT_DIGITS} digits",
    )


def _check_points(value: object, max_points: int) -> FieldError | None:
    # bool is a subclass of int in Python, but JSON true/false are not numbers.
    if not isinstance(value, int) or isinstance(value, bool):
        description = f"{POINTS_TO_ADJUST} must be an integer"
    elif value == 0:
        description = f"{POINTS_TO_ADJUST} must not be zero"
    elif abs(value) > max_points:
        description = f"{POINTS_TO_ADJUST} must be within -{max_points}..{max_points}"
    else:
        return None
    return FieldError(POINTS_TO_ADJUST, ReasonCode.INVALID_POINTS, description)


def _check_type_code(value: object, allowed: frozenset[str]) -> FieldError | None:
    if not isinstance(value, str) or TYPE_CODE_PATTERN.fullmatch(value) is None:
        description = f"{ADJUSTMENT_TYPE_CODE} must match [A-Z0-9_]{{1,20}}"
    elif value not in allowed:
        description = f"{ADJUSTMENT_TYPE_CODE} must be one of {', '.join(sorted(allowed))}"
    else:
        return None
    return FieldError(ADJUSTMENT_TYPE_CODE, ReasonCode.INVALID_ADJUSTMENT_TYPE_CODE, description)


def _check_text(
    name: str, value: object, max_chars: int, reason_code: ReasonCode
) -> FieldError | None:
    if isinstance(value, str) and 1 <= len(value) <= max_chars:
        return None
    return FieldError(name, reason_code, f"{name} must be a string of 1 to {max_chars} characters")
