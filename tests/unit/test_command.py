"""Command validation, the business fingerprint, and account masking and references."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from service.domain.command import (
    BUSINESS_FIELDS,
    FIELD_REASONS,
    AdjustmentCommand,
    CommandRules,
    FieldError,
    account_ref,
    business_fingerprint,
    mask_account,
    validate_command,
)

MAX = 1_000_000
RULES = CommandRules(MAX, frozenset({"GOODWILL", "CORRECTION", "PROMO_2025"}))
ACCOUNT = "5123456789012345000"


def raw_command(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "idempotency_key": "case-1234-credit",
        "bank_account_number": ACCOUNT,
        "points_to_adjust": 250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
        "metadata": {"case": "1234"},
    }
    raw.update(overrides)
    return raw


def errors_of(raw: dict[str, Any]) -> list[FieldError]:
    result = validate_command(raw, RULES)
    assert isinstance(result, list), f"expected field errors, got {result!r}"
    return result


def test_valid_command_passes() -> None:
    """A command inside every limit validates into an equal AdjustmentCommand."""
    raw = raw_command()
    command = validate_command(raw, RULES)
    assert isinstance(command, AdjustmentCommand)
    assert command.model_dump() == raw


ACCEPTED: list[tuple[str, str, Any]] = [
    ("account of 1 digit", "bank_account_number", "7"),
    ("account of 30 digits", "bank_account_number", "9" * 30),
    ("account with leading zeros", "bank_account_number", "000123"),
    ("points +1", "points_to_adjust", 1),
    ("points -1", "points_to_adjust", -1),
    ("points +max", "points_to_adjust", MAX),
    ("points -max", "points_to_adjust", -MAX),
    ("type code with digits and underscore", "adjustment_type_code", "PROMO_2025"),
    ("reason of 1 char", "adjustment_reason", "x"),
    ("reason of 256 chars", "adjustment_reason", "r" * 256),
    ("reason of 256 non-ASCII chars", "adjustment_reason", "é" * 256),
    ("adjusted_by of 64 chars", "adjusted_by", "a" * 64),
    ("key of 1 char", "idempotency_key", "k"),
    ("key of 128 chars", "idempotency_key", "k" * 128),
    ("key of every printable ASCII but space", "idempotency_key", "!~#$%&'()*+,-./:;<=>?@[]^_`{|}"),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for _, field, value in ACCEPTED],
    ids=[case for case, _, _ in ACCEPTED],
)
def test_values_on_the_limits_are_accepted(field: str, value: Any) -> None:
    """A value exactly on an inclusive limit passes validation."""
    command = validate_command(raw_command(**{field: value}), RULES)
    assert isinstance(command, AdjustmentCommand), command
    assert getattr(command, field) == value


REJECTED: list[tuple[str, str, Any]] = [
    ("account of 31 digits", "bank_account_number", "1" * 31),
    ("empty account", "bank_account_number", ""),
    ("account with a letter", "bank_account_number", "51234A"),
    ("account with dashes", "bank_account_number", "5123-4567-8901"),
    ("account with a trailing newline", "bank_account_number", "5123\n"),
    ("account with non-ASCII digits", "bank_account_number", "\u0661\u0662\u0663"),
    ("points 0", "points_to_adjust", 0),
    ("points max+1", "points_to_adjust", MAX + 1),
    ("points -(max+1)", "points_to_adjust", -(MAX + 1)),
    ("points True", "points_to_adjust", True),
    ("points False", "points_to_adjust", False),
    ("points as a string", "points_to_adjust", "250"),
    ("type code lowercase", "adjustment_type_code", "goodwill"),
    ("type code not allowed", "adjustment_type_code", "NOT_ALLOWED"),
    ("type code of 21 chars", "adjustment_type_code", "A" * 21),
    ("type code empty", "adjustment_type_code", ""),
    ("reason of 257 chars", "adjustment_reason", "r" * 257),
    ("reason empty", "adjustment_reason", ""),
    ("reason blank", "adjustment_reason", "   \t "),
    ("adjusted_by of 65 chars", "adjusted_by", "a" * 65),
    ("adjusted_by blank", "adjusted_by", "  "),
    ("key empty", "idempotency_key", ""),
    ("key with a space", "idempotency_key", "case 1234"),
    ("key with a trailing newline", "idempotency_key", "case-1234\n"),
    ("key with non-ASCII", "idempotency_key", "case-é"),
    ("key of 129 chars", "idempotency_key", "k" * 129),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for _, field, value in REJECTED],
    ids=[case for case, _, _ in REJECTED],
)
def test_values_outside_the_limits_are_rejected(field: str, value: Any) -> None:
    """A value past a limit yields exactly one error, on that field, with its reason code."""
    errors = errors_of(raw_command(**{field: value}))
    assert [(error.field, error.reason_code) for error in errors] == [(field, FIELD_REASONS[field])]
    assert errors[0].description


def test_not_allowed_type_code_names_the_code() -> None:
    """A well-formed type code outside the configured set is refused as not allowed."""
    (error,) = errors_of(raw_command(adjustment_type_code="NOT_ALLOWED"))
    assert "NOT_ALLOWED" in error.description
    assert "allowed" in error.description


def test_points_limit_comes_from_the_rules() -> None:
    """The points maximum is the configured one, not a constant."""
    tight = CommandRules(10, RULES.allowed_type_codes)
    assert isinstance(validate_command(raw_command(points_to_adjust=-10), tight), AdjustmentCommand)
    result = validate_command(raw_command(points_to_adjust=11), tight)
    assert isinstance(result, list)
    assert "10" in result[0].description


def test_multiple_errors_are_reported_together() -> None:
    """Every wrong field is reported in one pass, both pydantic and rule-based ones."""
    errors = errors_of(
        raw_command(
            bank_account_number="12ab",
            points_to_adjust=0,
            adjustment_type_code="NOT_ALLOWED",
            adjustment_reason=" ",
            adjusted_by="a" * 65,
            correlation_id="",
        )
    )
    assert sorted((error.field, error.reason_code) for error in errors) == [
        ("adjusted_by", "INVALID_ADJUSTED_BY"),
        ("adjustment_reason", "INVALID_ADJUSTMENT_REASON"),
        ("adjustment_type_code", "INVALID_ADJUSTMENT_TYPE_CODE"),
        ("bank_account_number", "INVALID_BANK_ACCOUNT_NUMBER"),
        ("correlation_id", "INVALID_CORRELATION_ID"),
        ("points_to_adjust", "INVALID_POINTS"),
    ]


def test_missing_and_unexpected_fields_are_errors_not_exceptions() -> None:
    """A raw mapping missing a field or carrying an extra one gives field errors."""
    raw = raw_command(surprise="x")
    del raw["adjusted_by"]
    fields = {error.field for error in errors_of(raw)}
    assert fields == {"adjusted_by", "surprise"}


def test_field_errors_do_not_echo_the_account_number() -> None:
    """No error description repeats the rejected account number."""
    bad = "5123456789012345000999999999999"
    for error in errors_of(raw_command(bank_account_number=bad, points_to_adjust=0)):
        assert bad not in error.description
        assert ACCOUNT not in error.description


# -- the business fingerprint ---------------------------------------------------------------


def fingerprint_of(raw: dict[str, Any]) -> str:
    command = validate_command(raw, RULES)
    assert isinstance(command, AdjustmentCommand)
    return command.fingerprint()


def test_fingerprint_is_equal_for_equal_business_fields() -> None:
    """Two commands with the same five PAS fields have the same fingerprint."""
    assert fingerprint_of(raw_command()) == fingerprint_of(raw_command())
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint_of(raw_command()))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("correlation_id", "another-correlation"),
        ("metadata", {"case": "9999", "extra": "y"}),
        ("requested_by", "another-service"),
        ("occurred_at", datetime(2030, 1, 1, tzinfo=UTC)),
        ("idempotency_key", "another-key"),
    ],
)
def test_fingerprint_ignores_non_business_fields(field: str, value: Any) -> None:
    """Changing a field PAS never sees leaves the fingerprint unchanged."""
    assert fingerprint_of(raw_command(**{field: value})) == fingerprint_of(raw_command())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bank_account_number", "5123456789012345001"),
        ("points_to_adjust", -250),
        ("adjustment_type_code", "CORRECTION"),
        ("adjustment_reason", "Late delivery."),
        ("adjusted_by", "agent-0043"),
    ],
)
def test_fingerprint_changes_with_each_business_field(field: str, value: Any) -> None:
    """Changing any one of the five PAS fields changes the fingerprint."""
    assert field in BUSINESS_FIELDS
    assert fingerprint_of(raw_command(**{field: value})) != fingerprint_of(raw_command())


def test_fingerprint_of_raw_and_validated_command_agree() -> None:
    """The fingerprint of the raw mapping equals the validated command's (both code paths)."""
    raw = raw_command()
    assert business_fingerprint(raw) == fingerprint_of(raw)


def test_fingerprint_tells_points_from_their_string_form() -> None:
    """An invalid raw command with points as text does not collide with the valid one."""
    assert business_fingerprint(raw_command(points_to_adjust="250")) != business_fingerprint(
        raw_command()
    )


# -- masking and references ---------------------------------------------------------------


@pytest.mark.parametrize("length", range(21))
def test_mask_never_reveals_more_than_the_last_four(length: int) -> None:
    """A masked number keeps its length, shows at most its last 4 digits, and stars the rest."""
    number = "".join(str((7 * i + 3) % 10) for i in range(length))
    masked = mask_account(number)
    visible = masked.lstrip("*")
    assert len(masked) == length
    assert len(visible) <= 4
    assert number.endswith(visible)
    assert len(visible) < length or length == 0


@pytest.mark.parametrize("number", ["", "1", "12", "123", "1234"])
def test_mask_hides_everything_of_short_numbers(number: str) -> None:
    """A number of four digits or fewer is masked completely."""
    assert mask_account(number) == "*" * len(number)


def test_mask_of_a_platform_account_shows_its_last_four() -> None:
    """A 19-digit platform account shows only its last four digits."""
    assert mask_account(ACCOUNT) == "*" * 15 + "5000"


def test_account_ref_is_stable_and_opaque() -> None:
    """account_ref is deterministic, follows the documented form, and hides the number."""
    ref = account_ref(ACCOUNT)
    assert ref == account_ref(ACCOUNT)
    assert ref == "acct-" + hashlib.sha256(ACCOUNT.encode()).hexdigest()[:32]
    assert re.fullmatch(r"acct-[0-9a-f]{32}", ref)
    assert ACCOUNT not in ref
    assert ACCOUNT[-8:] not in ref
    assert account_ref("5123456789012345001") != ref
