"""Card numbers (PANs) in free text, found and masked before the text is published.

A *run* is a sequence of ASCII digit groups joined by single spaces or dashes
(``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111111111111111``). A card number is a
run, or a stretch of consecutive groups of a run, holding 13 to 19 digits that pass the Luhn
check. Looking at stretches of groups catches a card written beside another number
(``order 12 4111 1111 1111 1111``). The platform's bank account number, a 16-digit card
number followed by ``000`` (docs/pas.md), counts as a card number too: its 19 digits
usually fail the Luhn check, its first 16 pass it.

Masking replaces each card number by ``*`` for all its digits but the last four, separators
dropped: ``4111 1111 1111 1111`` becomes ``************1111``; the number of stars tells how
many digits there were. Runs that are not card numbers (failing Luhn, fewer than 13 digits, a
single group of more than 19) stay as they are. The masked text is never longer than the text.

The cost is linear in the text, but each digit group starts up to seven Luhn checks: about
5 µs per group, so a megabyte made only of one-digit groups takes seconds. The service masks
only bounded text (at most a field's limit plus ``MAX_CARD_SPAN`` characters).
"""

from __future__ import annotations

import re
from typing import Final

MIN_CARD_DIGITS: Final = 13
MAX_CARD_DIGITS: Final = 19
VISIBLE_DIGITS: Final = 4
MAX_CARD_SPAN: Final = 2 * MAX_CARD_DIGITS - 1
"""The most characters a card number can take: 19 digits and 18 separators."""

# Groups are delimited by exactly one separator, so each character has one role and the
# pattern cannot backtrack badly on long input.
_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
_ACCOUNT_SUFFIX = "000"
_ACCOUNT_CARD_DIGITS = 16
# Each digit doubled, with the digits of the product added (Luhn's doubling step).
_DOUBLED_DIGIT_SUM = {str(d): 2 * d - 9 if d > 4 else 2 * d for d in range(10)}


def luhn_valid(digits: str) -> bool:
    """True when the ASCII digit string ``digits`` passes the Luhn (mod 10) check."""
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(_DOUBLED_DIGIT_SUM.__getitem__, digits[-2::-2]))
    return (kept + doubled) % 10 == 0


def is_card_number(digits: str) -> bool:
    """True for 13-19 digits passing Luhn, or a platform account (16-digit card + ``000``)."""
    if not MIN_CARD_DIGITS <= len(digits) <= MAX_CARD_DIGITS:
        return False
    if luhn_valid(digits):
        return True
    return (
        len(digits) == _ACCOUNT_CARD_DIGITS + len(_ACCOUNT_SUFFIX)
        and digits.endswith(_ACCOUNT_SUFFIX)
        and luhn_valid(digits[:_ACCOUNT_CARD_DIGITS])
    )


def mask_card_numbers(text: str) -> str:
    """``text`` with every card number masked (see the module docstring)."""
    return _RUN.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group()
    groups = [(found.start(), found.end()) for found in _GROUP.finditer(run)]
    pieces: list[str] = []
    written = 0
    first = 0
    while first < len(groups):
        last = _longest_card(run, groups, first)
        if last is None:
            first += 1
            continue
        start, end = groups[first][0], groups[last][1]
        digits = "".join(char for char in run[start:end] if char.isdigit())
        pieces.append(run[written:start])
        pieces.append("*" * (len(digits) - VISIBLE_DIGITS) + digits[-VISIBLE_DIGITS:])
        written = end
        first = last + 1
    pieces.append(run[written:])
    return "".join(pieces)


def _longest_card(run: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The last group of the longest card number starting at group ``first``, if any."""
    found: int | None = None
    digits = ""
    for index in range(first, min(first + MAX_CARD_DIGITS, len(groups))):
        start, end = groups[index]
        digits += run[start:end]
        if len(digits) > MAX_CARD_DIGITS:
            break
        if len(digits) >= MIN_CARD_DIGITS and is_card_number(digits):
            found = index
    return found
