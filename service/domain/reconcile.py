"""Telling from PAS's adjustment history whether a request with an unknown outcome was applied.

PAS takes no idempotency key, so every request carries one of its own in the only free-text
field: ``adjustmentReason`` ends with a *reference*, ``ref:`` and 12 lowercase base32
characters of SHA-256 of the idempotency key. It is deterministic (every attempt of one
command carries the same one), holds no secret and no account data, and 60 bits make an
accidental match within one account's history negligible.

After an unknown outcome (a timeout, a reset, a 5xx) the account's history is looked up and
:func:`judge` turns the lookup into a verdict:

==========================  =====================  ==========================
lookup                      reference in history   verdict
==========================  =====================  ==========================
failed                      (cannot tell)          ``ReconcileUnknown``
succeeded                   yes                    ``ReconcileFound(entry)``
succeeded, settled          no                     ``ReconcileAbsent``
succeeded, not settled yet  no                     ``ReconcileUnknown``
succeeded, incomplete       no                     ``ReconcileUnknown``
==========================  =====================  ==========================

"Incomplete" is a history that says it holds more than it returned (a next page, a total
above the entries shown): the reference may be on a page not read, so its absence proves
nothing. Finding it on the page read still proves the request applied.

"Settled" means at least ``settle_s`` seconds have passed since the last attempt was sent:
a request PAS is still processing could land in the history after the lookup, so only then
does absence mean "not applied, safe to send again".

This module knows nothing of HTTP: the history adapter (``service.pas.history``) implements
:class:`HistoryPort` and returns the :data:`HistoryLookup` types defined here.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

REFERENCE_PREFIX = "ref:"
REFERENCE_CHARS = 12
MAX_REASON_LENGTH = 256


def reference_for(idempotency_key: str) -> str:
    """``ref:`` + the first 12 lowercase base32 characters of SHA-256 of the key."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).digest()
    return REFERENCE_PREFIX + base64.b32encode(digest).decode("ascii")[:REFERENCE_CHARS].lower()


def reason_with_reference(reason: str, reference: str, max_len: int = MAX_REASON_LENGTH) -> str:
    """``reason`` followed by a space and ``reference``, the reason cut so it fits ``max_len``.

    Idempotent: a reason that already ends with the reference keeps that one copy (applying
    this twice gives what applying it once gave), so a retried or replayed command never
    carries the reference twice. Whitespace left at the end of the reason is dropped; an
    empty reason gives the reference alone.
    """
    suffix = " " + reference
    room = max_len - len(suffix)
    if room < 0:
        raise ValueError(f"max_len {max_len} leaves no room for the reference")
    base = reason.removesuffix(suffix)
    if base == reference:
        base = ""
    kept = base[:room].rstrip()
    return kept + suffix if kept else reference


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One past adjustment as PAS's history shows it."""

    adjustment_id: str
    points_adjusted: int
    adjustment_reason: str
    adjusted_at: str


def find_applied(entries: Iterable[HistoryEntry], reference: str) -> HistoryEntry | None:
    """The first (oldest) entry whose reason holds ``reference`` as a word, or None."""
    for entry in entries:
        if reference in entry.adjustment_reason.split():
            return entry
    return None


# --- the lookup, as the adapter reports it --------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryFound:
    """The history was read: the adjustments of the account it returned, oldest first.

    ``complete`` is False when the answer says there is more than it returned.
    """

    entries: list[HistoryEntry]
    complete: bool = True


@dataclass(frozen=True, slots=True)
class HistoryFailed:
    """The history could not be read; ``status`` is PAS's HTTP status, None if none came."""

    problem: str
    status: int | None
    retry_in_s: float | None = None
    """Set when the lookup was held back before it was sent (our own limiter): not a failed
    lookup; try again in this many seconds."""


HistoryLookup = HistoryFound | HistoryFailed


class HistoryPort(Protocol):
    """Reads one account's adjustment history; never raises for what PAS or the network does.

    ``correlation_id`` is the reconciled command's: it travels with the lookup as with the
    adjustment call, so PAS's logs tie the two together.
    """

    async def lookup(
        self, account_number: str, *, correlation_id: str | None = None
    ) -> HistoryLookup: ...


# --- the verdict ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcileFound:
    """The request was applied: here is its history entry."""

    entry: HistoryEntry


@dataclass(frozen=True, slots=True)
class ReconcileAbsent:
    """The request was not applied and no longer can be: sending it again is safe."""


@dataclass(frozen=True, slots=True)
class ReconcileUnknown:
    """Cannot tell yet. ``retry_in_s``: when a new lookup could decide (None: no idea)."""

    problem: str
    retry_in_s: float | None = None


ReconcileVerdict = ReconcileFound | ReconcileAbsent | ReconcileUnknown


def judge(
    lookup_result: HistoryLookup,
    reference: str,
    *,
    elapsed_since_last_attempt_s: float,
    settle_s: float,
) -> ReconcileVerdict:
    """The verdict on one lookup (see the table in the module docstring)."""
    if isinstance(lookup_result, HistoryFailed):
        if lookup_result.retry_in_s is not None:  # held back, never sent: not a failure
            return ReconcileUnknown(
                f"history lookup held back: {lookup_result.problem}",
                retry_in_s=max(lookup_result.retry_in_s, 0.1),
            )
        status = f" (HTTP {lookup_result.status})" if lookup_result.status is not None else ""
        return ReconcileUnknown(f"history lookup failed{status}: {lookup_result.problem}")
    entry = find_applied(lookup_result.entries, reference)
    if entry is not None:
        return ReconcileFound(entry)
    if not lookup_result.complete:
        return ReconcileUnknown(
            "not in the part of the history PAS returned, and it says there is more:"
            " absence is not proven"
        )
    if elapsed_since_last_attempt_s >= settle_s:
        return ReconcileAbsent()
    return ReconcileUnknown(
        f"not in the history {elapsed_since_last_attempt_s:.1f} s after the last attempt,"
        f" before the {settle_s:g} s settle time",
        retry_in_s=settle_s - elapsed_since_last_attempt_s,
    )
