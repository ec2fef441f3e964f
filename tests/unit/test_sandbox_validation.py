"""The sandbox's validation of a plaintext points-adjustment request (contract table)."""

from __future__ import annotations

from typing import Any

import pytest

from pa_devkit.sandbox.envelope import PAS_SOURCE, ReasonCode
from pa_devkit.sandbox.validation import (
    FIELDS,
    AdjustmentRequest,
    FieldError,
    InvalidAdjustmentError,
    ValidationRules,
    parse_adjustment,
    validate_adjustment,
)

MAX = 1_000_000


def valid_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bankAccountNumber": "1234567890123456000",
        "pointsToAdjust": 250,
        "adjustmentTypeCode": "GOODWILL",
        "adjustmentReason": "late delivery",
        "adjustedBy": "agent-42",
    }
    payload.update(overrides)
    return payload


ACCEPTED: list[tuple[str, str, Any]] = [
    ("account of 1 digit", "bankAccountNumber", "7"),
    ("account of 30 digits", "bankAccountNumber", "9" * 30),
    ("account with leading zeros", "bankAccountNumber", "0000123"),
    ("points at +max", "pointsToAdjust", MAX),
    ("points at -max", "pointsToAdjust", -MAX),
    ("points of 1", "pointsToAdjust", 1),
    ("points of -1 (debit)", "pointsToAdjust", -1),
    ("each allowed type code: CORRECTION", "adjustmentTypeCode", "CORRECTION"),
    ("each allowed type code: PROMO", "adjustmentTypeCode", "PROMO"),
    ("each allowed type code: REVERSAL", "adjustmentTypeCode", "REVERSAL"),
    ("reason of 1 char", "adjustmentReason", "x"),
    ("reason of 256 chars", "adjustmentReason", "r" * 256),
    ("reason of 256 non-ASCII chars", "adjustmentReason", "é" * 256),
    ("adjustedBy of 1 char", "adjustedBy", "a"),
    ("adjustedBy of 64 chars", "adjustedBy", "a" * 64),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for _, f, v in ACCEPTED],
    ids=[case_id for case_id, _, _ in ACCEPTED],
)
def test_boundary_values_inside_the_limits_are_accepted(field: str, value: Any) -> None:
    """A value exactly on an inclusive limit passes validation."""
    assert validate_adjustment(valid_payload(**{field: value})) == []


ACCOUNT_CODE = ReasonCode.INVALID_BANK_ACCOUNT_NUMBER
POINTS_CODE = ReasonCode.INVALID_POINTS
TYPE_CODE = ReasonCode.INVALID_ADJUSTMENT_TYPE_CODE
REASON_CODE = ReasonCode.INVALID_ADJUSTMENT_REASON
BY_CODE = ReasonCode.INVALID_ADJUSTED_BY

REJECTED: list[tuple[str, str, Any, ReasonCode]] = [
    ("account of 31 digits", "bankAccountNumber", "1" * 31, ACCOUNT_CODE),
    ("empty account", "bankAccountNumber", "", ACCOUNT_CODE),
    ("account with a letter", "bankAccountNumber", "12345A", ACCOUNT_CODE),
    ("account with a space", "bankAccountNumber", "1234 5678", ACCOUNT_CODE),
    ("account with a sign", "bankAccountNumber", "-12345", ACCOUNT_CODE),
    ("account with non-ASCII digits", "bankAccountNumber", "\u0661\u0662\u0663", ACCOUNT_CODE),
    ("account with trailing newline", "bankAccountNumber", "123\n", ACCOUNT_CODE),
    ("account as a number", "bankAccountNumber", 1234567890, ACCOUNT_CODE),
    ("points of 0", "pointsToAdjust", 0, POINTS_CODE),
    ("points at max+1", "pointsToAdjust", MAX + 1, POINTS_CODE),
    ("points at -(max+1)", "pointsToAdjust", -(MAX + 1), POINTS_CODE),
    ("points as bool true", "pointsToAdjust", True, POINTS_CODE),
    ("points as bool false", "pointsToAdjust", False, POINTS_CODE),
    ("points as float", "pointsToAdjust", 10.0, POINTS_CODE),
    ("points as fraction", "pointsToAdjust", 10.5, POINTS_CODE),
    ("points as string", "pointsToAdjust", "10", POINTS_CODE),
    ("points as list", "pointsToAdjust", [10], POINTS_CODE),
    ("lowercase type code", "adjustmentTypeCode", "goodwill", TYPE_CODE),
    ("disallowed type code", "adjustmentTypeCode", "BONUS", TYPE_CODE),
    ("type code of 21 chars", "adjustmentTypeCode", "A" * 21, TYPE_CODE),
    ("empty type code", "adjustmentTypeCode", "", TYPE_CODE),
    ("type code with dash", "adjustmentTypeCode", "GOOD-WILL", TYPE_CODE),
    ("type code as number", "adjustmentTypeCode", 7, TYPE_CODE),
    ("reason of 257 chars", "adjustmentReason", "r" * 257, REASON_CODE),
    ("empty reason", "adjustmentReason", "", REASON_CODE),
    ("reason as number", "adjustmentReason", 5, REASON_CODE),
    ("adjustedBy of 65 chars", "adjustedBy", "a" * 65, BY_CODE),
    ("empty adjustedBy", "adjustedBy", "", BY_CODE),
    ("adjustedBy as object", "adjustedBy", {"id": "a"}, BY_CODE),
]


@pytest.mark.parametrize(
    ("field", "value", "reason_code"),
    [(f, v, c) for _, f, v, c in REJECTED],
    ids=[case_id for case_id, _, _, _ in REJECTED],
)
def test_each_invalid_value_yields_one_error_naming_its_field(
    field: str, value: Any, reason_code: ReasonCode
) -> None:
    """A single bad field produces exactly one error with that field's code and name."""
    errors = validate_adjustment(valid_payload(**{field: value}))
    assert [(e.field, e.reason_code) for e in errors] == [(field, reason_code)]
    assert errors[0].description


@pytest.mark.parametrize("field", FIELDS)
def test_a_missing_field_is_reported_as_missing(field: str) -> None:
    """Leaving out any one of the five mandatory fields yields MISSING_FIELD for it."""
    payload = valid_payload()
    del payload[field]
    assert validate_adjustment(payload) == [
        FieldError(field, ReasonCode.MISSING_FIELD, f"{field} is mandatory")
    ]


@pytest.mark.parametrize("field", FIELDS)
def test_a_null_field_counts_as_missing(field: str) -> None:
    """A mandatory field sent as JSON null is reported as MISSING_FIELD."""
    errors = validate_adjustment(valid_payload(**{field: None}))
    assert [(e.field, e.reason_code) for e in errors] == [(field, ReasonCode.MISSING_FIELD)]


def test_extra_fields_are_each_rejected_in_name_order() -> None:
    """Every field outside the five yields its own UNKNOWN_FIELD error, sorted by name."""
    errors = validate_adjustment(valid_payload(zeta=1, alpha="x"))
    assert [(e.field, e.reason_code) for e in errors] == [
        ("alpha", ReasonCode.UNKNOWN_FIELD),
        ("zeta", ReasonCode.UNKNOWN_FIELD),
    ]


def test_field_names_are_case_sensitive() -> None:
    """A field spelt with other casing is unknown, and the real field is then missing."""
    payload = valid_payload()
    payload["adjustedby"] = payload.pop("adjustedBy")
    errors = validate_adjustment(payload)
    assert [(e.field, e.reason_code) for e in errors] == [
        ("adjustedBy", ReasonCode.MISSING_FIELD),
        ("adjustedby", ReasonCode.UNKNOWN_FIELD),
    ]


def test_all_problems_are_reported_together_in_field_order() -> None:
    """A request with several problems gets one error per problem, in contract order."""
    payload = {"pointsToAdjust": 0, "adjustmentTypeCode": "nope", "adjustedBy": "", "extra": 1}
    errors = validate_adjustment(payload)
    assert [(e.field, e.reason_code) for e in errors] == [
        ("bankAccountNumber", ReasonCode.MISSING_FIELD),
        ("pointsToAdjust", ReasonCode.INVALID_POINTS),
        ("adjustmentTypeCode", ReasonCode.INVALID_ADJUSTMENT_TYPE_CODE),
        ("adjustmentReason", ReasonCode.MISSING_FIELD),
        ("adjustedBy", ReasonCode.INVALID_ADJUSTED_BY),
        ("extra", ReasonCode.UNKNOWN_FIELD),
    ]


def test_rules_come_from_configuration() -> None:
    """A tighter max and a different allowed set change what is accepted."""
    rules = ValidationRules(max_points=100, allowed_type_codes=frozenset({"BONUS"}))
    assert (
        validate_adjustment(valid_payload(pointsToAdjust=100, adjustmentTypeCode="BONUS"), rules)
        == []
    )
    errors = validate_adjustment(
        valid_payload(pointsToAdjust=101, adjustmentTypeCode="GOODWILL"), rules
    )
    assert [e.reason_code for e in errors] == [
        ReasonCode.INVALID_POINTS,
        ReasonCode.INVALID_ADJUSTMENT_TYPE_CODE,
    ]


def test_parse_returns_the_typed_request_when_valid() -> None:
    """A valid payload parses into an AdjustmentRequest holding the same values."""
    assert parse_adjustment(valid_payload(pointsToAdjust=-30)) == AdjustmentRequest(
        bank_account_number="1234567890123456000",
        points_to_adjust=-30,
        adjustment_type_code="GOODWILL",
        adjustment_reason="late delivery",
        adjusted_by="agent-42",
    )


def test_parse_raises_with_every_error_when_invalid() -> None:
    """An invalid payload makes parse raise an error carrying the full list of problems."""
    with pytest.raises(InvalidAdjustmentError) as caught:
        parse_adjustment(valid_payload(pointsToAdjust=0, adjustedBy=""))
    assert [e.field for e in caught.value.errors] == ["pointsToAdjust", "adjustedBy"]


def test_field_error_becomes_a_pas_envelope_entry_naming_the_field() -> None:
    """A field error maps to a non-recoverable PAS envelope entry with Details = field."""
    item = FieldError("pointsToAdjust", ReasonCode.INVALID_POINTS, "bad").to_error_item()
    assert item.to_json() == {
        "Source": PAS_SOURCE,
        "ReasonCode": "INVALID_POINTS",
        "Description": "bad",
        "Recoverable": False,
        "Details": "pointsToAdjust",
    }
