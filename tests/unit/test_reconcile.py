"""The reconciliation reference, finding it in a history, and the verdict on a lookup."""

from __future__ import annotations

import re

import pytest

from service.domain.reconcile import (
    HistoryEntry,
    HistoryFailed,
    HistoryFound,
    HistoryLookup,
    ReconcileAbsent,
    ReconcileFound,
    ReconcileUnknown,
    ReconcileVerdict,
    find_applied,
    judge,
    reason_with_reference,
    reference_for,
)

KEY = "cmd-2024-05-01-0001"
REF = reference_for(KEY)


def entry(reason: str, adjustment_id: str = "adj-1", points: int = 100) -> HistoryEntry:
    return HistoryEntry(adjustment_id, points, reason, "2024-05-01T12:00:00.000Z")


# --- the reference ---------------------------------------------------------------------------


def test_the_reference_is_ref_and_12_lowercase_base32_characters() -> None:
    """reference_for gives 'ref:' followed by 12 characters of the lowercase base32 alphabet."""
    assert re.fullmatch(r"ref:[a-z2-7]{12}", REF)


def test_the_reference_is_deterministic() -> None:
    """The same idempotency key always gives the same reference (a known value, pinned)."""
    assert reference_for(KEY) == REF
    # SHA-256("abc") = ba7816bf...; base32 of ba 78 16 bf ... starts XJ4BNP4PAHH6
    assert reference_for("abc") == "ref:xj4bnp4pahh6"


def test_the_reference_differs_per_key() -> None:
    """A thousand different keys give a thousand different references."""
    references = {reference_for(f"key-{n}") for n in range(1000)}

    assert len(references) == 1000


def test_the_reference_holds_nothing_of_the_key() -> None:
    """The key itself does not appear in its reference."""
    assert "0001" not in reference_for(KEY)


# --- the reason with the reference -----------------------------------------------------------


def test_the_reference_is_appended_after_a_space() -> None:
    """A short reason keeps its text and gains ' ' + reference at the end."""
    assert reason_with_reference("late delivery", REF) == f"late delivery {REF}"


def test_a_256_character_reason_is_cut_so_the_result_fits() -> None:
    """A reason at the 256-character limit is cut so reason + reference is exactly 256 long."""
    reason = "x" * 256

    result = reason_with_reference(reason, REF)

    assert len(result) == 256
    assert result == "x" * (256 - len(REF) - 1) + " " + REF


def test_a_custom_max_len_is_respected() -> None:
    """max_len bounds the result for any limit that leaves room for the reference."""
    result = reason_with_reference("a fairly long reason", REF, max_len=25)

    assert result == f"a fairly {REF}"
    assert len(result) <= 25


def test_appending_twice_changes_nothing() -> None:
    """A reason that already ends with the reference carries it once, whatever its length."""
    for reason in ("late delivery", "y" * 256, "", "ends with spaces   "):
        once = reason_with_reference(reason, REF)
        assert reason_with_reference(once, REF) == once
        assert once.count(REF) == 1


def test_an_empty_reason_becomes_the_reference_alone() -> None:
    """An empty or blank reason gives just the reference, never a leading space."""
    assert reason_with_reference("", REF) == REF
    assert reason_with_reference("   ", REF) == REF


def test_a_cut_never_leaves_a_double_space() -> None:
    """When the cut lands after a space, the space is dropped before the reference."""
    reason = "a" * (256 - len(REF) - 2) + " tail"

    result = reason_with_reference(reason, REF)

    assert result == "a" * (256 - len(REF) - 2) + " " + REF


def test_a_max_len_without_room_is_refused() -> None:
    """A max_len shorter than ' ' + reference raises ValueError."""
    with pytest.raises(ValueError, match="no room"):
        reason_with_reference("x", REF, max_len=len(REF))


# --- finding the reference -------------------------------------------------------------------


def test_find_applied_returns_the_entry_carrying_the_reference() -> None:
    """Among several entries the one whose reason ends with the reference is found."""
    ours = entry(f"late delivery {REF}", "adj-2")
    history = [entry("other", "adj-1"), ours, entry(f"x {reference_for('other')}", "adj-3")]

    assert find_applied(history, REF) == ours


def test_find_applied_returns_none_without_the_reference() -> None:
    """A history without the reference, or an empty one, gives None."""
    assert find_applied([entry("late delivery"), entry(reference_for("other"))], REF) is None
    assert find_applied([], REF) is None


def test_find_applied_matches_whole_words_only() -> None:
    """The reference glued to more characters is not a match."""
    assert find_applied([entry(f"x {REF}zz"), entry(f"x{REF}")], REF) is None


def test_find_applied_returns_the_oldest_of_two_matches() -> None:
    """When the reference appears twice (applied twice), the first entry is returned."""
    first, second = entry(f"a {REF}", "adj-1"), entry(f"a {REF}", "adj-2")

    assert find_applied([first, second], REF) == first


# --- the verdict -----------------------------------------------------------------------------

FOUND_HISTORY = HistoryFound([entry("other", "adj-1"), entry(f"late delivery {REF}", "adj-2")])
EMPTY_HISTORY = HistoryFound([entry("other", "adj-1")])
FAILED = HistoryFailed("HTTP 503", 503)


@pytest.mark.parametrize(
    ("lookup", "elapsed", "expected"),
    [
        (FOUND_HISTORY, 0.0, ReconcileFound),
        (FOUND_HISTORY, 100.0, ReconcileFound),
        (EMPTY_HISTORY, 29.9, ReconcileUnknown),
        (EMPTY_HISTORY, 30.0, ReconcileAbsent),
        (EMPTY_HISTORY, 100.0, ReconcileAbsent),
        (HistoryFound([]), 100.0, ReconcileAbsent),
        (FAILED, 0.0, ReconcileUnknown),
        (FAILED, 100.0, ReconcileUnknown),
        (HistoryFailed("ConnectError", None), 100.0, ReconcileUnknown),
        (HistoryFound(FOUND_HISTORY.entries, complete=False), 100.0, ReconcileFound),
        (HistoryFound(EMPTY_HISTORY.entries, complete=False), 100.0, ReconcileUnknown),
    ],
    ids=[
        "found-at-once",
        "found-later",
        "absent-before-settling",
        "absent-exactly-settled",
        "absent-after-settling",
        "empty-history-settled",
        "failed-early",
        "failed-late",
        "unreachable",
        "found-on-a-partial-page",
        "absent-from-a-partial-page",
    ],
)
def test_the_verdict_table(lookup: HistoryLookup, elapsed: float, expected: type) -> None:
    """FOUND if the reference is listed; ABSENT only if a good lookup is settled; else UNKNOWN."""
    verdict = judge(lookup, REF, elapsed_since_last_attempt_s=elapsed, settle_s=30.0)

    assert type(verdict) is expected


def test_found_carries_the_matching_entry() -> None:
    """The FOUND verdict holds the history entry that carries the reference."""
    verdict = judge(FOUND_HISTORY, REF, elapsed_since_last_attempt_s=1.0, settle_s=30.0)

    assert verdict == ReconcileFound(FOUND_HISTORY.entries[1])


def test_unknown_before_settling_says_when_to_look_again() -> None:
    """Not found before settle_s: UNKNOWN with the seconds left until a lookup can decide."""
    verdict = judge(EMPTY_HISTORY, REF, elapsed_since_last_attempt_s=12.0, settle_s=30.0)

    assert isinstance(verdict, ReconcileUnknown)
    assert verdict.retry_in_s == pytest.approx(18.0)
    assert "settle" in verdict.problem


def test_unknown_after_a_failed_lookup_names_the_failure() -> None:
    """A failed lookup's UNKNOWN carries its status and problem, and no retry hint."""
    verdict: ReconcileVerdict = judge(
        FAILED, REF, elapsed_since_last_attempt_s=100.0, settle_s=30.0
    )

    assert verdict == ReconcileUnknown("history lookup failed (HTTP 503): HTTP 503")


def test_a_lookup_held_back_before_it_was_sent_is_not_a_failed_lookup() -> None:
    """A lookup our own limiter or breaker held back (never sent) is UNDECIDED with a retry
    hint, so it does not count towards the failed lookups that end in OUTCOME_UNKNOWN."""
    held = HistoryFailed("circuit open", None, retry_in_s=3.0)
    verdict = judge(held, REF, elapsed_since_last_attempt_s=100.0, settle_s=30.0)

    assert isinstance(verdict, ReconcileUnknown)
    assert verdict.retry_in_s == pytest.approx(3.0)
    assert "held back" in verdict.problem


def test_a_zero_settle_time_trusts_the_first_good_lookup() -> None:
    """With settle_s 0 a successful lookup without the reference is ABSENT at once."""
    verdict = judge(EMPTY_HISTORY, REF, elapsed_since_last_attempt_s=0.0, settle_s=0.0)

    assert verdict == ReconcileAbsent()


def test_absence_from_an_incomplete_history_is_never_taken_as_proof() -> None:
    """A history that says it holds more gives UNKNOWN, however long ago the attempt was."""
    partial = HistoryFound(EMPTY_HISTORY.entries, complete=False)
    verdict = judge(partial, REF, elapsed_since_last_attempt_s=10_000.0, settle_s=30.0)

    assert isinstance(verdict, ReconcileUnknown)
    assert "absence is not proven" in verdict.problem
    assert verdict.retry_in_s is None
