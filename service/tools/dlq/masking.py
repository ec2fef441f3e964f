"""Masking what ``dlq`` prints of a record: digit runs that could be account or card numbers.

A dead letter holds the original record byte for byte, so its key, its headers and above all
an undecodable value may spell a full account number. Everything ``dlq show`` renders from a
record goes through here unless ``--raw`` is given:

- bytes shown in hex (:func:`hex_preview`): every byte of a run of ``MIN_DIGITS`` or more
  ASCII digits, and of a run of ``CARD_DIGITS`` or more digits grouped by single spaces or
  dashes (``5123 4567 8901 2345``), is shown as ``**``;
- text (:func:`mask_text`): :func:`~service.kafka.deadletter.sanitize` (control characters
  flattened, token-like runs redacted, runs of twelve or more digits masked), then
  :func:`mask_digit_runs`;
- the decoded command's strings (:func:`mask_digit_runs` alone: idempotency keys can be long
  hex strings that the token rule of ``sanitize`` would hide).

In text a run of ``MIN_DIGITS`` to eleven digits is masked only when it stands alone (no
letter or digit next to it): account references (``acct-`` and 32 hex digits), trace ids and
uuids often hold such runs and stay readable. Bytes shown in hex are not text the reader can
check by eye, so there every run of ``MIN_DIGITS`` digits is masked.
"""

from __future__ import annotations

import re

from service.domain.command import mask_account
from service.kafka.deadletter import sanitize

MIN_DIGITS = 6
CARD_DIGITS = 12
MASKED_BYTE = "**"
MASKED_NOTE = "digit runs masked"

_DIGIT_BYTES = frozenset(b"0123456789")
_GROUPED_BYTES = re.compile(rb"[0-9]+(?:[ -][0-9]+)*")
_RUN_BYTES = re.compile(rb"[0-9]{%d,}" % MIN_DIGITS)
_GROUPED_TEXT = re.compile(rf"(?<![0-9])[0-9](?:[ -]?[0-9]){{{CARD_DIGITS - 1},}}(?![0-9])")
_STANDALONE_TEXT = re.compile(rf"(?<![0-9A-Za-z])[0-9]{{{MIN_DIGITS},}}(?![0-9A-Za-z])")


def masked_positions(value: bytes) -> set[int]:
    """Indexes of the bytes of ``value`` that belong to a digit run worth hiding."""
    masked: set[int] = set()
    for group in _GROUPED_BYTES.finditer(value):
        if sum(byte in _DIGIT_BYTES for byte in group[0]) >= CARD_DIGITS:
            masked.update(range(group.start(), group.end()))
            continue
        for run in _RUN_BYTES.finditer(value, group.start(), group.end()):
            masked.update(range(run.start(), run.end()))
    return masked


def hex_preview(value: bytes, limit: int, *, raw: bool = False) -> tuple[str, bool]:
    """The first ``limit`` bytes of ``value`` in hex, space-separated, with the bytes of
    digit runs shown as ``**`` unless ``raw``; and whether any shown byte was masked."""
    masked = set() if raw else masked_positions(value)  # a run may cross the limit
    shown = [
        MASKED_BYTE if index in masked else f"{byte:02x}"
        for index, byte in enumerate(value[:limit])
    ]
    return " ".join(shown), any(index in masked for index in range(len(shown)))


def mask_digit_runs(text: str) -> str:
    """``text`` with runs of twelve or more digits (single spaces or dashes allowed between
    them) and stand-alone runs of ``MIN_DIGITS`` or more masked as account numbers are
    (``************2345``)."""
    text = _GROUPED_TEXT.sub(lambda match: mask_account(re.sub(r"[ -]", "", match[0])), text)
    return _STANDALONE_TEXT.sub(lambda match: mask_account(match[0]), text)


def mask_text(text: str) -> str:
    """One line of text fit to print: :func:`sanitize`, then :func:`mask_digit_runs`."""
    return mask_digit_runs(sanitize(text))


def one_line(text: str) -> str:
    """``text`` unmasked but on one printable line (``--raw``): control characters escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
