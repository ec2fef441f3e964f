"""This worker's claims in the idempotency store: taken, finished, parked, resumed, let go.

A thin layer over :class:`~service.idempotency.base.IdempotencyStore` that writes every
call under this worker's name, with its lease and its clock, shared by the processor
(claim, finish, release) and the reconciler (park, resume, finish).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.domain.decisions import Publish
from service.domain.outcome import Outcome
from service.domain.ports import Clock
from service.idempotency.base import Claim, IdempotencyStore, State


class Claims:
    """Claims of ``owner``, each under a lease of ``lease_s`` seconds."""

    def __init__(self, store: IdempotencyStore, *, owner: str, lease_s: float, clock: Clock):
        self._store = store
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock

    async def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` (durably, before any call); see ``IdempotencyStore.claim``."""
        return await self._store.claim(
            key, fingerprint, owner=self._owner, now=self._clock(), lease_s=self._lease_s
        )

    async def finish(self, outcome: Outcome, state: State) -> Publish:
        """Store ``outcome`` as its key's one outcome; the decision that publishes it."""
        await self._store.finish(
            outcome.info.idempotency_key,
            owner=self._owner,
            state=state,
            outcome=outcome,
            attempts=outcome.attempts,
            now=self._clock(),
        )
        return Publish.original(outcome)

    async def release(self, key: str) -> None:
        """Let go of a claim whose request provably never left."""
        await self._store.release(key, owner=self._owner)

    async def park(self, key: str, now: datetime, settle_until: datetime) -> None:
        """RECONCILING until ``settle_until``; the lease outlives it, so a dead owner's park
        is taken over only after the settle time."""
        lease_until = settle_until + timedelta(seconds=self._lease_s)
        await self._store.park(
            key, owner=self._owner, now=now, settle_until=settle_until, lease_until=lease_until
        )

    async def resume(self, key: str, now: datetime) -> None:
        """IN_FLIGHT again (durably), under a new lease from ``now``: it may be sent again."""
        lease_until = now + timedelta(seconds=self._lease_s)
        await self._store.resume(key, owner=self._owner, lease_until=lease_until, now=now)

    async def mark_published(self, key: str) -> None:
        """The stored outcome of ``key`` was acknowledged by the broker."""
        await self._store.mark_published(key)
