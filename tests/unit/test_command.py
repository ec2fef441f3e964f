"""Command validation and its limits, safe copies, card masking, the business fingerprint,
and account masking and references."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from service.codec.avro import default_schema_dir
from service.domain.command import (
    BUSINESS_FIELDS,
    DROPPED_ENTRIES_KEY,
    FIELD_REASONS,
    IDEMPOTENCY_KEY_PATTERN,
    AdjustmentCommand,
    CommandRules,
    FieldError,
    account_ref,
    business_fingerprint,
    identify,
    mask_account,
    safe_metadata,
    safe_text,
    validate_command,
)
from service.domain.inbound import COMMAND_FIELDS, DecodedCommand
from service.domain.limits import (
    CUT_MARKER,
    DEFAULT_MAX_RECORD_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    REPLACEMENT,
    TEXT_LIMITS,
)
from service.domain.pii import is_card_number, luhn_valid, mask_card_numbers

MAX = 1_000_000
RULES = CommandRules(MAX, frozenset({"GOODWILL", "CORRECTION", "PROMO_2025"}))
ACCOUNT = "5123456789012345000"


def decoded(**overrides: Any) -> DecodedCommand:
    """A command as the decoder gives it: a valid one, with ``overrides``."""
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
    return DecodedCommand(**raw)


def errors_of(raw: DecodedCommand) -> list[FieldError]:
    result = validate_command(raw, RULES)
    assert isinstance(result, list), f"expected field errors, got {result!r}"
    return result


def test_valid_command_passes() -> None:
    """A command inside every limit validates into an equal AdjustmentCommand."""
    raw = decoded()
    command = validate_command(raw, RULES)
    assert isinstance(command, AdjustmentCommand)
    assert command.model_dump() == dataclasses.asdict(raw)


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
    command = validate_command(decoded(**{field: value}), RULES)
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
    ("points as a string (a command built by hand)", "points_to_adjust", "250"),
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
    errors = errors_of(decoded(**{field: value}))
    assert [(error.field, error.reason_code) for error in errors] == [(field, FIELD_REASONS[field])]
    assert errors[0].description


def test_not_allowed_type_code_names_the_code() -> None:
    """A well-formed type code outside the configured set is refused as not allowed."""
    (error,) = errors_of(decoded(adjustment_type_code="NOT_ALLOWED"))
    assert "NOT_ALLOWED" in error.description
    assert "allowed" in error.description


def test_points_limit_comes_from_the_rules() -> None:
    """The points maximum is the configured one, not a constant."""
    tight = CommandRules(10, RULES.allowed_type_codes)
    assert isinstance(validate_command(decoded(points_to_adjust=-10), tight), AdjustmentCommand)
    result = validate_command(decoded(points_to_adjust=11), tight)
    assert isinstance(result, list)
    assert "10" in result[0].description


def test_multiple_errors_are_reported_together() -> None:
    """Every wrong field is reported in one pass, both pydantic and rule-based ones."""
    errors = errors_of(
        decoded(
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


def test_a_decoded_command_has_exactly_the_fields_of_the_schema() -> None:
    """A missing or an unknown field cannot reach validation: a decoded command holds
    exactly the command schema's fields, in the schema's order."""
    schema_file = default_schema_dir() / "points_adjustment_requested.avsc"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert tuple(field["name"] for field in schema["fields"]) == COMMAND_FIELDS


def test_field_errors_do_not_echo_the_account_number() -> None:
    """No error description repeats the rejected account number."""
    bad = "5123456789012345000999999999999"
    for error in errors_of(decoded(bank_account_number=bad, points_to_adjust=0)):
        assert bad not in error.description
        assert ACCOUNT not in error.description


# -- the business fingerprint ---------------------------------------------------------------


def fingerprint_of(raw: DecodedCommand) -> str:
    command = validate_command(raw, RULES)
    assert isinstance(command, AdjustmentCommand)
    return command.fingerprint()


def test_fingerprint_is_equal_for_equal_business_fields() -> None:
    """Two commands with the same five PAS fields have the same fingerprint."""
    assert fingerprint_of(decoded()) == fingerprint_of(decoded())
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint_of(decoded()))


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
    assert fingerprint_of(decoded(**{field: value})) == fingerprint_of(decoded())


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
    assert fingerprint_of(decoded(**{field: value})) != fingerprint_of(decoded())


def test_fingerprint_of_raw_and_validated_command_agree() -> None:
    """The fingerprint of the decoded command equals the validated command's (both paths)."""
    raw = decoded()
    assert business_fingerprint(raw) == fingerprint_of(raw)


def test_fingerprint_is_the_one_stored_by_earlier_versions() -> None:
    """The fingerprint is SHA-256 of the JSON list of the five business fields, as every
    version has stored it: a repeat of a command recorded before an upgrade is a duplicate."""
    body = '["5123456789012345000",250,"GOODWILL","Late delivery","agent-0042"]'
    expected = hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert business_fingerprint(decoded()) == fingerprint_of(decoded()) == expected


def test_fingerprint_tells_points_from_their_string_form() -> None:
    """A hand-built command with points as text does not collide with the valid one."""
    assert business_fingerprint(decoded(points_to_adjust="250")) != business_fingerprint(decoded())


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


# -- limits: exactly the limit passes, one more fails naming the field and the limit -------------

TEXT_FIELDS_AT_LIMIT: list[tuple[str, str]] = [
    ("idempotency_key", "k"),
    ("adjustment_reason", "r"),
    ("adjusted_by", "a"),
    ("correlation_id", "c"),
    ("requested_by", "q"),
]


@pytest.mark.parametrize(("field", "char"), TEXT_FIELDS_AT_LIMIT)
def test_text_field_of_exactly_its_limit_is_accepted(field: str, char: str) -> None:
    """A text field of exactly its documented number of characters validates."""
    value = char * TEXT_LIMITS[field]
    command = validate_command(decoded(**{field: value}), RULES)
    assert isinstance(command, AdjustmentCommand), command
    assert getattr(command, field) == value


@pytest.mark.parametrize(("field", "char"), TEXT_FIELDS_AT_LIMIT)
def test_text_field_one_past_its_limit_names_field_and_limit(field: str, char: str) -> None:
    """A text field one character past its limit fails on that field, quoting limit and size."""
    limit = TEXT_LIMITS[field]
    (error,) = errors_of(decoded(**{field: char * (limit + 1)}))
    assert (error.field, error.reason_code) == (field, FIELD_REASONS[field])
    assert error.description == f"at most {limit} characters (got {limit + 1})"


def test_limits_are_the_documented_ones() -> None:
    """The per-field limits are those of the hardening issue and the PAS contract."""
    assert dict(TEXT_LIMITS) == {
        "idempotency_key": 128,
        "bank_account_number": 30,
        "adjustment_reason": 256,
        "adjusted_by": 64,
        "correlation_id": 128,
        "requested_by": 128,
    }
    assert (MAX_METADATA_ENTRIES, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS) == (32, 64, 256)
    assert DEFAULT_MAX_RECORD_BYTES == 65_536


def test_huge_correlation_id_is_refused_with_its_size() -> None:
    """A 600 KB correlation id fails on correlation_id and the error gives limit and size."""
    (error,) = errors_of(decoded(correlation_id="c" * 614_400))
    assert error.field == "correlation_id"
    assert error.description == "at most 128 characters (got 614400)"


def entries(count: int) -> dict[str, str]:
    return {f"k{index:03d}": "v" for index in range(count)}


def test_metadata_of_exactly_the_limits_is_accepted() -> None:
    """32 entries, with a 64-character key and a 256-character value, validate."""
    metadata = entries(MAX_METADATA_ENTRIES - 1) | {"K" * 64: "V" * 256}
    command = validate_command(decoded(metadata=metadata), RULES)
    assert isinstance(command, AdjustmentCommand), command
    assert command.metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "description"),
    [
        (entries(33), "at most 32 entries (got 33)"),
        ({"K" * 65: "v"}, "each key at most 64 characters (got 65)"),
        ({"k": "V" * 257}, "each value at most 256 characters (got 257)"),
    ],
    ids=["33-entries", "65-char-key", "257-char-value"],
)
def test_metadata_one_past_a_limit_names_field_and_limit(
    metadata: dict[str, str], description: str
) -> None:
    """Metadata one past any of its limits fails once on metadata, quoting limit and size."""
    (error,) = errors_of(decoded(metadata=metadata))
    assert (error.field, error.reason_code) == ("metadata", "INVALID_METADATA")
    assert error.description == description


@pytest.mark.parametrize("channel", [None, "c", "call-centre", "x" * 64])
def test_a_channel_absent_or_of_1_to_64_characters_is_accepted(channel: str | None) -> None:
    """The v2 channel is optional: None (a v1 writer) or 1-64 printable characters."""
    command = validate_command(decoded(channel=channel), RULES)
    assert isinstance(command, AdjustmentCommand), command
    assert command.channel == channel


@pytest.mark.parametrize(
    ("channel", "description"),
    [
        ("x" * 65, "at most 64 characters (got 65)"),
        ("", "must not be empty"),
        ("   ", "must not be blank"),
        ("web\n", "must not contain control or format characters (U+000A at 3)"),
    ],
    ids=["65-chars", "empty", "blank", "newline"],
)
def test_a_bad_channel_fails_on_channel(channel: str, description: str) -> None:
    """A channel past its limit, empty, blank or with a control character: INVALID_CHANNEL."""
    (error,) = errors_of(decoded(channel=channel))
    assert (error.field, error.reason_code, error.description) == (
        "channel",
        "INVALID_CHANNEL",
        description,
    )


def test_the_channel_is_not_a_business_field() -> None:
    """Two commands differing only in channel are the same request (same fingerprint)."""
    web = validate_command(decoded(channel="web"), RULES)
    batch = validate_command(decoded(), RULES)
    assert isinstance(web, AdjustmentCommand)
    assert isinstance(batch, AdjustmentCommand)
    assert web.fingerprint() == batch.fingerprint()


def test_a_million_metadata_entries_are_refused_by_count() -> None:
    """A huge metadata map is refused by its size in one error, not entry by entry."""
    (error,) = errors_of(decoded(metadata={str(n): str(n) for n in range(1_000_000)}))
    assert error.description == "at most 32 entries (got 1000000)"


def test_record_of_exactly_the_maximum_size_is_accepted() -> None:
    """A record of exactly max_record_bytes validates (the default rules allow 65,536)."""
    assert RULES.max_record_bytes == 65_536
    command = validate_command(decoded(), RULES, record_bytes=65_536)
    assert isinstance(command, AdjustmentCommand)


def test_record_one_byte_too_large_fails_on_the_record() -> None:
    """A record one byte past max_record_bytes fails on field 'record' with RECORD_TOO_LARGE."""
    (error,) = errors_of_sized(decoded(), 65_537)
    assert (error.field, error.reason_code) == ("record", "RECORD_TOO_LARGE")
    assert FIELD_REASONS["record"] == "RECORD_TOO_LARGE"
    assert error.description == "at most 65536 bytes (got 65537)"


def test_record_limit_comes_from_the_rules_and_adds_to_other_errors() -> None:
    """The record limit is the configured one, and a large record's field errors still show."""
    tight = CommandRules(MAX, RULES.allowed_type_codes, max_record_bytes=4096)
    result = validate_command(decoded(correlation_id=""), tight, record_bytes=4097)
    assert isinstance(result, list)
    assert sorted(error.field for error in result) == ["correlation_id", "record"]


def errors_of_sized(raw: DecodedCommand, record_bytes: int) -> list[FieldError]:
    result = validate_command(raw, RULES, record_bytes=record_bytes)
    assert isinstance(result, list), f"expected field errors, got {result!r}"
    return result


# -- control, format and surrogate characters ---------------------------------------------------

REFUSED_CHARACTERS = [
    "\u202e",  # right-to-left override
    "\u202a",  # left-to-right embedding
    "\u2066",  # left-to-right isolate
    "\u2069",  # pop directional isolate
    "\u200d",  # zero-width joiner
    "\u200b",  # zero-width space
    "\ufeff",  # byte order mark
    "\x00",
    "\n",
    "\x1b",
    "\x7f",
    "\x85",  # next line (C1 control)
]
CONTROLLED_FIELDS = ["adjustment_reason", "adjusted_by", "correlation_id", "requested_by"]


@pytest.mark.parametrize("char", REFUSED_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("field", CONTROLLED_FIELDS)
def test_control_and_format_characters_are_refused(field: str, char: str) -> None:
    """A control, bidi, zero-width or BOM character in a text field fails on that field."""
    (error,) = errors_of(decoded(**{field: f"abc{char}def"}))
    assert (error.field, error.reason_code) == (field, FIELD_REASONS[field])
    assert error.description == (
        f"must not contain control or format characters (U+{ord(char):04X} at 3)"
    )


@pytest.mark.parametrize("where", ["key", "value"])
def test_bidi_override_in_metadata_is_refused(where: str) -> None:
    """A bidi override in a metadata key or value fails on metadata, saying which part."""
    metadata = {"ca\u202ese": "1"} if where == "key" else {"case": "12\u202e34"}
    (error,) = errors_of(decoded(metadata=metadata))
    assert error.field == "metadata"
    assert error.description == (
        f"each {where} must not contain control or format characters (U+202E at 2)"
    )


def test_lone_surrogate_is_refused() -> None:
    """A lone surrogate, which UTF-8 cannot encode, is refused in a text field."""
    (error,) = errors_of(decoded(requested_by="crm\ud800"))
    assert error.field == "requested_by"
    assert error.description == "must not contain surrogate characters (U+D800 at 3)"


def test_printable_non_ascii_text_is_accepted() -> None:
    """Accents, CJK, emoji and right-to-left letters without overrides are ordinary text."""
    text = "é 中文 ✓ 🎉 שלום"
    command = validate_command(decoded(adjustment_reason=text, metadata={text: text}), RULES)
    assert isinstance(command, AdjustmentCommand), command


def test_errors_never_quote_the_refused_text() -> None:
    """No error description repeats any of the refused values."""
    secret = "4111111111111111"
    raw = decoded(
        correlation_id=secret * 20,
        requested_by=f"{secret}\u202e",
        metadata={secret: secret * 20},
    )
    for error in errors_of(raw):
        assert secret not in error.description


# -- safe copies of invalid commands ------------------------------------------------------------


def test_identify_cuts_a_600_kb_correlation_id_to_128_characters() -> None:
    """identify returns a 600 KB correlation id cut to 128 characters, ending with the marker."""
    _, correlation_id, _ = identify(decoded(correlation_id="c" * 614_400))
    assert len(correlation_id) == 128
    assert correlation_id == "c" * 127 + CUT_MARKER


def test_identify_keeps_values_inside_their_limits_unchanged() -> None:
    """Values within their limits and free of refused characters come back as sent."""
    raw = decoded(idempotency_key="k" * 128, requested_by="r" * 128)
    assert identify(raw) == ("k" * 128, "corr-1", "r" * 128)


def test_identify_replaces_control_characters() -> None:
    """Control and format characters in a copied field are replaced by U+FFFD."""
    raw = decoded(requested_by="crm\u202e\n", correlation_id="\ufeffc")
    _, correlation_id, requested_by = identify(raw)
    assert requested_by == "crm" + REPLACEMENT * 2
    assert correlation_id == REPLACEMENT + "c"


@pytest.mark.parametrize("key", ["k" * 129, "k" * 600_000, "case-\u202e1", "case\x00"])
def test_a_repaired_key_never_passes_as_a_usable_key(key: str) -> None:
    """A cut or repaired idempotency key never matches the key pattern, so it is never stored."""
    safe_key, _, _ = identify(decoded(idempotency_key=key))
    assert len(safe_key) <= 128
    assert not IDEMPOTENCY_KEY_PATTERN.fullmatch(safe_key)


def test_safe_text_cuts_at_the_limit_with_the_marker_inside_it() -> None:
    """A value one past the limit is cut to limit-1 characters plus the marker."""
    assert safe_text("abcd", 4) == "abcd"
    assert safe_text("abcde", 4) == "abc" + CUT_MARKER


def test_safe_text_masks_a_card_that_straddles_the_cut() -> None:
    """A card number across the cut point is masked before the cut, leaving no digits of it."""
    value = "x" * 250 + "4111 1111 1111 1111"
    safe = safe_text(value, 256, mask_cards=True)
    assert len(safe) == 256
    assert "4111" not in safe
    assert safe == "x" * 250 + "*****" + CUT_MARKER


def test_safe_metadata_of_a_non_mapping_is_empty() -> None:
    """Metadata that is missing or not a map is copied as an empty map."""
    for value in (None, "case=1", ["a", "b"], 5):
        assert safe_metadata(value) == {}


def test_safe_metadata_keeps_a_valid_map_unchanged() -> None:
    """A map inside every limit, with no card numbers, comes back equal."""
    metadata = {"case": "1234", "channel": "phone"}
    assert safe_metadata(metadata) == metadata


def test_safe_metadata_keeps_31_entries_and_counts_the_dropped_ones() -> None:
    """A map of 40 entries keeps the first 31 keys in order and one entry counting the 9 left."""
    safe = safe_metadata(entries(40))
    assert len(safe) == MAX_METADATA_ENTRIES
    assert list(safe)[:31] == [f"k{index:03d}" for index in range(31)]
    assert safe[DROPPED_ENTRIES_KEY] == "9 more entries dropped"


def test_safe_metadata_of_exactly_32_entries_drops_nothing() -> None:
    """A map of exactly 32 entries is kept whole, without the dropped-entries entry."""
    assert safe_metadata(entries(32)) == entries(32)


def test_safe_metadata_cuts_keys_and_values_and_repairs_them() -> None:
    """Keys are cut to 64 characters, values to 256, refused characters replaced."""
    safe = safe_metadata({"K" * 100: "V" * 1_000_000, "bidi\u202e": "\x00"})
    assert safe == {
        "K" * 63 + CUT_MARKER: "V" * 255 + CUT_MARKER,
        "bidi" + REPLACEMENT: REPLACEMENT,
    }


def test_safe_metadata_masks_card_numbers() -> None:
    """Card numbers in metadata keys and values are masked in the safe copy."""
    safe = safe_metadata({"pan 4111111111111111": "card 4111-1111-1111-1111"})
    assert safe == {"pan ************1111": "card ************1111"}


def test_safe_metadata_names_non_text_entries_by_type() -> None:
    """Non-string keys and values are copied as their type name, never converted."""
    assert safe_metadata({1: 2, "nested": {"a": "b"}, "none": None}) == {
        "<int>": "<int>",
        "nested": "<dict>",
        "none": "<NoneType>",
    }


def test_safe_metadata_of_a_huge_map_is_bounded() -> None:
    """A map of 200,000 entries of 1 KB keys gives at most 32 bounded entries."""
    safe = safe_metadata({f"{index:06d}" + "k" * 1024: "v" * 1024 for index in range(200_000)})
    assert len(safe) == 32
    assert all(len(key) <= 64 and len(value) <= 256 for key, value in safe.items())
    assert safe[DROPPED_ENTRIES_KEY] == "199969 more entries dropped"


# -- card numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4111111111111111", "************1111"),
        ("4111 1111 1111 1111", "************1111"),
        ("4111-1111-1111-1111", "************1111"),
        ("card: 4111 1111 1111 1111.", "card: ************1111."),
        ("6221260000000000001", "***************0001"),
        ("4012888888881881", "************1881"),
        ("order 12 4111 1111 1111 1111", "order 12 ************1111"),
        ("4111111111111111000", "***************1000"),
        ("a 4111111111111111 b 4012888888881881", "a ************1111 b ************1881"),
    ],
    ids=[
        "16-digits",
        "spaces",
        "dashes",
        "in-text",
        "19-digits",
        "visa-test",
        "beside-another-number",
        "platform-account",
        "two-cards",
    ],
)
def test_card_numbers_passing_luhn_are_masked(text: str, masked: str) -> None:
    """Each Luhn-valid 13-19 digit run is masked to its last four digits, separators dropped."""
    assert mask_card_numbers(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",
        "4111 1111 1111 1112",
        "411111111111",
        "41111111111111110000",
        "1234-5678",
        "2025-03-04",
        "",
        "no digits at all",
        "4111  1111  1111  1111",
    ],
    ids=[
        "luhn-failing-16",
        "luhn-failing-spaced",
        "12-digits",
        "20-digit-group",
        "short",
        "date",
        "empty",
        "text",
        "double-spaces",
    ],
)
def test_runs_that_are_not_card_numbers_stay(text: str) -> None:
    """Digit runs failing Luhn, shorter than 13 or one group longer than 19 stay as they are."""
    assert mask_card_numbers(text) == text


def test_luhn_check_on_known_values() -> None:
    """The Luhn check accepts well-known test card numbers and rejects a changed digit."""
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert is_card_number("6221260000000000001")
    assert not is_card_number("411111111111")


def test_masking_a_long_text_masks_every_card_and_never_grows_it() -> None:
    """In 100 KB of text, numbers and dates, every card is masked and the text only shrinks."""
    text = "order 12 paid 2025-03-04 with 4111 1111 1111 1111, ref 411111111111; " * 1_500
    masked = mask_card_numbers(text)
    assert len(masked) <= len(text)
    assert "4111 1111 1111 1111" not in masked
    assert masked.count("************1111") == 1_500
    assert masked.count("411111111111;") == 1_500


def test_valid_command_publishes_masked_metadata_but_keeps_what_was_sent() -> None:
    """published_metadata masks card numbers; the command and its fingerprint keep the original."""
    metadata = {"case": "1234", "pan": "4111 1111 1111 1111", "4111111111111111": "x"}
    command = validate_command(decoded(metadata=metadata), RULES)
    assert isinstance(command, AdjustmentCommand)
    assert command.published_metadata() == {
        "case": "1234",
        "pan": "************1111",
        "************1111": "x",
    }
    assert command.metadata == metadata
    assert command.fingerprint() == fingerprint_of(decoded())


# -- bounded account masks ----------------------------------------------------------------------


def test_mask_of_a_huge_account_is_bounded() -> None:
    """A 600 KB account string masks to at most 30 characters, its last four visible."""
    masked = mask_account("9" * 614_396 + "1234")
    assert len(masked) == 30
    assert masked == CUT_MARKER + "*" * 25 + "1234"


def test_mask_replaces_control_characters_it_would_show() -> None:
    """The visible tail of a masked invalid account has refused characters replaced."""
    assert mask_account("12345678\u202e") == "*****678" + REPLACEMENT
