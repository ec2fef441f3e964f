"""The idempotency store protocol and its record types.

Semantics every backend implements:

- ``claim`` with a new key inserts an IN_FLIGHT record owned by the caller, with a lease,
  and returns ``CLAIMED``. The insert is durable before ``claim`` returns: PAS is called only
  after that, so a crash at any later instant leaves a record behind.
- A key whose record is terminal (COMPLETED, FAILED, UNKNOWN) returns ``DUPLICATE`` when the
  fingerprint matches and ``CONFLICT`` when it does not; the record is left untouched.
- A key IN_FLIGHT under a live lease of another owner returns ``BUSY``: the caller waits.
- A key IN_FLIGHT whose lease has expired is taken over: the caller becomes owner and gets
  ``TAKEN_OVER``; the earlier owner may have sent the request, so the caller must not call
  PAS blindly (it reconciles, or gives up with OUTCOME_UNKNOWN).
- A key RECONCILING (an unknown outcome waiting for a history lookup) returns ``RECONCILE``
  to its owner, or to anyone once its lease expired (the caller becomes owner); ``BUSY`` to
  others before that.
- ``finish`` stores the terminal state and the outcome; ``release`` deletes a claim whose
  request provably never left, so that the command may be tried again later; ``park``
  moves an owned claim to RECONCILING, noting from when a lookup may prove absence
  (``settle_until``), which survives restarts and rebalances; ``resume`` moves it back to
  IN_FLIGHT when the lookup proved the request absent (so it may be sent again);
  ``mark_published`` records that the outcome event was acknowledged by Kafka; ``prune``
  deletes terminal records last changed before a cut-off.

Every write that precedes a PAS call is durable before it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class State(enum.StrEnum):
    IN_FLIGHT = "IN_FLIGHT"
    RECONCILING = "RECONCILING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.UNKNOWN})


class ClaimStatus(enum.StrEnum):
    CLAIMED = "CLAIMED"
    DUPLICATE = "DUPLICATE"
    CONFLICT = "CONFLICT"
    BUSY = "BUSY"
    TAKEN_OVER = "TAKEN_OVER"
    RECONCILE = "RECONCILE"


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    state: State
    owner: str
    lease_until: datetime
    attempts: int
    created_at: datetime
    updated_at: datetime
    outcome_kind: str | None = None
    outcome: dict[str, Any] | None = None
    published: bool = False
    settle_until: datetime | None = None
    """RECONCILING: a history lookup proves absence only from this moment on."""


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    record: IdempotencyRecord


class IdempotencyStore(Protocol):
    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim: ...

    async def finish(
        self,
        key: str,
        *,
        owner: str,
        state: State,
        outcome_kind: str,
        outcome: dict[str, Any],
        attempts: int,
        now: datetime,
    ) -> None: ...

    async def release(self, key: str, *, owner: str) -> None: ...

    async def park(
        self, key: str, *, owner: str, now: datetime, settle_until: datetime, lease_until: datetime
    ) -> None: ...

    async def resume(
        self, key: str, *, owner: str, lease_until: datetime, now: datetime
    ) -> None: ...

    async def prune(self, *, older_than: datetime) -> int: ...

    async def mark_published(self, key: str) -> None: ...

    async def get(self, key: str) -> IdempotencyRecord | None: ...

    async def close(self) -> None: ...


def decide_claim(
    existing: IdempotencyRecord | None, fingerprint: str, owner: str, now: datetime
) -> ClaimStatus:
    """The claim rule shared by every backend, given the record currently stored."""
    if existing is None:
        return ClaimStatus.CLAIMED
    if existing.fingerprint != fingerprint:
        return ClaimStatus.CONFLICT
    if existing.state in TERMINAL:
        return ClaimStatus.DUPLICATE
    if existing.state is State.RECONCILING:
        if existing.owner == owner or existing.lease_until <= now:
            return ClaimStatus.RECONCILE
        return ClaimStatus.BUSY
    if existing.lease_until <= now:
        return ClaimStatus.TAKEN_OVER
    return ClaimStatus.BUSY


class OwnershipLostError(RuntimeError):
    """The record is no longer held by this worker (its lease was taken over)."""
