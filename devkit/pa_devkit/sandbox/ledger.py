"""The sandbox's in-memory record of applied adjustments: its state and the tests' oracle.

Concurrency: the sandbox serves every request on one asyncio event loop, and no method
here awaits, so each call (above all :meth:`Ledger.apply`, which numbers, records and
re-balances in one step) runs to completion before another request's code can run. No
lock is needed as long as the ledger is only used from the loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pa_devkit.sandbox.validation import AdjustmentRequest

Clock = Callable[[], datetime]
"""Returns the current time; must be timezone-aware."""


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, e.g. ``2024-05-01T12:00:00.000Z``."""
    if moment.tzinfo is None:
        raise ValueError("the sandbox clock must return timezone-aware datetimes")
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One applied adjustment."""

    adjustment_id: str
    bank_account_number: str
    points_adjusted: int
    adjustment_type_code: str
    adjustment_reason: str
    adjusted_by: str
    adjusted_at: datetime
    correlation_id: str | None = None

    def to_history_json(self) -> dict[str, Any]:
        """The entry as the history call shows it to the account's owner."""
        return {
            "adjustmentId": self.adjustment_id,
            "pointsAdjusted": self.points_adjusted,
            "adjustmentTypeCode": self.adjustment_type_code,
            "adjustmentReason": self.adjustment_reason,
            "adjustedBy": self.adjusted_by,
            "adjustedAt": format_timestamp(self.adjusted_at),
        }

    def to_admin_json(self) -> dict[str, Any]:
        """The entry with everything the sandbox knows, for the admin dump."""
        return {
            **self.to_history_json(),
            "bankAccountNumber": self.bank_account_number,
            "correlationId": self.correlation_id,
        }


class Ledger:
    """Applied adjustments in order, and the resulting balance of each account.

    Ids run ``ADJ-000001``, ``ADJ-000002``, ... in the order adjustments are applied and
    start again after :meth:`reset`. Every account starts at balance 0; a debit may take a
    balance below zero (PAS's overdraft rules are not public, so the sandbox has none).
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._entries: list[LedgerEntry] = []
        self._by_account: dict[str, list[LedgerEntry]] = {}
        self._balances: dict[str, int] = {}

    def apply(
        self, adjustment: AdjustmentRequest, *, correlation_id: str | None = None
    ) -> LedgerEntry:
        """Record one adjustment and update its account's balance; returns the new entry."""
        entry = LedgerEntry(
            adjustment_id=f"ADJ-{len(self._entries) + 1:06d}",
            bank_account_number=adjustment.bank_account_number,
            points_adjusted=adjustment.points_to_adjust,
            adjustment_type_code=adjustment.adjustment_type_code,
            adjustment_reason=adjustment.adjustment_reason,
            adjusted_by=adjustment.adjusted_by,
            adjusted_at=self._clock(),
            correlation_id=correlation_id,
        )
        format_timestamp(entry.adjusted_at)  # reject a naive clock before recording anything
        account = entry.bank_account_number
        self._entries.append(entry)
        self._by_account.setdefault(account, []).append(entry)
        self._balances[account] = self._balances.get(account, 0) + entry.points_adjusted
        return entry

    def history(self, bank_account_number: str) -> list[LedgerEntry]:
        """The account's adjustments, oldest first; empty for an account never adjusted."""
        return list(self._by_account.get(bank_account_number, ()))

    def balance(self, bank_account_number: str) -> int:
        """The sum of the account's applied adjustments."""
        return self._balances.get(bank_account_number, 0)

    def balances(self) -> dict[str, int]:
        """Every adjusted account's balance."""
        return dict(self._balances)

    def entries(self) -> list[LedgerEntry]:
        """Every applied adjustment, oldest first."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> int:
        """Forget everything and restart the ids; returns how many entries were dropped."""
        dropped = len(self._entries)
        self._entries.clear()
        self._by_account.clear()
        self._balances.clear()
        return dropped
