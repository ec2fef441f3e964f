"""The points-adjustment command, its validation and the safe copies made of it.

Docs: docs/pas.md for the PAS fields; :mod:`service.domain.limits` for the limit of every
field the service copies. A valid command is inside every limit. An invalid one may hold
anything; what the service copies of it into its failed outcome comes from :func:`identify`
and :func:`safe_metadata`, which return *safe copies*: cut to the field's limit (ending in
``…``, counted within the limit), control, format and surrogate characters replaced by
U+FFFD and, for metadata, card numbers masked (:mod:`service.domain.pii`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from service.domain.inbound import DecodedCommand
from service.domain.limits import (
    CUT_MARKER,
    DEFAULT_MAX_RECORD_BYTES,
    MAX_ACCOUNT_DIGITS,
    MAX_CHANNEL_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    REFUSED_CATEGORIES,
    REPLACEMENT,
    TEXT_LIMITS,
)
from service.domain.pii import MAX_CARD_SPAN, VISIBLE_DIGITS, mask_card_numbers

OUR_SOURCE = "points-adjuster"

ACCOUNT_PATTERN = re.compile(rf"[0-9]{{1,{MAX_ACCOUNT_DIGITS}}}")
TYPE_CODE_PATTERN = re.compile(r"[A-Z0-9_]{1,20}")
IDEMPOTENCY_KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")

RECORD = "record"
"""The pseudo-field of errors about the whole record (its size)."""

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
    "channel": "INVALID_CHANNEL",
    RECORD: "RECORD_TOO_LARGE",
}

UNKNOWN_FIELD_REASON: Final = "INVALID_FIELD"
"""The reason code of an error that names no field of the command (none is expected)."""

DROPPED_ENTRIES_KEY: Final = CUT_MARKER
"""The key of the entry that :func:`safe_metadata` adds when it drops entries."""

_NOT_BLANK = frozenset({"adjustment_reason", "adjusted_by"})


@dataclass(frozen=True)
class CommandRules:
    """The configurable limits of a valid command."""

    max_points: int
    allowed_type_codes: frozenset[str]
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field of a command."""

    field: str
    reason_code: str
    description: str


# -- text rules ----------------------------------------------------------------------------


def refused_character(text: str) -> tuple[int, str] | None:
    """The position and character of the first control, format or surrogate character."""
    if text.isprintable():  # fast path: every refused category is non-printable
        return None
    for position, char in enumerate(text):
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            return position, char
    return None


def _character_problem(text: str) -> str | None:
    found = refused_character(text)
    if found is None:
        return None
    position, char = found
    kind = "surrogate" if unicodedata.category(char) == "Cs" else "control or format"
    return f"must not contain {kind} characters (U+{ord(char):04X} at {position})"


def _text_problem(text: str, limit: int, *, not_blank: bool = False) -> str | None:
    """What is wrong with a text field of at most ``limit`` characters, or None."""
    if len(text) > limit:
        return f"at most {limit} characters (got {len(text)})"
    if not text:
        return "must not be empty"
    problem = _character_problem(text)
    if problem is None and not_blank and not text.strip():
        problem = "must not be blank"
    return problem


def _refuse(problem: str | None) -> None:
    if problem is not None:
        # The description is context, not template text: the input can never format it.
        raise PydanticCustomError("command_rule", "{problem}", {"problem": problem})


class AdjustmentCommand(BaseModel):
    """A decoded, validated command: inside every limit of :mod:`service.domain.limits`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    idempotency_key: str
    bank_account_number: str = Field(pattern=rf"^{ACCOUNT_PATTERN.pattern}$")
    points_to_adjust: int
    adjustment_type_code: str = Field(pattern=rf"^{TYPE_CODE_PATTERN.pattern}$")
    adjustment_reason: str
    adjusted_by: str
    correlation_id: str
    requested_by: str
    occurred_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)
    channel: str | None = None
    """Where the adjustment was asked for (schema v2); context only: never sent to PAS, not
    one of the business fields (a repeat from another channel is the same request)."""

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
            _refuse(f"at most {MAX_IDEMPOTENCY_KEY_CHARS} characters (got {len(value)})")
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(value):
            _refuse("must be 1 or more printable ASCII characters, without spaces")
        return value

    @field_validator("adjustment_reason", "adjusted_by", "correlation_id", "requested_by")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        name = info.field_name
        assert name is not None  # always set for a field validator
        _refuse(_text_problem(value, TEXT_LIMITS[name], not_blank=name in _NOT_BLANK))
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None:
            _refuse(_text_problem(value, MAX_CHANNEL_CHARS, not_blank=True))
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_size(cls, value: object) -> object:
        # Before the entries are validated one by one: a huge map is refused at once.
        if isinstance(value, Mapping) and len(value) > MAX_METADATA_ENTRIES:
            _refuse(f"at most {MAX_METADATA_ENTRIES} entries (got {len(value)})")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_entries(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            _refuse(_entry_problem("key", key, MAX_METADATA_KEY_CHARS))
            _refuse(_entry_problem("value", text, MAX_METADATA_VALUE_CHARS))
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def fingerprint(self) -> str:
        """SHA-256 over the business fields: what makes two commands 'the same request'."""
        return _fingerprint(
            (
                self.bank_account_number,
                self.points_to_adjust,
                self.adjustment_type_code,
                self.adjustment_reason,
                self.adjusted_by,
            )
        )

    def published_metadata(self) -> dict[str, str]:
        """The metadata as outcomes carry it: card numbers masked in keys and values.

        The command keeps its metadata as sent; neither the fingerprint nor the PAS call
        uses it. Two keys that mask alike keep the later entry.
        """
        return {
            mask_card_numbers(key): mask_card_numbers(value) for key, value in self.metadata.items()
        }


def _entry_problem(part: str, text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"each {part} at most {limit} characters (got {len(text)})"
    problem = _character_problem(text)
    return None if problem is None else f"each {part} {problem}"


BUSINESS_FIELDS = (
    "bank_account_number",
    "points_to_adjust",
    "adjustment_type_code",
    "adjustment_reason",
    "adjusted_by",
)


def business_fingerprint(command: DecodedCommand) -> str:
    """SHA-256 over the five PAS fields of a command, valid or not.

    Equal to :meth:`AdjustmentCommand.fingerprint` of the command it validates into.
    """
    return _fingerprint(
        (
            command.bank_account_number,
            command.points_to_adjust,
            command.adjustment_type_code,
            command.adjustment_reason,
            command.adjusted_by,
        )
    )


def _fingerprint(values: tuple[object, ...]) -> str:
    # The JSON list of the BUSINESS_FIELDS values, as every version so far has stored it.
    body = json.dumps(list(values), separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


# -- validation ----------------------------------------------------------------------------


def validate_command(
    command: DecodedCommand, rules: CommandRules, *, record_bytes: int = 0
) -> AdjustmentCommand | list[FieldError]:
    """Return the valid command, or every field error found (never raises on bad input).

    ``record_bytes`` is the size of the record that carried ``command`` (key, value and
    headers); above ``rules.max_record_bytes`` it is an error on the field ``record``. Each
    field has at most one error, and no error quotes the value it refuses. A value of
    another type than its field's (only a command built by hand can hold one) is an error
    on that field too.
    """
    errors: list[FieldError] = []
    if record_bytes > rules.max_record_bytes:
        errors.append(
            FieldError(
                RECORD,
                FIELD_REASONS[RECORD],
                f"at most {rules.max_record_bytes} bytes (got {record_bytes})",
            )
        )
    valid: AdjustmentCommand | None = None
    try:
        # The model reads the command's attributes: no mapping of its fields is made.
        valid = AdjustmentCommand.model_validate(command, from_attributes=True)
    except ValidationError as exc:
        errors.extend(_model_errors(exc))
    errors.extend(_rule_errors(command, rules))
    if errors or valid is None:
        return errors
    return valid


def _model_errors(exc: ValidationError) -> list[FieldError]:
    """The first error of each field, in the order the model found them."""
    errors: list[FieldError] = []
    seen: set[str] = set()
    for problem in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = problem["loc"]
        name = str(loc[0]) if loc else "command"
        reason = FIELD_REASONS.get(name, UNKNOWN_FIELD_REASON)
        if name not in seen:
            seen.add(name)
            errors.append(FieldError(name, reason, problem["msg"]))
    return errors


def _rule_errors(command: DecodedCommand, rules: CommandRules) -> list[FieldError]:
    """The configured rules: the points maximum and the allowed type codes."""
    errors: list[FieldError] = []
    points: object = command.points_to_adjust
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
    code: object = command.adjustment_type_code
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
    return errors


# -- safe copies ---------------------------------------------------------------------------


def safe_text(value: str, limit: int, *, mask_cards: bool = False) -> str:
    """``value`` made safe to copy: at most ``limit`` characters, refused characters replaced.

    A longer value is cut to ``limit - 1`` characters followed by ``…``; a value within its
    limit and free of refused characters (and card numbers, with ``mask_cards``) comes back
    unchanged. Cards are masked before the cut, so a cut never leaves a card number's digits
    unmasked; only the head of a long value is ever read.
    """
    window = value[: limit + (MAX_CARD_SPAN if mask_cards else 0)]
    text = _replace_refused(window)
    if mask_cards:
        text = mask_card_numbers(text)
    if len(window) < len(value) or len(text) > limit:
        return text[: max(limit - 1, 0)] + CUT_MARKER
    return text


def _replace_refused(text: str) -> str:
    if refused_character(text) is None:
        return text
    return "".join(
        REPLACEMENT if unicodedata.category(char) in REFUSED_CATEGORIES else char for char in text
    )


def identify(command: DecodedCommand) -> tuple[str, str, str]:
    """Safe copies of (idempotency key, correlation id, requested_by) of any command.

    A cut or repaired key holds ``…`` or U+FFFD, so it never matches
    :data:`IDEMPOTENCY_KEY_PATTERN` and is never stored as a key.
    """
    return (
        safe_text(command.idempotency_key, TEXT_LIMITS["idempotency_key"]),
        safe_text(command.correlation_id, TEXT_LIMITS["correlation_id"]),
        safe_text(command.requested_by, TEXT_LIMITS["requested_by"]),
    )


def safe_metadata(value: object) -> dict[str, str]:
    """Any raw metadata value as a bounded map of safe copies, card numbers masked.

    - Not a mapping (missing, a list, a string...): ``{}``.
    - Keys cut to 64 characters, values to 256, as :func:`safe_text` with ``mask_cards``;
      a key or value that is not a string becomes ``<type name>`` (``<int>``, ``<NoneType>``).
    - At most 32 entries. A larger map keeps its first 31 entries in the order of the keys
      as sent (``<type name>`` for non-string keys), and one entry
      ``"…": "<N> more entries dropped"`` counts the rest (any entry sent under ``"…"``
      among them).
    - Keys that become equal once cut or masked keep the later entry in that order.
    """
    if not isinstance(value, Mapping):
        return {}
    items: list[tuple[object, object]] = list(value.items())
    dropped = 0
    if len(items) > MAX_METADATA_ENTRIES:
        kept = MAX_METADATA_ENTRIES - 1
        candidates = (item for item in items if item[0] != DROPPED_ENTRIES_KEY)
        chosen = heapq.nsmallest(kept, candidates, key=lambda item: _as_text(item[0]))
        dropped = len(items) - len(chosen)
        items = chosen
    else:
        items.sort(key=lambda item: _as_text(item[0]))
    safe = {
        safe_text(_as_text(key), MAX_METADATA_KEY_CHARS, mask_cards=True): safe_text(
            _as_text(text), MAX_METADATA_VALUE_CHARS, mask_cards=True
        )
        for key, text in items
    }
    if dropped:
        safe[DROPPED_ENTRIES_KEY] = f"{dropped} more entries dropped"
    return safe


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else f"<{type(value).__name__}>"


# -- accounts ------------------------------------------------------------------------------


def account_ref(account_number: str) -> str:
    """Opaque, stable account reference used as a record key and in outcomes."""
    return "acct-" + hashlib.sha256(account_number.encode("utf-8")).hexdigest()[:32]


def mask_account(account_number: str) -> str:
    """Mask all but the last four characters (fewer when the number is short).

    Safe to copy whatever it is given: the visible characters have refused ones replaced,
    and a value longer than 30 characters comes back as ``…`` and the last 29 of the mask.
    """
    visible = min(VISIBLE_DIGITS, max(len(account_number) - VISIBLE_DIGITS, 0))
    tail = _replace_refused(account_number[-visible:]) if visible else ""
    stars = len(account_number) - visible
    if stars + visible > MAX_ACCOUNT_DIGITS:
        return CUT_MARKER + "*" * (MAX_ACCOUNT_DIGITS - 1 - visible) + tail
    return "*" * stars + tail
