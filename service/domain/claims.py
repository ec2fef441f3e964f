"""This worker's claims in the idempotency store: taken, finished, parked, resumed, let go.

A thin layer over :class:`~service.domain.store.IdempotencyStore` that writes every
call under this worker's name, with its lease and its clock, shared by the processor
(claim, finish, release) and the reconciler (park, resume, finish). It keeps the fencing
token each claim was given and names it in every later write of that key, so a write made
after the key changed hands is refused by the store (``OwnershipLostError``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.domain.decisions import Publish
from service.domain.outcome import Outcome
from service.domain.ports import Clock
from service.domain.store import (
    Claim,
    ClaimStatus,
    IdempotencyStore,
    OwnershipLostError,
    State,
)

HOLDING = frozenset({ClaimStatus.CLAIMED, ClaimStatus.TAKEN_OVER, ClaimStatus.RECONCILE})
"""The claim results that make the caller the key's owner."""


class Claims:
    """Claims of ``owner``, each under a lease of ``lease_s`` seconds."""

    def __init__(self, store: IdempotencyStore, *, owner: str, lease_s: float, clock: Clock):
        self._store = store
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        self._tokens: dict[str, int] = {}
        """The fencing token of each key this worker holds (from its last claim)."""

    def _token(self, key: str) -> int:
        token = self._tokens.get(key)
        if token is None:
            raise OwnershipLostError("idempotency key was never claimed by this worker")
        return token

    @property
    def held(self) -> int:
        """How many keys this worker holds a token for."""
        return len(self._tokens)

    async def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` (durably, before any call); see ``IdempotencyStore.claim``."""
        claim = await self._store.claim(
            key, fingerprint, owner=self._owner, now=self._clock(), lease_s=self._lease_s
        )
        if claim.status in HOLDING:
            self._tokens[key] = claim.record.token
        return claim

    async def finish(self, outcome: Outcome, state: State) -> Publish:
        """Store ``outcome`` as its key's one outcome; the decision that publishes it."""
        key = outcome.info.idempotency_key
        await self._store.finish(
            key,
            owner=self._owner,
            token=self._token(key),
            state=state,
            outcome=outcome,
            attempts=outcome.attempts,
            now=self._clock(),
        )
        del self._tokens[key]
        return Publish.original(outcome)

    async def release(self, key: str) -> None:
        """Let go of a claim that applied nothing (its request never left, or PAS refused it
        retryably): the key keeps its fingerprint, so only the same command takes it again."""
        await self._store.release(key, owner=self._owner, token=self._token(key), now=self._clock())
        del self._tokens[key]

    async def park(self, key: str, now: datetime, settle_until: datetime) -> None:
        """RECONCILING until ``settle_until``; the lease outlives it, so a dead owner's park
        is taken over only after the settle time."""
        lease_until = settle_until + timedelta(seconds=self._lease_s)
        await self._store.park(
            key,
            owner=self._owner,
            token=self._token(key),
            now=now,
            settle_until=settle_until,
            lease_until=lease_until,
        )

    async def resume(self, key: str, now: datetime) -> None:
        """IN_FLIGHT again (durably), under a new lease from ``now``: it may be sent again."""
        lease_until = now + timedelta(seconds=self._lease_s)
        await self._store.resume(
            key, owner=self._owner, token=self._token(key), lease_until=lease_until, now=now
        )

    async def mark_published(self, key: str) -> None:
        """The stored outcome of ``key`` was acknowledged by the broker."""
        await self._store.mark_published(key)
