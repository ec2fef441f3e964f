"""The idempotency store: the domain's port to it, its record types and its claim rule.

The processing core (the processor, the reconciler, their claims) depends on this port;
the stores in ``service.idempotency`` (memory, SQLite, PostgreSQL, Redis) implement it.

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
- A key RELEASED (its claim was let go of: its request provably never left, or PAS refused it
  retryably and the command was scheduled for a retry or dead-lettered) is claimed again by
  a command with the same fingerprint (``CLAIMED``: a retry, a replay of the dead letter) and
  refused to any other (``CONFLICT``): the first command written under a key wins.
- Fencing: every record carries a ``token`` that the store sets to 1 on the first claim and
  increments whenever the record changes hands (``TAKEN_OVER``, ``RECONCILE``, a released key
  claimed again). Every write after a claim (``finish``, ``release``, ``park``, ``resume``)
  names the owner and the token it was given and changes nothing unless both still match,
  raising ``OwnershipLostError`` (``release`` is silently a no-op): a worker whose lease was
  taken over can never overwrite what its successor wrote, even if the key came back to it.
- ``finish`` stores the terminal state and the outcome; ``release`` marks an IN_FLIGHT claim
  RELEASED (the key keeps its fingerprint), so that the command may be tried again later; ``park``
  moves an owned claim to RECONCILING, noting from when a lookup may prove absence
  (``settle_until``), which survives restarts and rebalances; ``resume`` moves it back to
  IN_FLIGHT when the lookup proved the request absent (so it may be sent again);
  ``mark_published`` records that the outcome event was acknowledged by Kafka; ``prune``
  deletes terminal and released records last changed before a cut-off.

Every write that precedes a PAS call is durable before it returns.

Which store: every store has an ``identity`` (a UUID made when it was created, kept in the
store), and ``created`` says whether it was new when opened (it holds no records and no
start-up has accepted it yet; see ``adopt``). A store that comes up new while the consumer
group already has committed offsets was lost or replaced (``service.idempotency.continuity``).
A store that is lost while in use (its file deleted or replaced) says so in ``problem`` and
fails every later call with ``StoreLostError``; ``probe`` runs that check while idle.

Errors::

    PointsAdjusterError (service.errors)
    └── StoreError                 the store cannot do its work (retriable)
        ├── StoreUnavailableError  an I/O failure: disk full, locked too long, I/O error;
        │                          retriable, the cause chained
        └── StoreLostError         the store was deleted or replaced under the service;
                                   not retriable: every later call fails too
    OwnershipLostError (RuntimeError)  the record is no longer held by the caller: not a fault
                                       of the store, so deliberately not a StoreError

A row whose outcome cannot be read back (damaged, or written by an incompatible version)
fails the call that read it with a plain ``StoreError``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.domain.outcome import Outcome
from service.errors import PointsAdjusterError


class State(enum.StrEnum):
    IN_FLIGHT = "IN_FLIGHT"
    RECONCILING = "RECONCILING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"
    RELEASED = "RELEASED"


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.UNKNOWN})
PRUNABLE = TERMINAL | {State.RELEASED}
"""What ``prune`` deletes once old enough: no live claim, nothing left to do."""


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
    outcome: Outcome | None = None
    """The terminal outcome (set by ``finish``); each backend keeps it in its own form."""
    published: bool = False
    settle_until: datetime | None = None
    """RECONCILING: a history lookup proves absence only from this moment on."""
    token: int = 1
    """The fencing token: 1 at the first claim, incremented whenever the record changes hands."""


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
        token: int,
        state: State,
        outcome: Outcome,
        attempts: int,
        now: datetime,
    ) -> None: ...

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None: ...

    async def park(
        self,
        key: str,
        *,
        owner: str,
        token: int,
        now: datetime,
        settle_until: datetime,
        lease_until: datetime,
    ) -> None: ...

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None: ...

    async def prune(self, *, older_than: datetime) -> int: ...

    async def mark_published(self, key: str) -> None: ...

    async def get(self, key: str) -> IdempotencyRecord | None: ...

    async def close(self) -> None: ...

    @property
    def identity(self) -> str:
        """The store's UUID, made when the store was created and kept with its records."""
        ...

    @property
    def created(self) -> bool:
        """Whether the store was new when this instance opened it: it holds no records and no
        start-up has adopted it (a store made by this open, by a refused start or by a tool
        that only opened it). A store of an earlier version with records is not new."""
        ...

    @property
    def problem(self) -> str | None:
        """None while the store is usable; once it was lost, why (it stays lost)."""
        ...

    async def probe(self) -> None:
        """Check that the store is still the one opened; raise ``StoreLostError`` if not.

        Cheap, and meant for a watchdog that notices a loss while no command arrives. It
        waits behind the calls already queued, so bound it with a timeout.
        """
        ...

    async def adopt(self) -> None:
        """Record, durably, that a start-up accepted this store for its consumer group:
        every later open finds it not ``created``. Repeating it changes nothing."""
        ...


def decide_claim(
    existing: IdempotencyRecord | None, fingerprint: str, owner: str, now: datetime
) -> ClaimStatus:
    """The claim rule shared by every backend, given the record currently stored."""
    if existing is None:
        return ClaimStatus.CLAIMED
    if existing.fingerprint != fingerprint:
        return ClaimStatus.CONFLICT
    if existing.state is State.RELEASED:
        return ClaimStatus.CLAIMED
    if existing.state in TERMINAL:
        return ClaimStatus.DUPLICATE
    if existing.state is State.RECONCILING:
        if existing.owner == owner or existing.lease_until <= now:
            return ClaimStatus.RECONCILE
        return ClaimStatus.BUSY
    if existing.lease_until <= now:
        return ClaimStatus.TAKEN_OVER
    return ClaimStatus.BUSY


def next_token(existing: IdempotencyRecord | None) -> int:
    """The token of a claim that (re)takes a key whose stored record is ``existing``."""
    return 1 if existing is None else existing.token + 1


class OwnershipLostError(RuntimeError):
    """The record is no longer held by this worker (its lease was taken over)."""


class StoreError(PointsAdjusterError):
    """The idempotency store cannot do its work; the message names the store and the failure,
    never a key or an outcome."""

    retriable = True

    def __init__(self, message: str, *, store: str) -> None:
        super().__init__(message)
        self.store = store
        """Where the store is (a file path), for the operator."""


class StoreUnavailableError(StoreError):
    """An I/O failure of the store (disk full, locked past the busy timeout, I/O error, a
    networked store unreachable or too slow): the call may succeed later. The backend's error
    is the ``__cause__``. SQLite's failed call changed nothing; a networked store's call that
    timed out may have been applied on the server all the same. That stays safe: a claim that
    went through is this owner's under its lease (the next claim of the key is BUSY, then
    TAKEN_OVER and reconciled, never called blindly), and the writes after a claim are fenced
    and repeatable."""


class StoreLostError(StoreError):
    """The store was deleted or replaced while in use: records written before are gone from
    where the next start will look, so this store refuses every further call."""

    retriable = False
